"""Analyst console on a real detection store: roles, CSRF, queue, actions, feedback.

The store is built once per session by simulating the demo's traffic, planting script
payloads into three accounts of its largest planted campaign (account ids, user agents, org
names, prompts), and running detection on it (:func:`planted_store`). The browser tests in
test_console_browser.py use the same store.
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import orjson
import pytest

pytest.importorskip("argon2")
pytest.importorskip("jinja2")
from fastapi.testclient import TestClient  # noqa: E402

PAYLOAD_ACCOUNTS = ['acct_"><img src=x onerror=alert(1)>', "acct_</script><script>alert(2)</script>",
                    "acct_<svg/onload=alert(3)>"]
PAYLOAD_UA = "<script>alert('ua')</script>Mozilla/5.0"
PAYLOAD_ORG = "org-\"><img src=x onerror=\"document.body.dataset.xss='org'\">"
PAYLOAD_PROMPT = ("</textarea></pre><script>window.__xss=1;alert('prompt')</script>"
                  "<img src=x onerror=\"document.body.dataset.xss='prompt'\"> Solve step by step: "
                  "{{7*7}} ${7*7}")
PASSWORDS = {"ana": "analyst-password-1", "vic": "viewer-password-1", "root": "admin-password-1"}


def _plant(logs_dir: Path, labels: Path) -> dict[str, str]:
    """Rename three accounts of the largest planted campaign to payload ids; give them a
    payload user agent and org, and a payload prompt in every fifth request."""
    import polars as pl

    lab = pl.read_csv(labels, infer_schema_length=0).filter(pl.col("label") == "distill")
    top = lab.group_by("campaign_id").len().sort("len", descending=True)["campaign_id"][0]
    victims = sorted(lab.filter(pl.col("campaign_id") == top)["account_id"].to_list())[:3]
    rename = dict(zip(victims, PAYLOAD_ACCOUNTS, strict=True))
    n = 0
    for f in sorted(logs_dir.glob("*.jsonl.gz")):
        out = []
        with gzip.open(f, "rb") as fh:
            for line in fh:
                r = orjson.loads(line)
                if r["account_id"] in rename:
                    r["account_id"] = rename[r["account_id"]]
                    r["user_agent"] = PAYLOAD_UA
                    r["org_id"] = PAYLOAD_ORG
                    n += 1
                    if n % 5 == 0:
                        r["messages"] = [{"role": "user", "content": PAYLOAD_PROMPT}]
                out.append(orjson.dumps(r))
        with gzip.open(f, "wb") as fh:
            fh.write(b"\n".join(out) + b"\n")
    return rename


@pytest.fixture(scope="session")
def planted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detection store of the demo's traffic with planted payloads (built once per session,
    also when test_console_browser.py imports this fixture)."""
    from distillguard import api
    from distillguard.sim import simulate

    key = str(tmp_path_factory.getbasetemp())
    if key in _BUILT:
        return _BUILT[key]
    base = tmp_path_factory.mktemp("console-store")
    sim = simulate(base / "traffic", scenario="demo", seed=7)
    _plant(base / "traffic" / "logs", Path(sim.labels))
    db = base / "store.duckdb"
    api.detect(sim.logs, base / "results", db=db)
    _BUILT[key] = db
    return db


_BUILT: dict[str, Path] = {}


@pytest.fixture
def store(planted_store: Path, tmp_path: Path) -> Path:
    """A private copy of the planted store (tests act on it)."""
    p = tmp_path / "store.duckdb"
    shutil.copy(planted_store, p)
    return p


def make_app(db: Path, tmp: Path, state=None, **kw):
    from distillguard.console import ConsoleConfig, create_app
    from distillguard.console._db import ConsoleDB
    from distillguard.console.auth import Users

    cdb = ConsoleDB(db)
    users = Users(cdb)
    if users.count() == 0:
        users.add("ana", PASSWORDS["ana"], "analyst")
        users.add("vic", PASSWORDS["vic"], "viewer")
        users.add("root", PASSWORDS["root"], "admin")
    cdb.close()
    return create_app(ConsoleConfig(db=db, audit=tmp / "console-audit.jsonl", state=state,
                                    shared_state=state is not None, work_dir=tmp / "work", **kw))


