"""The console end to end in a real browser: Playwright driving the system's headless Chromium.

The console runs under uvicorn on a loopback port; the gateway app shares its state store
(Redis when ``redis-server`` is installed, as in a deployment; otherwise one in-process
``MemoryState``). Screenshots go to ``$DISTILLGUARD_TEST_OUTPUT/console`` or, without it,
to pytest's base temp folder (printed by the tests).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

CHROMIUM = next((p for p in (os.environ.get("DISTILLGUARD_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (CI installs it: "
                                "apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
uvicorn = pytest.importorskip("uvicorn")

from test_console import (  # noqa: E402
    PASSWORDS,
    PAYLOAD_ACCOUNTS,
    PAYLOAD_ORG,
    PAYLOAD_PROMPT,
    PAYLOAD_UA,
    make_app,
    planted_store,  # noqa: F401  (session fixture)
    store,  # noqa: F401
)


@pytest.fixture
def shared_state(tmp_path: Path) -> Iterator[tuple[object, object]]:
    """(console's state store, gateway's state store): two clients of one Redis, or one
    in-process store when redis-server is not installed."""
    if shutil.which("redis-server") is None:
        from distillguard.respond.state import MemoryState

        st = MemoryState()
        yield st, st
        return
    from distillguard.bench.faults import RedisServer
    from distillguard.respond.state import RedisState

    srv = RedisServer(tmp_path)
    srv.start()
    url = srv.url
    try:
        yield RedisState.from_url(url), RedisState.from_url(url)
    finally:
        srv.stop()


@pytest.fixture
def console_url(store: Path, tmp_path: Path, shared_state: tuple[object, object]  # noqa: F811
                ) -> Iterator[str]:
    app = make_app(store, tmp_path, state=shared_state[0])
    from distillguard.bench.faults import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    assert server.started, "console server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(10)


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("DISTILLGUARD_TEST_OUTPUT")
    out = (Path(env) if env else tmp_path_factory.getbasetemp()) / "console"
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {out}")
    return out


@pytest.fixture
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _page(browser: object) -> tuple[object, list[str], list[str]]:
    """A page recording dialogs (dismissed) and script errors / CSP violations."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    dialogs: list[str] = []
    errors: list[str] = []

    def on_dialog(d: object) -> None:
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, dialogs, errors


def _login(page: object, base: str, user: str) -> None:
    page.goto(base + "/")
    assert "/login" in page.url
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("#login")
    page.wait_for_url(base + "/")
    assert page.inner_text("#whoami") == user


def test_analyst_suspends_top_campaign_and_dismisses_an_account(
        console_url: str, browser: object, shots: Path, shared_state: tuple[object, object],
        tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from distillguard.gateway.app import create_app as gateway_app
    from distillguard.gateway.stub import StubUpstream
    from distillguard.respond import AuditLog, OnlineScorer
    from distillguard.respond.directives import DirectiveSet
    from distillguard.respond.policy import load_policy

    gw = TestClient(gateway_app("http://upstream", load_policy(), DirectiveSet([]),
                                OnlineScorer(shared_state[1]),
                                AuditLog(tmp_path / "gateway-audit.jsonl"),
                                transport=StubUpstream().transport()))
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}

    page, dialogs, errors = _page(browser)
    _login(page, console_url, "ana")
    page.screenshot(path=str(shots / "queue.png"), full_page=True)
    top = page.locator("#queue a.campaign").first
    cid = top.inner_text()
    top.click()
    page.wait_for_selector("#graph[data-ready='1'] canvas")
    assert page.inner_text("#campaign-id") == cid
    n = page.locator("#members input[name=accounts]").count()
    assert n >= 2
    members = page.locator("#members input[name=accounts]").evaluate_all(
        "els => els.map(e => e.value)")
    member = members[0]
    assert gw.post("/v1/chat/completions", json=body,
                   headers={"X-Account-Id": member}).status_code == 200
    assert page.inner_text("#gateway-state") == f"0 of {n} with a standing action at the gateway"
    page.screenshot(path=str(shots / "campaign.png"), full_page=False)

    page.select_option("#campaign-action", "suspend")
    page.fill("#campaign-reason", "shared cards, templates and synchronized timing")
    page.click("#campaign-apply")
    page.wait_for_selector(".flash-ok")
    assert f"suspend applied to {n} account(s)" in page.inner_text(".flash-ok")
    assert page.inner_text("#gateway-state") == f"{n} of {n} with a standing action at the gateway"
    # the gateway now refuses every member with the documented error
    for a in (members[0], members[-1]):
        r = gw.post("/v1/chat/completions", json=body, headers={"X-Account-Id": a})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "distillguard_account_suspended"
    page.screenshot(path=str(shots / "campaign-suspended.png"), full_page=False)

    page.click("header nav >> text=Audit log")
    page.wait_for_selector("#audit")
    row = page.locator("#audit tr", has_text="suspend").first
    assert "ana" in row.inner_text() and "analyst" in row.inner_text()
    assert f"{n} accounts" in row.inner_text()
    assert page.inner_text("#chain") == "chain intact"
    page.screenshot(path=str(shots / "audit.png"), full_page=True)

    page.goto(f"{console_url}/campaign?id={quote(cid)}")
    page.locator("#members a.acct").nth(1).click()
    page.wait_for_selector("#dismiss-reason")
    dismissed = page.inner_text("#account-id")
    page.fill("#dismiss-reason", "batch translation job of a known customer")
    page.click("#dismiss")
    page.wait_for_selector(".flash-ok")
    assert page.inner_text("#verdict") == "dismissed"
    assert "suspended" in page.inner_text("#gateway-state")     # a verdict is not a lift
    assert "batch translation job" in page.inner_text("#actions")
    page.screenshot(path=str(shots / "account-dismissed.png"), full_page=True)
    page.click("header nav >> text=Exceptions")
    assert "batch translation job of a known customer" in page.inner_text("#exceptions")
    assert dismissed[:30] in page.inner_text("#exceptions")
    assert not dialogs
    assert not [e for e in errors if "Content Security Policy" in e or "Error" in e], errors


