"""The self-contained HTML report.

The page has no scripts at all, no external resources (figures are base64 PNG data URIs,
CSS is inline) and a Content-Security-Policy that forbids scripts and any network access, as
defence in depth behind the escaping: every value from the logs goes through
:func:`distillguard.report._safe.esc`.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from distillguard.outfiles import replacing
from distillguard.scoring.campaigns import COORDINATION_CHANNELS

from . import _data, _plots
from ._safe import clean, esc

#: Caps that keep the page small (a few MB at most) whatever the input size.
MAX_CAMPAIGN_ROWS = 500        # rows in the campaign overview table
MAX_CAMPAIGN_CARDS = 100       # campaigns with a detailed section
MAX_TIMELINE_CAMPAIGNS = 10    # small multiples in the timeline figure
MAX_CAPABILITY_CAMPAIGNS = 30  # bars in the capability-mix figure
MAX_GRAPH_NODES = 600
MAX_GRAPH_EDGES = 6000
MAX_ACCOUNT_ROWS = 200
HIST_BINS = 50
MAX_LIST_ITEMS = 20            # items per indicator list
MAX_CARD_ACCOUNTS = 60
MAX_TEMPLATES = 10
MAX_PROMPTS = 5
MAX_SUMMARY_KEYS = 60

# Length bounds (characters, before escaping) for untrusted strings.
L_ID = 120
L_SHORT = 160
L_UA = 200
L_SKELETON = 240
L_PROMPT = 400
L_REASON = 300
L_REASONS = 500

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d232b;
background:#f4f6f8;margin:0}
main{max-width:1180px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:19px;margin:34px 0 10px;padding-bottom:4px;
border-bottom:2px solid #d9dee4}h3{font-size:16px;margin:0 0 8px}
h4{font-size:13px;margin:12px 0 4px;color:#4a5563;text-transform:uppercase;letter-spacing:.04em}
.sub{color:#5b6673;margin:0 0 16px}nav a{margin-right:14px;color:#2457a6;text-decoration:none}
.box{background:#fff;border:1px solid #d9dee4;border-radius:8px;padding:14px 18px;margin:12px 0}
.headline{font-size:15px;margin:0 0 10px}
.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:6px 18px}
.kv div{display:flex;justify-content:space-between;gap:10px;border-bottom:1px dotted #e3e7eb;
padding:2px 0}.kv .k{color:#5b6673}.kv .v{font-weight:600;text-align:right;word-break:break-word}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #e1e5ea;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num,th.num{text-align:right;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
code,.mono,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.chip{display:inline-block;background:#eef1f5;border-radius:4px;padding:1px 6px;margin:2px 3px 2px 0;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
pre.prompt{white-space:pre-wrap;word-break:break-word;background:#f7f8fa;border-left:3px solid #c5ccd4;
padding:6px 9px;margin:4px 0;max-height:12em;overflow:auto}
.score{display:inline-block;background:#b2182b;color:#fff;border-radius:10px;padding:0 9px;
font-weight:600;font-size:13px;margin-left:8px}
.stats{display:flex;flex-wrap:wrap;gap:4px 22px;color:#3d4754;margin:2px 0 6px}
.stats b{color:#1d232b}.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;
margin-right:6px;vertical-align:-1px}
img.fig{max-width:100%;height:auto;display:block;margin:6px auto}
.note{color:#6a7480;font-size:12px}.empty{color:#6a7480;font-style:italic}
ul{margin:4px 0;padding-left:20px}
"""

_SUMMARY_LABELS: dict[str, str] = {
    "n_requests": "Requests analysed",
    "n_accounts": "Accounts",
    "n_flagged": "Accounts flagged",
    "n_campaigns": "Campaigns",
    "threshold": "Score threshold",
    "target_fpr": "Target false-positive rate",
    "run_seconds": "Run time (s)",
    "input_files": "Input files",
    "config_version": "Config version",
}


# --------------------------------------------------------------------------- formatting

def _fmt_num(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, numbers.Integral):
        return f"{int(v):,}"
    if isinstance(v, numbers.Real):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        if f == int(f) and abs(f) < 1e15:
            return f"{int(f):,}"
        return f"{f:.4g}"
    return str(v)