def login(c: TestClient, user: str) -> str:
    """Log in through the form; returns the session's CSRF token."""
    r = c.get("/login")
    tok = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
    r = c.post("/login", data={"csrf": tok, "username": user, "password": PASSWORDS[user],
                               "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text[:500]
    page = c.get("/")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def top_campaign(c: TestClient) -> str:
    return re.search(r'href="/campaign\?id=([^"]+)"', c.get("/").text).group(1)


def audit_entries(tmp: Path) -> list[dict]:
    p = tmp / "console-audit.jsonl"
    return [orjson.loads(x) for x in p.read_bytes().splitlines()] if p.exists() else []


def test_wrong_password_and_anonymous_are_refused(store: Path, tmp_path: Path) -> None:
    with TestClient(make_app(store, tmp_path)) as c:
        assert c.get("/", follow_redirects=False).status_code == 303       # to /login
        r = c.get("/login")
        tok = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
        r = c.post("/login", data={"csrf": tok, "username": "ana", "password": "nope"},
                   follow_redirects=False)
        assert r.status_code == 401
        assert c.post("/act", data={"action": "confirm"}).status_code == 401
    assert [e["action"] for e in audit_entries(tmp_path)] == ["login_failed"]


def test_viewer_cannot_act(store: Path, tmp_path: Path) -> None:
    with TestClient(make_app(store, tmp_path)) as c:
        csrf = login(c, "vic")
        cid = top_campaign(c)
        page = c.get(f"/campaign?id={cid}")
        assert page.status_code == 200 and 'id="campaign-actions"' not in page.text
        acct = re.search(r'href="/account\?id=([^"]+)"', page.text).group(1)
        for data in ({"action": "suspend", "campaign_id": cid, "all_members": "1",
                      "reason": "x"},
                     {"action": "dismiss", "accounts": acct, "reason": "x"}):
            r = c.post("/act", data={**data, "csrf": csrf}, follow_redirects=False)
            assert r.status_code == 403 and "needs the analyst role" in r.text
        assert c.post("/feedback/preview", data={"csrf": csrf}).status_code == 403
        assert c.get("/users").status_code == 403
    from distillguard.console._db import ConsoleDB

    db = ConsoleDB(store)
    assert db.value("SELECT count(*) FROM console_actions") == 0
    db.close()
    assert {e["action"] for e in audit_entries(tmp_path)} == {"login"}


def test_request_without_csrf_token_is_refused(store: Path, tmp_path: Path) -> None:
    from distillguard.respond.state import MemoryState

    state = MemoryState()
    with TestClient(make_app(store, tmp_path, state=state)) as c:
        csrf = login(c, "ana")
        cid = top_campaign(c)
        form = {"action": "suspend", "campaign_id": cid, "all_members": "1", "reason": "r"}
        r = c.post("/act", data=form, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
        r = c.post("/act", data={**form, "csrf": csrf[:-2] + "xx"}, follow_redirects=False)
        assert r.status_code == 403
        # a cross-site form post carries the attacker's Origin: refused even with the token
        r = c.post("/act", data={**form, "csrf": csrf}, follow_redirects=False,
                   headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        from distillguard.console.queries import campaign_members

        members = campaign_members(c.app.state.db, cid)
        assert not any(state.suspended(a) for a in members)
        r = c.post("/act", data={**form, "csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303
        assert all(state.suspended(a)["by"] == "ana" for a in members)
    refused = [e for e in audit_entries(tmp_path) if e["action"] == "csrf_refused"]
    assert len(refused) == 2


def test_queue_is_paginated_and_filtered_server_side(store: Path, tmp_path: Path) -> None:
    with TestClient(make_app(store, tmp_path, page_size=2)) as c:
        login(c, "vic")
        db = c.app.state.db
        n_items = db.value("""SELECT count(DISTINCT coalesce(campaign_id, account_id))
                              FROM scores WHERE flagged OR campaign_id IS NOT NULL""")
        assert n_items > 2 * 2, "pages of 2: the demo store fills more than two"
        p1, p2 = c.get("/").text, c.get("/?page=2").text
        rows1 = re.findall(r'<tr class="item-', p1)
        rows2 = re.findall(r'<tr class="item-', p2)
        assert len(rows1) == 2 and len(rows2) == 2
        assert f"{n_items} item(s)" in p1 and f"page 1 of {-(-n_items // 2)}" in p1
        last = c.get(f"/?page={-(-n_items // 2)}").text
        assert len(re.findall(r'<tr class="item-', last)) == n_items - 2 * (-(-n_items // 2) - 1)
        assert 'id="next-page"' in p1 and 'id="next-page"' not in last
        ids1 = set(re.findall(r'href="/(?:campaign|account)\?id=([^"]+)"', p1))
        ids2 = set(re.findall(r'href="/(?:campaign|account)\?id=([^"]+)"', p2))
        assert not ids1 & ids2
        # search by IP prefix: the top campaign's most shared /24
        cid = top_campaign(c)
        pref = db.value("""SELECT v FROM (SELECT unnest(prefixes) AS v FROM
                           console_account_index WHERE campaign_id = ?) GROUP BY v
                           ORDER BY count(*) DESC LIMIT 1""", [cid])
        hit = c.get("/", params={"q": pref.rsplit(".", 1)[0] + "."}).text
        assert f"/campaign?id={cid}" in hit and "1 item(s)" in hit
        none = c.get("/", params={"q": "no-such-indicator-zzz"}).text
        assert "Nothing matches." in none and "0 item(s)" in none
        assert c.get("/", params={"since": "not-a-date"}).status_code == 400


def test_dismiss_becomes_label_exception_and_recalibration(store: Path,
                                                          tmp_path: Path) -> None:
    with TestClient(make_app(store, tmp_path)) as c:
        csrf = login(c, "ana")
        db = c.app.state.db
        cid = top_campaign(c)
        acct = db.value("SELECT account_id FROM console_account_index WHERE flagged AND "
                        "campaign_id IS NULL ORDER BY score DESC LIMIT 1") or db.value(
            "SELECT account_id FROM console_account_index WHERE campaign_id <> ? "
            "ORDER BY score DESC LIMIT 1", [cid])
        r = c.post("/act", data={"csrf": csrf, "action": "dismiss", "accounts": acct,
                                 "reason": "known evaluation harness", "exception": "account:",
                                 "next": "/"}, follow_redirects=False)
        assert r.status_code == 303
        # dismissing needs a reason
        r = c.post("/act", data={"csrf": csrf, "action": "dismiss", "accounts": acct,
                                 "reason": " ", "next": "/"})
        assert "a reason is required" in r.text
        c.post("/act", data={"csrf": csrf, "action": "confirm", "campaign_id": cid,
                             "all_members": "1", "next": "/"})
        labels = c.get("/feedback/labels.csv").text.splitlines()
        assert labels[0] == "account_id,label,campaign_id,kind"
        assert f"{acct},benign,,analyst_dismiss" in labels
        n_members = db.value("SELECT n_accounts FROM console_campaign_index "
                             "WHERE campaign_id = ?", [cid])
        assert sum(",distill," in x for x in labels) == n_members
        ex = c.get("/exceptions").text
        assert "known evaluation harness" in ex and "ana" in ex
        # the excepted account left the queue, and the queue says so
        q = c.get("/", params={"q": acct}).text
        assert "Nothing matches." in q and "hidden by active" in q
        assert acct in c.get("/", params={"q": acct, "show_excepted": "1"}).text
        # recalibration: an analyst previews, nothing is applied; only an admin applies
        c.post("/feedback/preview", data={"csrf": csrf})
        fbp = c.get("/feedback").text
        assert "Proposal 1" in fbp and "Apply proposal" not in fbp
        before = re.search(r'class="fpr-before">([^<]+)<', fbp).group(1)
        after = re.search(r'class="fpr-after">([^<]+)<', fbp).group(1)
        assert before != after and after == "0.00%"
        assert c.post("/feedback/apply", data={"csrf": csrf, "id": "1"}).status_code == 403
        assert not list((tmp_path / "work").glob("calibration-*.yaml"))
    with TestClient(make_app(store, tmp_path)) as c:
        csrf = login(c, "root")
        c.post("/feedback/apply", data={"csrf": csrf, "id": "1"})
        out = list((tmp_path / "work").glob("calibration-*.yaml"))
        assert len(out) == 1
        from distillguard.config import load_config

        cfg = load_config(out[0])
        assert cfg["scoring"]["self_calibrate"] is False
        thr = cfg["scoring"]["calibration"]["raw_threshold"]
        raw = c.app.state.db.value("SELECT final_raw FROM scores WHERE account_id = ?", [acct])
        assert raw < thr, "the dismissed account falls under the applied threshold"
    acts = [e["action"] for e in audit_entries(tmp_path)]
    for a in ("dismiss", "add_exception", "confirm", "recalibration_preview",
              "recalibration_apply"):
        assert a in acts


def test_audit_chain_names_who_did_what(store: Path, tmp_path: Path) -> None:
    from distillguard.respond.audit import verify

    with TestClient(make_app(store, tmp_path)) as c:
        csrf = login(c, "ana")
        cid = top_campaign(c)
        c.post("/act", data={"csrf": csrf, "action": "throttle", "campaign_id": cid,
                             "all_members": "1", "reason": "burst"})
        page = c.get("/audit").text
        assert "chain intact" in page and "throttle" in page
    res = verify(tmp_path / "console-audit.jsonl")
    assert res.ok and res.entries == 2
    e = audit_entries(tmp_path)[-1]
    assert (e["actor"], e["role"], e["action"], e["campaign_id"]) == ("ana", "analyst",
                                                                      "throttle", cid)
    assert e["params"]["rpm"] > 0 and e["enforced_at_gateway"] is False


def _gateway(tmp: Path):
    """The real gateway app on a state store the console shares: (state, app)."""
    from distillguard.gateway.app import create_app as gateway_app
    from distillguard.gateway.stub import StubUpstream
    from distillguard.respond import AuditLog, OnlineScorer
    from distillguard.respond.directives import DirectiveSet
    from distillguard.respond.policy import load_policy
    from distillguard.respond.state import MemoryState

    state = MemoryState()
    return state, gateway_app("http://upstream", load_policy(), DirectiveSet([]),
                              OnlineScorer(state), AuditLog(tmp / "gw-audit.jsonl"),
                              transport=StubUpstream().transport())


def _first_member(c: TestClient, cid: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(re.search(r'href="/account\?id=([^"]+)"',
                                  c.get(f"/campaign?id={cid}").text).group(1))


def test_suspend_from_console_changes_what_the_gateway_does(store: Path,
                                                            tmp_path: Path) -> None:
    """Console and gateway share the gateway's state store: the account's next request
    through the real gateway app is refused with the documented suspension error."""
    state, gw = _gateway(tmp_path)
    body = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}
    with TestClient(make_app(store, tmp_path, state=state)) as c, TestClient(gw) as g:
        csrf = login(c, "ana")
        cid = top_campaign(c)
        member = _first_member(c, cid)
        assert g.post("/v1/chat/completions", json=body,
                      headers={"X-Account-Id": member}).status_code == 200
        c.post("/act", data={"csrf": csrf, "action": "suspend", "accounts": member,
                             "campaign_id": cid, "reason": "confirmed hydra"})
        r = g.post("/v1/chat/completions", json=body, headers={"X-Account-Id": member})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "distillguard_account_suspended"
        assert "suspended" in c.get("/account", params={"id": member}).text
        c.post("/act", data={"csrf": csrf, "action": "lift", "accounts": member,
                             "reason": "appeal granted"})
        assert g.post("/v1/chat/completions", json=body,
                      headers={"X-Account-Id": member}).status_code == 200


def test_exports_evidence_package_and_stix_bundle(store: Path, tmp_path: Path) -> None:
    import io
    import zipfile

    pytest.importorskip("stix2")
    key = b"k" * 32
    with TestClient(make_app(store, tmp_path, intel_key=key, producer="Acme AI")) as c:
        csrf = login(c, "ana")
        cid = top_campaign(c)
        r = c.post("/campaign/export", data={"csrf": csrf, "campaign_id": cid, "kind": "stix"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        bundle = orjson.loads(r.content)
        assert bundle["type"] == "bundle"
        assert any(o["type"] == "campaign" for o in bundle["objects"])
        members = c.app.state.db.rows("SELECT account_id FROM console_account_index "
                                      "WHERE campaign_id = ?", [cid])
        assert not any(m["account_id"].encode() in r.content for m in members), \
            "raw account ids must not leave in a shared bundle"
        r = c.post("/campaign/export", data={"csrf": csrf, "campaign_id": cid,
                                             "kind": "evidence"})
        assert r.status_code == 200
        z = zipfile.ZipFile(io.BytesIO(r.content))
        assert sorted(z.namelist()) == ["bundle.json", "manifest.json", "report.html"]
        manifest = orjson.loads(z.read("manifest.json"))
        assert manifest["campaign_id"] == cid and manifest["producer"] == "Acme AI"
    acts = [e for e in audit_entries(tmp_path) if e["action"].startswith("export_")]
    assert [e["action"] for e in acts] == ["export_stix", "export_evidence"]
    assert all(e["actor"] == "ana" and e["campaign_id"] == cid for e in acts)


def test_standing_responses_from_console_reach_the_gateway(store: Path, tmp_path: Path) -> None:
    """Require verification and strip reasoning set in the console are what the gateway
    does on the account's next request; a lesser action never replaces a suspension."""
    from distillguard.gateway.stub import REASONING

    state, gw = _gateway(tmp_path)
    body = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}
    with TestClient(make_app(store, tmp_path, state=state)) as c, TestClient(gw) as g:
        csrf = login(c, "ana")
        cid = top_campaign(c)
        member = _first_member(c, cid)
        h = {"X-Account-Id": member}
        first = g.post("/v1/chat/completions", json=body, headers=h)
        assert first.status_code == 200
        assert first.json()["choices"][0]["message"].get("reasoning_content") == REASONING

        def act(action: str) -> None:
            r = c.post("/act", data={"csrf": csrf, "action": action, "accounts": member,
                                     "campaign_id": cid, "reason": "analyst decision"})
            assert r.status_code in (200, 303), r.text

        act("strip_reasoning")
        r = g.post("/v1/chat/completions", json=body, headers=h)
        assert r.status_code == 200
        assert "strip_reasoning" in r.headers["X-Distillguard-Action"]
        assert not r.json()["choices"][0]["message"].get("reasoning_content")
        assert "strip_reasoning" in c.get("/account", params={"id": member}).text

        act("require_verification")
        r = g.post("/v1/chat/completions", json=body, headers=h)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "distillguard_verification_required"

        act("suspend")
        act("strip_reasoning")            # does not replace the suspension
        r = g.post("/v1/chat/completions", json=body, headers=h)
        assert r.json()["error"]["code"] == "distillguard_account_suspended"