def test_planted_script_payloads_do_not_run(console_url: str, browser: object, shots: Path,
                                            planted_store: Path) -> None:  # noqa: F811
    import duckdb

    con = duckdb.connect(str(planted_store), read_only=True)
    try:
        camp = con.execute("SELECT account_id, campaign_id FROM scores WHERE account_id IN "
                           "(?, ?, ?)", PAYLOAD_ACCOUNTS).fetchall()
    finally:
        con.close()
    assert len(camp) == 3 and all(c for _, c in camp), \
        "the payload accounts should stay in their planted campaign"
    cid = camp[0][1]
    page, dialogs, errors = _page(browser)
    _login(page, console_url, "vic")

    def clean_page(where: str) -> None:
        state = page.evaluate("""() => ({
            xss: window.__xss === undefined ? null : window.__xss,
            body: document.body.dataset.xss || null,
            injected: document.querySelectorAll(
              'img[src="x"], img[onerror], svg[onload], [onload], [onerror]').length,
            scripts: Array.from(document.scripts).filter(
              s => !(s.type === 'application/json' || s.src.includes('/static/'))).length})""")
        assert state == {"xss": None, "body": None, "injected": 0, "scripts": 0}, where
        assert not dialogs, (where, dialogs)

    page.goto(f"{console_url}/?" + "q=" + quote("img src=x"))
    assert cid in page.inner_text("#queue")         # found by the payload org / account id
    clean_page("queue search")
    page.goto(f"{console_url}/campaign?id={quote(cid)}")
    page.wait_for_selector("#graph[data-ready='1'] canvas")   # JSON with </script> parsed
    for d in page.locator("details.prompt").all()[:12]:
        d.locator("summary").click()
    clean_page("campaign page")
    body = page.inner_text("body")
    assert PAYLOAD_ACCOUNTS[1] in body and PAYLOAD_UA in page.inner_text("#indicators")
    page.screenshot(path=str(shots / "payload-campaign.png"), full_page=True)
    for a in PAYLOAD_ACCOUNTS:
        page.goto(f"{console_url}/account?id={quote(a, safe='')}")
        assert page.inner_text("#account-id") == a
        for d in page.locator("details.prompt").all()[:10]:
            d.locator("summary").click()
        clean_page(f"account page {a}")
        text = page.inner_text("body")                  # shown as text, whole
        assert PAYLOAD_UA in text and PAYLOAD_ORG in text
        assert PAYLOAD_PROMPT in text
    page.screenshot(path=str(shots / "payload-account.png"), full_page=True)
    assert not [e for e in errors if "Content Security Policy" in e], errors
