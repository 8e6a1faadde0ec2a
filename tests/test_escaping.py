"""Attacker text is escaped in every output: script payloads planted in prompts, user agents,
account ids and organisation ids of a simulated week go through ``api.detect`` and the intel
evidence package; the HTML outputs carry them only escaped (no element, attribute or event
handler of the attacker's), the JSON outputs carry them as data, byte for byte.

(The console has its own payload test in tests/test_console.py.)"""

from __future__ import annotations

import csv
import gzip
import html
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import duckdb
import pytest

from distillguard import api
from distillguard.sim import simulate

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PAYLOADS = (SCRIPT, IMG)
KEY = b"test-sharing-group-key-0123456789"


class _Elements(HTMLParser):
    """Every start tag and attribute name of a document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.attr_values: list[str] = []
        self.img_srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.img_srcs.append(dict(attrs).get("src") or "")
        for name, value in attrs:
            self.attrs.add(name)
            self.attr_values.append(value or "")


def _check_html(text: str, planted: list[str]) -> None:
    """No payload raw; the attacker's elements and handlers do not exist in the parsed
    document; and each planted text is there escaped (so the check is not vacuous)."""
    for p in PAYLOADS:
        assert p not in text
    assert "<script" not in text.lower()
    parsed = _Elements()
    parsed.feed(text)
    assert not parsed.tags & {"script", "svg", "iframe", "object", "embed"}
    # the report's own figures are the only images: base64 PNG data URIs
    assert all(src.startswith("data:image/png;base64,") for src in parsed.img_srcs)
    assert not {a for a in parsed.attrs if a.startswith("on")}
    assert not any("alert(" in v for v in parsed.attr_values)
    for p in planted:
        assert html.escape(p, quote=True) in text, p


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny simulated week whose campaign accounts carry the payloads in their account
    ids, user agents, organisation ids (one per campaign, so it is a shared indicator) and
    prompts; detected with ``api.detect``."""
    work = tmp_path_factory.mktemp("xss")
    sim = simulate(work / "traffic", scenario="tiny", seed=3)
    with open(work / "traffic" / "labels.csv", encoding="utf-8") as f:
        labels = {r["account_id"]: r for r in csv.DictReader(f)}
    renamed: dict[str, str] = {}
    logs = []
    for i, path in enumerate(sim.logs):
        out = work / f"planted-{i}.jsonl"
        with gzip.open(path, "rt", encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
            for line in f:
                r = json.loads(line)
                lab = labels.get(r["account_id"])
                if lab and lab["label"] != "benign":
                    a = r["account_id"]
                    payload = PAYLOADS[len(renamed) % 2] if a not in renamed else None
                    new = renamed.setdefault(a, a + (payload or ""))
                    r["account_id"] = new
                    r["user_agent"] = IMG + str(r.get("user_agent") or "")
                    r["org_id"] = f"org {SCRIPT}{IMG} {lab['campaign_id']}"
                    msg = r["messages"][-1]  # at the start: example prompts are cut
                    msg["content"] = f"{SCRIPT} {IMG} " + msg["content"]
                g.write(json.dumps(r) + "\n")
        logs.append(out)
    res = api.detect(logs, work / "out")
    return {"work": work, "out": work / "out", "result": res, "renamed": renamed}


def test_report_html_escapes_planted_text(planted: dict[str, Any]) -> None:
    text = (planted["out"] / "report.html").read_text(encoding="utf-8")
    campaigns = json.loads((planted["out"] / "campaigns.json").read_text(encoding="utf-8"))
    assert campaigns, "the planted campaigns must be detected for the check to mean anything"
    shown = [a for a in planted["renamed"].values() if html.escape(a, quote=True) in text]
    assert any(SCRIPT in a for a in shown) and any(IMG in a for a in shown)
    ua = campaigns[0]["indicators"]["user_agents"][0]["value"]
    _check_html(text, [shown[0], ua, f"{SCRIPT} {IMG}"])  # an account, a UA, a prompt


def test_campaigns_json_carries_payloads_as_data(planted: dict[str, Any]) -> None:
    """JSON is data: parsed back, the planted strings are intact (nothing dropped, nothing
    double-escaped), so a viewer that escapes on display shows exactly what was sent."""
    campaigns = json.loads((planted["out"] / "campaigns.json").read_text(encoding="utf-8"))
    accounts = {a for c in campaigns for a in c["accounts"]}
    assert accounts & set(planted["renamed"].values())
    assert accounts <= set(planted["renamed"].values())  # only planted campaign accounts
    flat = json.dumps(campaigns, ensure_ascii=False)
    assert "&lt;" not in flat and "&quot;" not in flat  # not HTML-escaped into the data
    uas = {u["value"] for c in campaigns for u in c["indicators"].get("user_agents", [])}
    assert uas and all(u.startswith(IMG) for u in uas)
    orgs = {o["value"] if isinstance(o, dict) else o
            for c in campaigns for o in c["indicators"].get("orgs", [])}
    assert any(SCRIPT + IMG in o for o in orgs), orgs
    prompts = [str(p) for c in campaigns for p in c.get("example_prompts", [])]
    assert any(SCRIPT in p and IMG in p for p in prompts)


@pytest.mark.parametrize("reveal_ids", [False, True])
def test_evidence_package_escapes_planted_text(planted: dict[str, Any], tmp_path: Path,
                                               reveal_ids: bool) -> None:
    pytest.importorskip("stix2")
    from distillguard.intel import load_campaigns, write_report

    campaigns = load_campaigns(planted["out"])
    campaign = {**campaigns[0], "actions": [f"suspended {SCRIPT}"]}
    con = duckdb.connect(str(planted["out"] / "store.duckdb"), read_only=True)
    try:
        write_report(campaign, tmp_path / "pkg", KEY, f"ACME {IMG}", con=con,
                     reveal_ids=reveal_ids)
    finally:
        con.close()
    text = (tmp_path / "pkg" / "report.html").read_text(encoding="utf-8")
    must = [f"ACME {IMG}"]
    if reveal_ids:
        must.append(campaign["accounts"][0])
    ua = campaign["indicators"]["user_agents"][0]["value"]
    must.append(ua)
    _check_html(text, must)
    # the bundle is JSON data: the user agent pattern carries the payload, STIX-quoted
    bundle = json.loads((tmp_path / "pkg" / "bundle.json").read_text(encoding="utf-8"))
    patterns = [o["pattern"] for o in bundle["objects"] if o["type"] == "indicator"]
    assert any("onerror=alert(1)" in p for p in patterns)
