"""Tests for the HTML report (distillguard.report)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from distillguard.report import rank_campaigns, write_report
from distillguard.schema import STORE_SCHEMA

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
XSS_ID = "acct<svg/onload=alert(2)>"
T0 = dt.datetime(2025, 3, 1, 0, 0, 0)
CAPS = ("coding", "math", "reasoning", "chat")


def _make_store(with_campaigns: bool = True) -> tuple[duckdb.DuckDBPyConnection,
                                                     list[dict[str, Any]], dict[str, Any]]:
    campaign_accounts = {
        "camp-A": [f"a{i}" for i in range(4)] + [XSS_ID],
        "camp-B": [f"b{i}" for i in range(3)],
    } if with_campaigns else {}
    benign = [f"u{i}" for i in range(6)]
    member = {a: cid for cid, accs in campaign_accounts.items() for a in accs}
    accounts = [a for accs in campaign_accounts.values() for a in accs] + benign

    req: dict[str, list[Any]] = {name: [] for name in STORE_SCHEMA.names}
    sig: dict[str, list[Any]] = {k: [] for k in (
        "request_id", "account_id", "ts", "model", "capability", "cot_elicit",
        "rubric_grading", "censorship_safe", "skeleton", "template_id")}
    n = 0
    for ai, acc in enumerate(accounts):
        camp = member.get(acc)
        for j in range(30):
            n += 1
            ts = T0 + dt.timedelta(minutes=37 * j + 11 * ai)
            model = ("model-x" if j < 15 else "model-y$\\alpha$") if camp else "model-x"
            prompt = (XSS_SCRIPT if j % 3 == 0 else XSS_IMG if j % 3 == 1
                      else f"Solve step by step: problem {j} " + "x" * 5000)
            row = dict.fromkeys(STORE_SCHEMA.names)
            row.update(request_id=f"r{n}", ts=ts, account_id=acc, model=model, prompt=prompt,
                       ip="203.0.113.7" if camp else f"198.51.100.{ai}",
                       user_agent=XSS_IMG if camp == "camp-A" else "python-httpx/0.27",
                       payment_fingerprint="pf-1" if camp else f"pf-u{ai}",
                       n_messages=1, n_user_turns=1, context_chars=0, n_tools=0,
                       input_tokens=100, output_tokens=900, status="ok", source=f"f.jsonl:{n}")
            for k, v in row.items():
                req[k].append(v)
            sig["request_id"].append(f"r{n}")
            sig["account_id"].append(acc)
            sig["ts"].append(ts)
            sig["model"].append(model)
            sig["capability"].append(CAPS[j % 4] if camp else "chat")
            sig["cot_elicit"].append(bool(camp))
            sig["rubric_grading"].append(False)
            sig["censorship_safe"].append(False)
            sig["skeleton"].append(XSS_SCRIPT)
            sig["template_id"].append("t1" if camp else f"t-{ai}")

    con = duckdb.connect(":memory:")
    con.register("req_src", pa.Table.from_pydict(req, schema=STORE_SCHEMA))
    con.execute("CREATE TABLE requests AS SELECT * FROM req_src")
    con.register("sig_src", pa.Table.from_pydict(sig))
    con.execute("CREATE TABLE signals AS SELECT * FROM sig_src")
    con.unregister("req_src")
    con.unregister("sig_src")

    scores = {"account_id": [], "score": [], "flagged": [], "campaign_id": [], "reasons": []}
    for i, acc in enumerate(accounts):
        camp = member.get(acc)
        scores["account_id"].append(acc)
        scores["score"].append(0.9 + i / 1000 if camp else 0.05 * i)
        scores["flagged"].append(bool(camp) or acc == "u5")
        scores["campaign_id"].append(camp)
        scores["reasons"].append(f"cot_elicit=0.93; {XSS_SCRIPT}" if camp else "")
    con.register("sc_src", pa.table(scores))
    con.execute("CREATE TABLE scores AS SELECT * FROM sc_src")
    con.unregister("sc_src")

    edges: dict[str, list[Any]] = {"a": [], "b": [], "weight": [], "kinds": [], "evidence": []}
    for accs in campaign_accounts.values():
        for i in range(len(accs)):
            for j in range(i + 1, len(accs)):
                a, b = sorted((accs[i], accs[j]))
                edges["a"].append(a)
                edges["b"].append(b)
                edges["weight"].append(1.0 + i)
                edges["kinds"].append("ip_prefix,payment,template")
                edges["evidence"].append(XSS_IMG)
    if campaign_accounts:
        edges["a"].append("a0")
        edges["b"].append("u0")
        edges["weight"].append(0.2)
        edges["kinds"].append("ip_prefix")
        edges["evidence"].append("shared /24")
    con.register("e_src", pa.table(edges, schema=pa.schema([
        ("a", pa.string()), ("b", pa.string()), ("weight", pa.float64()),
        ("kinds", pa.string()), ("evidence", pa.string())])))
    con.execute("CREATE TABLE edges AS SELECT * FROM e_src")
    con.unregister("e_src")

    campaigns = [
        {"campaign_id": cid, "score": 0.97 if cid == "camp-B" else 0.91, "accounts": accs,
         "n_accounts": len(accs), "requests": 30 * len(accs),
         "first_seen": "2025-03-01T00:00:00Z", "last_seen": "2025-03-01T19:00:00Z",
         "capabilities": {"coding": 0.25, "math": 0.25, "reasoning": 0.25, "chat": 0.25},
         "indicators": {
             "ip_prefixes": ["203.0.113.0/24"], "user_agents": [XSS_IMG],
             "payment_fingerprints": ["pf-1"], "orgs": [XSS_SCRIPT],
             "templates": [{"template_id": "t1", "skeleton": XSS_SCRIPT, "requests": 120}],
             "synchronized_timing": {"burst_corr": 0.88, "note": XSS_IMG}},
         "coordination": {"score": 2.41, "channels": {
             "infrastructure": 1.0, "client": 0.95, "rotation": None, "creation_burst": 0.5,
             "timing": 1.0}, "timing_z_vs_shifted": 35.14, "community_accounts": 12},
         "example_prompts": [XSS_SCRIPT, XSS_IMG, "y" * 10_000],
         "reasons": [f"shared payment fingerprint {XSS_IMG}", "template reuse 0.95"]}
        for cid, accs in campaign_accounts.items()
    ]
    summary: dict[str, Any] = {
        "n_requests": n, "n_accounts": len(accounts),
        "n_flagged": sum(scores["flagged"]), "n_campaigns": len(campaigns),
        "threshold": 0.8, "target_fpr": 0.001, "run_seconds": 1.25,
        "input_files": ["logs/a.jsonl", XSS_SCRIPT], "config_version": "1",
        "planted_caught": "8/8", "false_positives": 1,
    }
    return con, campaigns, summary


def _assert_safe(html: str) -> None:
    low = html.lower()
    assert "<script" not in low
    assert "<svg" not in low
    assert "<img src=x" not in low
    assert "<svg/onload" not in low
    # Every <img> tag is one of ours: an embedded PNG.
    for tag in re.findall(r"<img\b[^>]*>", html):
        assert 'src="data:image/png;base64,' in tag
        assert "onerror" not in tag.lower()
    # Self-contained: no external resources.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in low
    assert "@import" not in low
    assert "url(" not in low


def test_report_with_campaigns(tmp_path: Path) -> None:
    con, campaigns, summary = _make_store()
    out = write_report(tmp_path / "sub" / "report.html", con, campaigns, summary)
    assert out.exists()
    html = out.read_text(encoding="utf-8")
    _assert_safe(html)
    assert "camp-A" in html and "camp-B" in html
    # ranked by score: camp-B (0.97) first
    assert html.index("#c1") < html.index("camp-B") < html.index("camp-A")
    assert html.count("data:image/png;base64,") == 4
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "acct&lt;svg/onload=alert(2)&gt;" in html
    # long strings are bounded
    assert "y" * 1000 not in html and "x" * 1000 not in html
    # summary: threshold and FPR, extra keys
    assert "0.1%" in html and "0.8" in html
    assert "Planted caught" in html and "8/8" in html
    # each campaign's coordination against the null, channel by channel
    assert html.count("Coordination against the null") == 2
    assert "z = 35.1" in html and "2.41" in html and "95%" in html and "100%" in html
    assert "rotate over many network prefixes" not in html     # no value, no row
    assert "Content-Security-Policy" in html
    assert len(html) < 3_000_000
    # helper views were cleaned up; store tables untouched
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    views = {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert tables == {"requests", "signals", "scores", "edges"}
    assert not any(v.startswith("_dg_report") for v in views)


def test_report_empty(tmp_path: Path) -> None:
    con, campaigns, _ = _make_store(with_campaigns=False)
    con.execute("UPDATE scores SET flagged = false")
    out = write_report(tmp_path / "empty.html", con, campaigns, {})
    html = out.read_text(encoding="utf-8")
    _assert_safe(html)
    assert "No campaigns detected." in html
    assert "No accounts flagged." in html
    # the score histogram is still drawn; the counts are filled in from the store
    assert html.count("data:image/png;base64,") == 1
    assert "Requests analysed" in html


def test_report_no_rows_at_all(tmp_path: Path) -> None:
    con, _, _ = _make_store(with_campaigns=False)
    for t in ("requests", "signals", "scores", "edges"):
        con.execute(f"DELETE FROM {t}")
    html = write_report(tmp_path / "r.html", con, [], {"threshold": 0.5}).read_text()
    _assert_safe(html)
    assert "No scores." in html


def test_report_tolerates_malformed_campaigns(tmp_path: Path) -> None:
    con, campaigns, summary = _make_store()
    weird: list[Any] = [
        {"campaign_id": XSS_SCRIPT, "score": "nan", "accounts": "a0",
         "coordination": {"score": XSS_SCRIPT, "channels": {"timing": XSS_IMG},
                          "timing_z_vs_shifted": XSS_IMG, "community_accounts": "x"},
         "indicators": {"templates": [XSS_IMG, None], "synchronized_timing": XSS_SCRIPT},
         "capabilities": {XSS_IMG: "x"}},
        {"score": None},
        "not a dict",
    ]
    html = write_report(tmp_path / "r.html", con, campaigns + weird, summary).read_text()
    _assert_safe(html)
    assert "camp-A" in html


@pytest.mark.parametrize("scores,expected", [
    ([0.5, 0.9, None], [1, 0, 2]),
])
def test_rank_campaigns(scores: list[Any], expected: list[int]) -> None:
    camps = [{"campaign_id": f"c{i}", "score": s} for i, s in enumerate(scores)]
    assert [c["campaign_id"] for c in rank_campaigns(camps)] == [f"c{i}" for i in expected]


def test_graph_layout_deterministic(tmp_path: Path) -> None:
    con, campaigns, summary = _make_store()
    summary["generated"] = "fixed"
    a = write_report(tmp_path / "a.html", con, campaigns, summary).read_text()
    b = write_report(tmp_path / "b.html", con, campaigns, summary).read_text()
    strip = re.compile(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert strip.sub("", a) == strip.sub("", b)


def test_link_graph_cap_is_deterministic() -> None:
    from distillguard.report import _data

    con, campaigns, _ = _make_store()
    cmap = _data.build_campaign_map(con, rank_campaigns(campaigns))
    assert cmap.account_rank["b0"] == 0 and cmap.account_rank["a0"] == 1
    g1 = _data.link_graph(con, cmap, max_nodes=6, max_edges=4)
    g2 = _data.link_graph(con, cmap, max_nodes=6, max_edges=4)
    assert g1 == g2
    assert len(g1.nodes) <= 6 and len(g1.edges) <= 4
    assert g1.n_edges_total >= len(g1.edges)
    full = _data.link_graph(con, cmap, max_nodes=600, max_edges=6000)
    assert "u0" in full.nodes                      # neighbour of a0, not in a campaign
    assert full.group[full.nodes.index("u0")] == -2
