"""Request-path optimisations keep their semantics: directive cache, aiohttp upstream."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from distillguard.gateway.app import create_app
from distillguard.gateway.stub import StubUpstream
from distillguard.respond.audit import AuditLog, verify
from distillguard.respond.directives import Directive, DirectiveSet, UserAttrs
from distillguard.respond.online import OnlineScorer
from distillguard.respond.policy import load_policy

T0 = datetime(2030, 1, 1, tzinfo=UTC).timestamp()


def test_directive_cache_respects_time_boundaries_and_attributes() -> None:
    d = Directive.from_dict({"id": "later", "effect": "deny", "models": ["m*"],
                             "users": {"country": ["XX"]}, "legal_reference": "R",
                             "effective_from": "2030-01-01T00:00:00Z"})
    ds = DirectiveSet([d])
    xx, us = UserAttrs(country="XX"), UserAttrs(country="US")
    for _ in range(2):                                  # second round is served from cache
        assert ds.check("a", "m1", xx, T0 - 1).allowed
        assert not ds.check("a", "m1", xx, T0).allowed
        assert not ds.check("b", "m1", xx, T0 + 5).allowed
        assert ds.check("a", "m1", us, T0).allowed
        assert ds.check("a", "other", xx, T0).allowed
    assert ds._cache
    assert ds.check("a", "m1", xx, T0).directive_ids == ("later",)


def test_directive_with_raw_condition_is_never_cached() -> None:
    d = Directive.from_dict({"id": "c", "effect": "deny", "models": ["*"],
                             "legal_reference": "R", "condition": 'principal == User::"bad"'})
    ds = DirectiveSet([d])
    assert not ds.check("bad", "m1", UserAttrs()).allowed
    assert ds.check("good", "m1", UserAttrs()).allowed
    assert not ds._cache


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_upstream_is_502_on_the_default_client(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    app = create_app(f"http://127.0.0.1:{_closed_port()}", load_policy(), None, OnlineScorer(),
                     AuditLog(tmp_path / "a.jsonl"))
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"X-Account-Id": "a"})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "distillguard_upstream_error"
    assert verify(tmp_path / "a.jsonl").ok


def test_mock_transport_still_uses_httpx(tmp_path: Path) -> None:
    up = StubUpstream()
    app = create_app("http://u", load_policy(), None, OnlineScorer(), None,
                     transport=up.transport())
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"X-Account-Id": "a"})
    assert r.status_code == 200 and len(up.calls) == 1


def test_chat_fast_path_answers_like_the_framework_route(tmp_path: Path) -> None:
    """The chat route skips FastAPI's layers unless middleware is added; answers match."""
    def answers(app) -> list[tuple[int, str | None, str | None]]:
        with TestClient(app) as c:
            out = []
            for body in (b"{not json", b'{"model": "m1"}',
                         b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}]}'):
                r = c.post("/v1/chat/completions", content=body,
                           headers={"X-Account-Id": "a", "Content-Type": "application/json"})
                code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
                out.append((r.status_code, code, r.headers.get("x-mw")))
            return out

    def make():
        return create_app("http://u", load_policy(), None, OnlineScorer(),
                          AuditLog(tmp_path / "a.jsonl"), transport=StubUpstream().transport())

    fast = answers(make())
    slow_app = make()

    @slow_app.middleware("http")
    async def mark(request, call_next):
        resp = await call_next(request)
        resp.headers["x-mw"] = "1"
        return resp

    slow = answers(slow_app)
    assert [a[:2] for a in fast] == [a[:2] for a in slow] == [
        (400, "invalid_request"), (400, "invalid_request"), (200, None)]
    assert all(a[2] is None for a in fast) and all(a[2] == "1" for a in slow)
    assert verify(tmp_path / "a.jsonl").ok


def test_freeze_gc_at_startup(tmp_path: Path) -> None:
    import gc

    app = create_app("http://u", load_policy(), None, OnlineScorer(), None,
                     transport=StubUpstream().transport(), freeze_gc=True)
    try:
        with TestClient(app):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
