"""Gateway: directives, graduated actions, output stripping, bad input, audit, fail modes."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from distillguard.gateway.app import create_app
from distillguard.gateway.auth import KeyStore
from distillguard.gateway.stub import REASONING, StubUpstream, stub_app
from distillguard.respond._errors import StateStoreError
from distillguard.respond.audit import AuditLog, query, verify
from distillguard.respond.directives import Directive, DirectiveSet
from distillguard.respond.online import OnlineScorer
from distillguard.respond.policy import Policy, load_policy
from distillguard.respond.state import MemoryState

DENY_XX = Directive.from_dict({"id": "deny-xx", "effect": "deny", "models": ["frontier-*"],
                               "users": {"country": ["XX"]}, "legal_reference": "REG-1"})

# suspend from 0.6: a lone account eliciting reasoning in every prompt ends near 0.7 under the
# fitted calibration (config 2026.12.1); throttle (0.5) comes first, suspension after 40 requests
TEST_POLICY = Policy.from_dict({
    "version": "test-1",
    "rules": [
        {"id": "suspend", "when": {"score_min": 0.6, "min_requests": 40}, "action": "suspend"},
        {"id": "throttle", "when": {"score_min": 0.5}, "action": "throttle",
         "params": {"rpm": 3, "retry_after_s": 30}},
        {"id": "strip", "when": {"score_min": 0.5, "signals_any": ["cot_elicit"]},
         "action": "strip_reasoning"},
        {"id": "cap", "when": {"score_min": 0.5}, "action": "cap_output",
         "params": {"max_tokens": 256}},
        {"id": "watch", "when": {"score_min": 0.2}, "action": "log"},
    ]})

KEYS = KeyStore({"sk-xx": {"account_id": "acct-xx", "country": "XX"},
                 "sk-us": {"account_id": "acct-us", "country": "US", "org": "org-1"}},
                allow_account_header=True)


def _msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def env(tmp_path: Path):
    up = StubUpstream()
    audit = AuditLog(tmp_path / "audit.jsonl")
    scorer = OnlineScorer(MemoryState())
    app = create_app("http://upstream.test", TEST_POLICY, DirectiveSet([DENY_XX]), scorer, audit,
                     transport=up.transport(), keys=KEYS,
                     request_log=tmp_path / "requests.jsonl", max_body_bytes=64_000)
    with TestClient(app) as client:
        yield client, up, tmp_path, scorer


def test_directive_denies_the_right_users_only(env) -> None:
    client, up, tmp, _ = env
    body = {"model": "frontier-1", "messages": _msg("hi")}
    r = client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-xx"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "distillguard_access_denied"
    assert r.json()["error"]["directives"] == ["deny-xx"]
    # Same user, another model; another user, same model: both pass.
    assert client.post("/v1/chat/completions", json={**body, "model": "m1"},
                       headers={"Authorization": "Bearer sk-xx"}).status_code == 200
    assert client.post("/v1/chat/completions", json=body,
                       headers={"Authorization": "Bearer sk-us"}).status_code == 200
    assert [c["model"] for c in up.calls] == ["m1", "frontier-1"]
    # /v1/models hides denied models from the denied user only.
    ids = [m["id"] for m in client.get("/v1/models", headers={"X-Api-Key": "sk-xx"}).json()["data"]]
    assert "frontier-x" not in ids and "m1" in ids
    ids = [m["id"] for m in client.get("/v1/models", headers={"X-Api-Key": "sk-us"}).json()["data"]]
    assert "frontier-x" in ids
    denied = list(query(tmp / "audit.jsonl", account="acct-xx", action="deny"))
    assert len(denied) == 1 and denied[0]["legal_references"] == ["REG-1"]


def test_broken_directive_fails_closed_in_gateway(tmp_path: Path) -> None:
    bad = Directive.from_dict({"id": "bad", "effect": "deny", "models": ["*"],
                               "legal_reference": "x",
                               "condition": "principal.country in resource.name"})
    ds = DirectiveSet([bad])
    assert ds.broken
    up = StubUpstream()
    app = create_app("http://u", TEST_POLICY, ds, OnlineScorer(), AuditLog(tmp_path / "a.jsonl"),
                     transport=up.transport(), keys=KEYS)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": _msg("hi")},
                   headers={"X-Account-Id": "anyone"})
    assert r.status_code == 403 and r.json()["error"]["reason"] == "directive_error"
    assert up.calls == []


@pytest.mark.parametrize("raw, headers, status", [
    (b"{not json", {}, 400),
    (b"[1, 2]", {}, 400),
    (json.dumps({"model": "m1"}).encode(), {}, 400),
    (json.dumps({"model": 5, "messages": _msg("x")}).encode(), {}, 400),
    (json.dumps({"model": "m1", "messages": [{"content": "x"}]}).encode(), {}, 400),
    (json.dumps({"model": "m1", "messages": _msg("x"), "stream": "yes"}).encode(), {}, 400),
    (json.dumps({"model": "m1", "messages": _msg("x"), "max_tokens": -3}).encode(), {}, 400),
    (json.dumps({"model": "m1", "messages": _msg("x" * 70_000)}).encode(), {}, 413),
    (json.dumps({"model": "m1", "messages": _msg("x")}).encode(), {"X-Account-Id": ""}, 401),
])
def test_malformed_requests_never_reach_upstream(env, raw, headers, status) -> None:
    client, up, tmp, _ = env
    h = {"Content-Type": "application/json", "X-Account-Id": "acct-1", **headers}
    r = client.post("/v1/chat/completions", content=raw, headers=h)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert up.calls == []
    assert verify(tmp / "audit.jsonl").ok


def _hydra_prompt(i: int) -> str:
    return (f"Solve problem {i}: compute the sum of the first {i + 7} primes. Then articulate "
            f"the complete internal reasoning behind your answer, step by step.")


def test_hydra_is_throttled_then_suspended_while_ordinary_users_pass(env) -> None:
    client, up, tmp, _ = env
    statuses, actions = [], []
    for i in range(60):
        r = client.post("/v1/chat/completions",
                        json={"model": "m1", "messages": _msg(_hydra_prompt(i))},
                        headers={"X-Account-Id": "hydra-1"})
        statuses.append(r.status_code)
        actions.append(r.headers.get("X-Distillguard-Action"))
        # An ordinary user interleaved with the hydra is never touched.
        ok = client.post("/v1/chat/completions", json={"model": "m1", "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": f"Could you suggest a name for my cat #{i % 3}?"}]},
            headers={"X-Account-Id": "ordinary"})
        assert ok.status_code == 200 and ok.headers["X-Distillguard-Action"] == "allow"
        assert ok.json()["choices"][0]["message"]["reasoning_content"] == REASONING
    assert statuses[0] == 200
    first_429 = statuses.index(429)
    first_susp = next(i for i, (s, a) in enumerate(zip(statuses, actions, strict=True))
                      if s == 403 and a == "suspend")
    assert first_429 < first_susp
    assert all(s == 403 for s in statuses[first_susp:])           # suspension is sticky
    r429 = client.post("/v1/chat/completions", json={"model": "m1", "messages": _msg("hi")},
                       headers={"X-Account-Id": "hydra-1"})
    assert r429.json()["error"]["code"] == "distillguard_account_suspended"
    # Before the throttle hit, flagged-but-allowed hydra answers were stripped and capped.
    flagged_ok = [i for i, (s, a) in enumerate(zip(statuses, actions, strict=True))
                  if s == 200 and "strip_reasoning" in a]
    assert flagged_ok
    capped = [c for c in up.calls if c.get("max_tokens") == 256]
    assert capped
    throttled = [e for e in query(tmp / "audit.jsonl", account="hydra-1", action="throttle")]
    assert throttled and throttled[0]["reasons"]
    assert verify(tmp / "audit.jsonl").ok
    # Request log holds canonical records batch detection can ingest.
    recs = [json.loads(x) for x in (tmp / "requests.jsonl").read_text().splitlines()]
    assert {"request_id", "ts", "account_id", "model", "messages"} <= set(recs[0])
    assert any(r["dg_action"] == "suspend" for r in recs)


def test_strip_reasoning_json_and_stream(env) -> None:
    client, up, _, scorer = env
    # Make the account flagged: enough CoT-eliciting traffic, slowly enough not to throttle.
    # ...on the request's UTC day: from 00:00 to 01:00 UTC an hour earlier is the day before,
    # and two active days read as a human rhythm (the account then ends below the flag)
    now = time.time()
    t0 = max(now - 3600, now - now % 86400)
    step = min(1.0, (now - t0) / 25)
    for i in range(25):
        scorer.observe(_view("cot-1", _hydra_prompt(i), t0 + i * step))
    body = {"model": "m1", "messages": _msg(_hydra_prompt(99))}
    r = client.post("/v1/chat/completions", json=body, headers={"X-Account-Id": "cot-1"})
    assert r.status_code == 200
    assert "strip_reasoning" in r.headers["X-Distillguard-Action"]
    msg = r.json()["choices"][0]["message"]
    assert "reasoning_content" not in msg and msg["content"] == "Answer."
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                       headers={"X-Account-Id": "cot-1"}) as s:
        assert s.status_code == 200
        assert s.headers["X-Distillguard-Reasoning"] == "stripped"
        text = "".join(s.iter_text())
    assert REASONING not in text and "hidden" not in text and "<thi" not in text
    content = "".join(json.loads(line[5:])["choices"][0]["delta"].get("content", "")
                      for line in text.splitlines()
                      if line.startswith("data:") and "[DONE]" not in line)
    assert content == "Hello world"
    assert text.rstrip().endswith("data: [DONE]")


def _view(acct: str, prompt: str, ts: float):
    from distillguard.respond.online import RequestView
    return RequestView(acct, "m1", ts, prompt)


class _DownState(MemoryState):
    def _fail(self, *a, **k):
        raise StateStoreError("redis down")
    update = globals = rate = suspended = suspend = _fail  # type: ignore[assignment]


@pytest.mark.parametrize("mode, status", [("closed", 503), ("open", 200)])
def test_state_store_down_fail_modes(tmp_path: Path, mode: str, status: int) -> None:
    up = StubUpstream()
    app = create_app("http://u", load_policy(), DirectiveSet([DENY_XX]), OnlineScorer(_DownState()),
                     AuditLog(tmp_path / "a.jsonl"), transport=up.transport(), fail_mode=mode,
                     keys=KEYS)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": _msg("hi")},
                   headers={"X-Account-Id": "a"})
        assert r.status_code == status
        if mode == "closed":
            assert r.json()["error"]["code"] == "distillguard_unavailable"
            assert r.headers["Retry-After"] == "5" and up.calls == []
        else:
            assert r.headers["X-Distillguard-Screening"] == "unavailable"
        # Directives still apply with the state store down.
        r = c.post("/v1/chat/completions", json={"model": "frontier-1", "messages": _msg("hi")},
                   headers={"Authorization": "Bearer sk-xx"})
        assert r.status_code == 403
        assert c.get("/healthz").status_code == (503 if mode == "closed" else 200)
    assert verify(tmp_path / "a.jsonl").ok


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app) -> tuple[object, str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}"


def test_end_to_end_over_real_http_streaming(tmp_path: Path) -> None:
    """Client → gateway (uvicorn) → stub upstream (uvicorn), all on 127.0.0.1."""
    upstream = stub_app()
    up_server, up_url = _serve(upstream)
    app = create_app(up_url, TEST_POLICY, DirectiveSet([DENY_XX]), OnlineScorer(),
                     AuditLog(tmp_path / "a.jsonl"), keys=KEYS,
                     request_log=tmp_path / "r.jsonl")
    gw_server, gw_url = _serve(app)
    try:
        with httpx.Client(base_url=gw_url, timeout=10) as c:
            with c.stream("POST", "/v1/chat/completions",
                          json={"model": "m1", "messages": _msg("Hi"), "stream": True},
                          headers={"Authorization": "Bearer sk-us"}) as r:
                assert r.status_code == 200
                lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
            assert lines[-1] == "data: [DONE]"
            assert REASONING in "".join(lines)       # allowed user: passed through untouched
            r = c.post("/v1/chat/completions", json={"model": "frontier-1", "messages": _msg("x")},
                       headers={"Authorization": "Bearer sk-xx"})
            assert r.status_code == 403
            assert c.get("/healthz").json()["status"] == "ok"
        assert len(upstream.state.calls) == 1
    finally:
        gw_server.should_exit = True
        up_server.should_exit = True
    assert verify(tmp_path / "a.jsonl").entries == 2