def _fmt_rate(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if 0 <= f < 1:
        return f"{f * 100:.4g}%"
    return _fmt_num(v)


def _fmt_value(v: Any, limit: int = 300) -> str:
    """Escaped display of a summary value of any (JSON-ish) type."""
    if v is None:
        return "&ndash;"
    if isinstance(v, (bool, numbers.Number)):
        return esc(_fmt_num(v), limit)
    if isinstance(v, (dt.datetime, dt.date)):
        return esc(v.isoformat(), limit)
    if isinstance(v, Mapping):
        parts = [f"{clean(k, 60)}: {clean(_plain(x), 120)}" for k, x in list(v.items())[:20]]
        return esc("; ".join(parts), limit)
    if isinstance(v, (list, tuple, set, frozenset)):
        items = list(v)
        return esc(", ".join(clean(_plain(x), 160) for x in items[:20])
                   + (f" (+{len(items) - 20} more)" if len(items) > 20 else ""), limit)
    return esc(v, limit)


def _plain(v: Any) -> str:
    if isinstance(v, (bool, numbers.Number)):
        return _fmt_num(v)
    if isinstance(v, Path):
        return str(v)
    return clean(v, 200)


def _fmt_ts(v: Any) -> str:
    if v is None or v == "":
        return "&ndash;"
    if isinstance(v, dt.datetime):
        return esc(v.strftime("%Y-%m-%d %H:%M:%S"), 40)
    return esc(v, 40)


def _num(v: Any, default: float = float("nan")) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f


def _as_list(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return list(v)
    if v is None or v == "":
        return []
    return [v]


def _img(png: bytes | None, alt: str, empty: str) -> str:
    if not png:
        return f'<p class="empty">{esc(empty)}</p>'
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img class="fig" alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def _chips(values: Iterable[Any], limit: int, total: int | None = None,
           max_items: int = MAX_LIST_ITEMS) -> str:
    items = list(values)
    total = len(items) if total is None else total
    out = "".join(f'<span class="chip">{esc(v, limit)}</span>' for v in items[:max_items])
    if total > min(len(items), max_items):
        out += f' <span class="note">+{total - min(len(items), max_items):,} more</span>'
    return out or '<span class="empty">none</span>'


# --------------------------------------------------------------------------- sections

def _summary_section(summary: Mapping[str, Any], n_campaigns_listed: int,
                     threshold: float | None) -> str:
    s = dict(summary)
    parts: list[str] = []
    head: list[str] = []
    if "n_flagged" in s:
        head.append(f"<b>{_fmt_value(s['n_flagged'])}</b> accounts flagged")
    if "n_campaigns" in s or n_campaigns_listed:
        head.append(f"<b>{_fmt_value(s.get('n_campaigns', n_campaigns_listed))}</b> "
                    "multi-account campaigns")
    thr = s.get("threshold", threshold)
    if thr is not None:
        txt = f"score threshold <b>{_fmt_value(thr)}</b>"
        if s.get("target_fpr") is not None:
            txt += (f", calibrated for a false-positive rate of "
                    f"<b>{esc(_fmt_rate(s['target_fpr']))}</b> on benign accounts")
        head.append(txt)
    if head:
        parts.append(f'<p class="headline">{"; ".join(head)}.</p>')
    keys = [k for k in _SUMMARY_LABELS if k in s] + [k for k in s if k not in _SUMMARY_LABELS]
    rows = []
    for k in keys[:MAX_SUMMARY_KEYS]:
        label = _SUMMARY_LABELS.get(k) or clean(k, 60).replace("_", " ").capitalize()
        val = s[k]
        shown = esc(_fmt_rate(val)) if ("fpr" in k or k.endswith("_rate")) and isinstance(
            val, numbers.Real) and not isinstance(val, bool) else _fmt_value(val)
        rows.append(f'<div><span class="k">{esc(label, 80)}</span>'
                    f'<span class="v">{shown}</span></div>')
    if len(keys) > MAX_SUMMARY_KEYS:
        rows.append(f'<div><span class="k">&hellip;</span>'
                    f'<span class="v">{len(keys) - MAX_SUMMARY_KEYS} more keys</span></div>')
    parts.append(f'<div class="kv">{"".join(rows)}</div>' if rows
                 else '<p class="empty">No summary provided.</p>')
    return f'<section id="summary"><h2>Summary</h2><div class="box">{"".join(parts)}</div></section>'


def _campaign_table(ranked: Sequence[Mapping[str, Any]]) -> str:
    if not ranked:
        return '<p class="empty">No campaigns detected.</p>'
    rows = []
    for i, c in enumerate(ranked[:MAX_CAMPAIGN_ROWS]):
        cid = esc(c.get("campaign_id"), L_ID)
        name = f'<a href="#c{i + 1}">{cid}</a>' if i < MAX_CAMPAIGN_CARDS else cid
        reasons = _as_list(c.get("reasons"))
        rows.append(
            f'<tr><td class="num">{i + 1}</td><td><span class="swatch" style="background:'
            f'{_plots.campaign_color(i)}"></span>{name}</td>'
            f'<td class="num">{esc(_fmt_score(c.get("score")))}</td>'
            f'<td class="num">{esc(_fmt_num(c.get("n_accounts", len(_as_list(c.get("accounts"))))))}</td>'
            f'<td class="num">{esc(_fmt_num(c.get("requests", "")))}</td>'
            f"<td>{_fmt_ts(c.get('first_seen'))}</td><td>{_fmt_ts(c.get('last_seen'))}</td>"
            f"<td>{esc(reasons[0] if reasons else '', L_REASON)}</td></tr>")
    more = (f'<p class="note">Showing the top {MAX_CAMPAIGN_ROWS:,} of {len(ranked):,} campaigns.</p>'
            if len(ranked) > MAX_CAMPAIGN_ROWS else "")
    return ('<table><thead><tr><th class="num">#</th><th>campaign</th><th class="num">score</th>'
            '<th class="num">accounts</th><th class="num">requests</th><th>first seen</th>'
            '<th>last seen</th><th>top reason</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>" + more)


def _fmt_score(v: Any) -> str:
    f = _num(v)
    return "" if math.isnan(f) else f"{f:.3f}"


def _coordination_table(co: Any) -> str:
    """What the campaign's link community shows against the null of unrelated accounts;
    empty when the campaign has no such record (older outputs, partner imports)."""
    if not isinstance(co, Mapping):
        return ""
    ch = co.get("channels")
    ch = ch if isinstance(ch, Mapping) else {}

    def share(v: Any) -> str:
        f = _num(v)
        return f"{f:.0%}" if 0 <= f <= 1 else str(v)

    rows = [f"<tr><th>{text}</th><td class=\"num\">{esc(share(ch.get(key)), 20)}</td></tr>"
            for key, _, text in COORDINATION_CHANNELS if ch.get(key) is not None]
    z = _num(co.get("timing_z_vs_shifted"))
    if not math.isnan(z):
        rows.append("<tr><th>co-activity against the same accounts shifted in time</th>"
                    f'<td class="num">z = {esc(f"{z:.1f}", 20)}</td></tr>')
    score = _num(co.get("score"))
    if not math.isnan(score):
        rows.append("<tr><th>channels beyond the strongest (g_coordination)</th>"
                    f'<td class="num">{esc(f"{score:.2f}", 20)}</td></tr>')
    size = _num(co.get("community_accounts"))
    if not math.isnan(size):
        rows.append("<tr><th>accounts in its link community</th>"
                    f'<td class="num">{esc(_fmt_num(int(size)), 20)}</td></tr>')
    if not rows:
        return ""
    return ("<h4>Coordination against the null</h4><table><tbody>" + "".join(rows)
            + "</tbody></table>")


def _campaign_card(i: int, c: Mapping[str, Any]) -> str:
    raw = c.get("indicators")
    ind: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    accounts = list(dict.fromkeys(clean(a, L_ID) for a in _as_list(c.get("accounts"))))
    n_acc = c.get("n_accounts", len(accounts))
    out = [f'<div class="box" id="c{i + 1}"><h3><span class="swatch" style="background:'
           f'{_plots.campaign_color(i)}"></span>#{i + 1} {esc(c.get("campaign_id"), L_ID)}'
           f'<span class="score">score {esc(_fmt_score(c.get("score")))}</span></h3>',
           f'<div class="stats"><span>accounts <b>{esc(_fmt_num(n_acc))}</b></span>'
           f'<span>requests <b>{esc(_fmt_num(c.get("requests", "")))}</b></span>'
           f"<span>first seen <b>{_fmt_ts(c.get('first_seen'))}</b></span>"
           f"<span>last seen <b>{_fmt_ts(c.get('last_seen'))}</b></span></div>"]
    reasons = _as_list(c.get("reasons"))
    if reasons:
        out.append("<h4>Why flagged</h4><ul>"
                   + "".join(f"<li>{esc(r, L_REASON)}</li>" for r in reasons[:MAX_LIST_ITEMS])
                   + "</ul>")
    caps = c.get("capabilities")
    if isinstance(caps, Mapping) and caps:
        items = sorted(caps.items(), key=lambda kv: -_num(kv[1], 0.0))[:12]
        out.append("<h4>Capability mix</h4><div>" + " ".join(
            f'<span class="chip">{esc(k, 40)} {esc(_fmt_rate(v))}</span>' for k, v in items)
            + "</div>")
    out.append(_coordination_table(c.get("coordination")))
    out.append("<h4>Shared indicators</h4><table><tbody>")
    for key, label, limit in (("ip_prefixes", "IP prefixes", L_SHORT),
                              ("user_agents", "User agents", L_UA),
                              ("payment_fingerprints", "Payment fingerprints", L_SHORT),
                              ("orgs", "Organisations", L_SHORT)):
        vals = _as_list(ind.get(key))
        if vals:
            out.append(f"<tr><th>{label}</th><td>{_chips(vals, limit)}</td></tr>")
    timing = ind.get("synchronized_timing")
    if timing:
        if isinstance(timing, Mapping):
            tv = "".join(f'<span class="chip">{esc(k, 60)}: {_fmt_value(v, 200)}</span>'
                         for k, v in list(timing.items())[:MAX_LIST_ITEMS])
        else:
            tv = _fmt_value(timing, 300)
        out.append(f"<tr><th>Synchronized timing</th><td>{tv}</td></tr>")
    out.append("</tbody></table>")
    templates = [t for t in _as_list(ind.get("templates")) if t is not None]
    if templates:
        trs = []
        for t in templates[:MAX_TEMPLATES]:
            if isinstance(t, Mapping):
                trs.append(f'<tr><td class="mono">{esc(t.get("template_id"), L_ID)}</td>'
                           f'<td class="mono">{esc(t.get("skeleton"), L_SKELETON)}</td>'
                           f'<td class="num">{esc(_fmt_num(t.get("requests", "")))}</td></tr>')
            else:
                trs.append(f'<tr><td class="mono" colspan="3">{esc(t, L_SKELETON)}</td></tr>')
        more = (f'<p class="note">+{len(templates) - MAX_TEMPLATES} more templates</p>'
                if len(templates) > MAX_TEMPLATES else "")
        out.append('<h4>Shared prompt templates</h4><table><thead><tr><th>template</th>'
                   '<th>skeleton</th><th class="num">requests</th></tr></thead><tbody>'
                   + "".join(trs) + "</tbody></table>" + more)
    prompts = _as_list(c.get("example_prompts"))
    if prompts:
        out.append("<h4>Example prompts</h4>" + "".join(
            f'<pre class="prompt">{esc(p, L_PROMPT)}</pre>' for p in prompts[:MAX_PROMPTS]))
    if accounts:
        total = int(_num(n_acc, len(accounts))) if not math.isnan(_num(n_acc)) else len(accounts)
        out.append("<h4>Accounts</h4><div>"
                   + _chips(accounts, L_ID, total=max(total, len(accounts)),
                            max_items=MAX_CARD_ACCOUNTS) + "</div>")
    out.append("</div>")
    return "".join(out)


def _accounts_table(rows: Sequence[Mapping[str, Any]], n_flagged: int,
                    campaign_index: Mapping[str, int]) -> str:
    if not rows:
        return '<p class="empty">No accounts flagged.</p>'
    trs = []
    for r in rows:
        cid = r.get("campaign_id")
        if cid is None or cid == "":
            camp = "&ndash;"
        else:
            k = campaign_index.get(str(cid))
            camp = esc(cid, L_ID)
            if k is not None and k < MAX_CAMPAIGN_CARDS:
                camp = f'<a href="#c{k + 1}">{camp}</a>'
        trs.append(f'<tr><td class="mono">{esc(r.get("account_id"), L_ID)}</td>'
                   f'<td class="num">{esc(_fmt_score(r.get("score")))}</td><td>{camp}</td>'
                   f'<td class="num">{esc(_fmt_num(r.get("n") or 0))}</td>'
                   f"<td>{_fmt_ts(r.get('first_ts'))}</td><td>{_fmt_ts(r.get('last_ts'))}</td>"
                   f'<td>{esc(r.get("reasons"), L_REASONS)}</td></tr>')
    note = (f'<p class="note">Top {len(rows):,} of {n_flagged:,} flagged accounts by score.</p>'
            if n_flagged > len(rows) else "")
    return ('<table><thead><tr><th>account</th><th class="num">score</th><th>campaign</th>'
            '<th class="num">requests</th><th>first seen</th><th>last seen</th><th>reasons</th>'
            "</tr></thead><tbody>" + "".join(trs) + "</tbody></table>" + note)


# --------------------------------------------------------------------------- entry point

def rank_campaigns(campaigns: Sequence[Any]) -> list[dict[str, Any]]:
    """Campaign dicts ranked by score (highest first; ties by size, then id)."""
    valid = [dict(c) for c in campaigns if isinstance(c, Mapping)]

    def key(c: Mapping[str, Any]) -> tuple[float, float, str]:
        s = _num(c.get("score"), 0.0)
        n = _num(c.get("n_accounts"), float(len(_as_list(c.get("accounts")))))
        return (-(0.0 if math.isnan(s) else s), -(0.0 if math.isnan(n) else n),
                str(c.get("campaign_id", "")))

    return sorted(valid, key=key)


def report_aggregates(con: duckdb.DuckDBPyConnection, campaigns: list[dict[str, Any]],
                      query: _data.Query | None = None) -> _data.Aggregates:
    """The per-request aggregates the report shows (``_data.Aggregates``), computed by
    ``query`` (default: DuckDB over ``con``'s ``requests`` and ``signals``).

    ``con`` needs ``scores``. Another engine passes its own ``query`` that runs the same
    aggregate SQL on its tables (the Spark engine: compiled to Spark SQL, on the executors).
    """
    return _data.aggregates(con, rank_campaigns(campaigns or []),
                            query or _data.duckdb_query(con), max_accounts=MAX_ACCOUNT_ROWS,
                            max_timeline=MAX_TIMELINE_CAMPAIGNS,
                            max_capability=MAX_CAPABILITY_CAMPAIGNS)


def write_report(path: Path | str, con: duckdb.DuckDBPyConnection,
                 campaigns: list[dict[str, Any]], summary: dict[str, Any],
                 aggregates: _data.Aggregates | None = None) -> Path:
    """Write the analyst report as ONE self-contained HTML file and return its path.

    ``con`` must hold the ``scores`` and ``edges`` tables of docs/CONTRACTS.md, and the
    ``requests`` and ``signals`` tables unless ``aggregates`` (:func:`report_aggregates`,
    computed elsewhere, e.g. by the Spark engine) is given; ``campaigns`` is the
    campaigns.json list; ``summary`` is any dict of run facts (known keys such as
    ``n_requests``, ``threshold``, ``target_fpr`` get friendly labels; missing basic counts
    are computed from the store).
    """
    path = Path(path)
    ranked = rank_campaigns(campaigns or [])
    labels = [clean(c.get("campaign_id", ""), L_ID) for c in ranked]
    summary = dict(summary or {})
    agg = aggregates if aggregates is not None else report_aggregates(con, campaigns)
    counts = _data.store_counts(con, agg)
    for k, v in counts.items():
        summary.setdefault(k, v)
    summary.setdefault("n_campaigns", len(ranked))
    threshold = _num(summary.get("threshold"))
    thr: float | None = None if math.isnan(threshold) else threshold
    if thr is None:
        thr = _data.min_flagged_score(con)

    cmap = agg.campaign_map
    tl = _data.timeline(con, agg)
    mix = _data.capability_mix(agg)
    graph = _data.link_graph(con, cmap, MAX_GRAPH_NODES, MAX_GRAPH_EDGES, agg.edges)
    hist = _data.score_histogram(con, HIST_BINS)
    top = _data.top_flagged(con, agg, MAX_ACCOUNT_ROWS)

    timeline_png = _plots.timeline_plot(tl, labels)
    caps_png = _plots.capability_plot(mix, labels)
    graph_png = _plots.graph_plot(graph, labels)
    hist_png = _plots.score_hist_plot(hist, HIST_BINS, thr)

    n_tl = min(len([r for r in tl.counts if r < len(labels)]), MAX_TIMELINE_CAMPAIGNS)
    graph_note = ""
    if graph.nodes:
        graph_note = (f"{len(graph.nodes):,} accounts drawn"
                      + (f" (capped; {graph.n_candidates:,} campaign accounts and their linked "
                         "neighbours)" if graph.n_candidates > len(graph.nodes) else "")
                      + f", {len(graph.edges):,} links"
                      + (f" (strongest of {graph.n_edges_total:,})"
                         if graph.n_edges_total > len(graph.edges) else "")
                      + ". Node colour: campaign; edge width: link weight.")

    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "<header><h1>distillguard report</h1>",
        f'<p class="sub">Distillation-harvesting detection over API request logs &middot; '
        f"generated {esc(generated)}</p>",
        '<nav><a href="#summary">Summary</a><a href="#campaigns">Campaigns</a>'
        '<a href="#timeline">Timeline</a><a href="#capabilities">Capability mix</a>'
        '<a href="#graph">Account links</a><a href="#scores">Scores</a>'
        '<a href="#accounts">Flagged accounts</a><a href="#details">Campaign details</a></nav>'
        "</header>",
        _summary_section(summary, len(ranked), thr),
        '<section id="campaigns"><h2>Campaigns ranked by score</h2>',
        _campaign_table(ranked), "</section>",
        '<section id="timeline"><h2>Campaign timelines</h2><div class="box">',
        _img(timeline_png, "requests over time per campaign", "No campaign traffic to plot."),
        (f'<p class="note">Requests per {tl.unit} for the top {n_tl} campaigns; dashed lines '
         "mark the first request of each campaign to each model (model switches).</p>"
         if timeline_png else ""),
        "</div></section>",
        '<section id="capabilities"><h2>Capability mix</h2><div class="box">',
        _img(caps_png, "capability mix per campaign", "No campaign traffic to plot."),
        ('<p class="note">Share of each campaign\'s requests by capability '
         "(signals.capability), compared with all traffic outside campaigns.</p>"
         if caps_png else ""),
        "</div></section>",
        '<section id="graph"><h2>Account-link graph</h2><div class="box">',
        _img(graph_png, "account link graph", "No campaign accounts to draw."),
        f'<p class="note">{esc(graph_note, 400)}</p>' if graph_note else "",
        "</div></section>",
        '<section id="scores"><h2>Score distribution</h2><div class="box">',
        _img(hist_png, "histogram of account scores", "No scores."),
        ('<p class="note">Accounts per score bin (log scale); dashed line: flagging '
         "threshold.</p>" if hist_png else ""),
        "</div></section>",
        '<section id="accounts"><h2>Top flagged accounts</h2>',
        _accounts_table(top, int(counts["n_flagged"]),
                        {str(c.get("campaign_id")): i for i, c in reversed(list(enumerate(ranked)))}),
        "</section>",
        '<section id="details"><h2>Campaign details</h2>',
        "".join(_campaign_card(i, c) for i, c in enumerate(ranked[:MAX_CAMPAIGN_CARDS]))
        or '<p class="empty">No campaigns detected.</p>',
        (f'<p class="note">Details shown for the top {MAX_CAMPAIGN_CARDS} of '
         f"{len(ranked):,} campaigns.</p>" if len(ranked) > MAX_CAMPAIGN_CARDS else ""),
        "</section>",
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>distillguard report</title>"
            f"<style>{_CSS}</style></head><body><main>" + "".join(body)
            + "</main></body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(page, encoding="utf-8", errors="replace")
    return path
