"""Evidence package for one campaign: an HTML summary, the STIX bundle, a hash manifest.

Meant for authorities, partners' trust & safety teams and the provider's legal team. By
default the HTML shows identifiers as HMAC tags, like the bundle; ``reveal_ids=True`` lists
raw account ids for a recipient entitled to them. Every text is HTML-escaped.
"""

from __future__ import annotations

import hashlib
import html
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from distillguard import __version__
from distillguard.intel._common import format_time, parse_time, utcnow
from distillguard.intel.export import export_bundle, gather_facts
from distillguard.intel.hashing import check_key, hmac_id, key_id, redact, scrub_user_agent
from distillguard.intel.stix_objects import TACTICS

__all__ = ["write_report", "sha256_file"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;
text-align:left}.bar{background:#c0392b;height:.8rem}.tlp{font-weight:bold;padding:.3rem;
background:#000;color:#ffc000;display:inline-block}code{font-size:.85em}
"""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[Any]], raw_cols: frozenset[int] = frozenset()
           ) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f"<td>{c if i in raw_cols else _e(c)}</td>" for i, c in enumerate(r)
        ) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    campaign: dict[str, Any],
    out_dir: str | Path,
    key: bytes,
    producer: str,
    *,
    con: Any | None = None,
    tlp: str = "amber",
    reveal_ids: bool = False,
    now: datetime | None = None,
) -> Path:
    """Write ``report.html``, ``bundle.json`` and ``manifest.json`` into ``out_dir``.

    Returns the manifest path; the manifest lists the SHA-256 and size of every other file.
    """
    check_key(key)
    now = parse_time(now) if now is not None else utcnow()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = gather_facts(campaign, con)
    bundle = export_bundle([campaign], con, key, producer, tlp, now=now)
    (out / "bundle.json").write_bytes(orjson.dumps(orjson.loads(bundle.serialize()),
                                                   option=orjson.OPT_INDENT_2))
    secrets = facts.identifiers()

    def ident(raw: str, kind: str) -> str:
        return raw if reveal_ids else hmac_id(key, raw, kind)

    span = facts.last_seen - facts.first_seen
    parts: list[str] = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Campaign evidence "
        f"{_e(facts.campaign_id)}</title><style>{_CSS}</style></head><body>",
        f"<p class='tlp'>TLP:{_e(tlp.upper())}</p>",
        f"<h1>LLM distillation campaign {_e(facts.campaign_id)}</h1>",
        f"<p>Prepared by {_e(producer)} with distillguard {_e(__version__)} on "
        f"{_e(format_time(now))}.</p>",
        "<h2>Scale</h2>",
        _table(["measure", "value"], [
            ["accounts", len(facts.accounts)],
            ["requests", facts.requests],
            ["first seen", format_time(facts.first_seen)],
            ["last seen", format_time(facts.last_seen)],
            ["duration", f"{span.days} days {span.seconds // 3600} hours"],
            ["detection score", f"{facts.score:.2f}"],
        ]),
        "<h2>Timeline</h2>",
    ]
    if facts.daily:
        peak = max(n for _, n in facts.daily) or 1
        parts.append(_table(
            ["day", "requests", ""],
            [[d, n, f"<div class='bar' style='width:{int(300 * n / peak)}px'></div>"]
             for d, n in facts.daily],
            raw_cols=frozenset({2}),
        ))
    else:
        parts.append(f"<p>Active from {_e(format_time(facts.first_seen))} to "
                     f"{_e(format_time(facts.last_seen))} (no per-day data: report built "
                     "without the store).</p>")
    if facts.models:
        parts.append(_table(["model", "requests"], [[m, n] for m, n in facts.models]))
    parts += [
        "<h2>Capabilities targeted</h2>",
        _table(["capability", "share of requests"],
               [[k, f"{v:.0%}"] for k, v in sorted(facts.capabilities.items(),
                                                   key=lambda kv: -kv[1])]),
        "<h2>Techniques</h2><ul><li>MITRE ATLAS AML.T0024.002 — Extract ML Model via the "
        "inference API</li>",
        *(f"<li>{_e(TACTICS[t][0])}: {_e(TACTICS[t][1])}</li>" for t in facts.tactics),
        "</ul>",
        "<h2>Infrastructure</h2>",
        _table(["kind", "value", "requests", "first seen", "last seen"], [
            [i.kind, scrub_user_agent(i.value) if i.kind == "user_agent" else i.value,
             "" if i.count is None else i.count,
             format_time(i.first_seen) if i.first_seen else "",
             format_time(i.last_seen) if i.last_seen else ""]
            for i in facts.infra
        ]),
        "<h2>How the accounts were linked</h2>",
        f"<p>{_e(', '.join(facts.link_kinds) or 'behavioural similarity')}</p><ul>",
        *(f"<li>{_e(r if reveal_ids else redact(str(r), secrets, key))}</li>"
          for r in campaign.get("reasons") or []),
        "</ul>",
        f"<h2>Accounts</h2><p>{'Raw account ids.' if reveal_ids else 'HMAC-SHA256 under the sharing group key ' + _e(key_id(key)) + '; a member holding the key can check its own identifiers.'}</p>",
        _table(["account"], [[f"<code>{_e(ident(a, 'account'))}</code>"]
                             for a in facts.accounts], raw_cols=frozenset({0})),
        "<h2>Actions taken</h2>",
    ]
    actions = campaign.get("actions") or []
    if actions:
        parts.append("<ul>" + "".join(
            f"<li>{_e(a if reveal_ids else redact(str(a), secrets, key))}</li>"
            for a in actions) + "</ul>")
    else:
        parts.append("<p>None recorded in campaigns.json.</p>")
    parts.append("<h2>Files</h2><p><code>bundle.json</code>: STIX 2.1 bundle of this "
                 "campaign (the same as shared over TAXII). <code>manifest.json</code>: "
                 "SHA-256 of every file.</p></body></html>")
    (out / "report.html").write_text("\n".join(parts), encoding="utf-8")

    files = [out / "report.html", out / "bundle.json"]  # only what this package wrote
    manifest = {
        "generated_at": format_time(now),
        "generator": f"distillguard {__version__}",
        "producer": producer,
        "campaign_id": facts.campaign_id,
        "files": [
            {"path": p.relative_to(out).as_posix(), "sha256": sha256_file(p),
             "bytes": p.stat().st_size}
            for p in files
        ],
    }
    path = out / "manifest.json"
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return path
