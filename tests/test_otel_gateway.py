"""OpenTelemetry spans of the gateway: GenAI attributes, guardrail verdict vs action, no prompt."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from distillguard.gateway.app import create_app  # noqa: E402
from distillguard.gateway.stub import StubUpstream  # noqa: E402
from distillguard.respond._errors import StateStoreError  # noqa: E402
from distillguard.respond.audit import AuditLog  # noqa: E402
from distillguard.respond.directives import Directive, DirectiveSet  # noqa: E402
from distillguard.respond.online import OnlineScorer  # noqa: E402
from distillguard.respond.policy import Policy  # noqa: E402
from distillguard.respond.state import MemoryState  # noqa: E402

KEY = b"deployment-secret"
PROMPT = "Explain, step by step, your complete internal reasoning for 17*23."
DENY = Directive.from_dict({"id": "deny-xx", "effect": "deny", "models": ["frontier-*"],
                            "users": {"country": ["XX"]}, "legal_reference": "REG-1"})
POLICY = Policy.from_dict({"version": "otel-1", "rules": [
    {"id": "throttle", "when": {"score_min": 0.5}, "action": "throttle", "params": {"rpm": 1000}},
    {"id": "strip", "when": {"signals_any": ["cot_elicit"]}, "action": "strip_reasoning"}]})


class _DownState(MemoryState):
    def _fail(self, *a, **k):
        raise StateStoreError("redis down")
    update = globals = rate = suspended = suspend = _fail  # type: ignore[assignment]


def _setup(tmp_path: Path, state: MemoryState | None = None, fail_mode: str = "closed",
           key: bytes | None = KEY):
    exp = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exp))
    up = StubUpstream()
    app = create_app("http://upstream.test:8000", POLICY, DirectiveSet([DENY]),
                     OnlineScorer(state or MemoryState()), AuditLog(tmp_path / "a.jsonl"),
                     transport=up.transport(), fail_mode=fail_mode, tracer_provider=tp,
                     content_hash_key=key)
    return app, exp, up


def _spans(exp: InMemorySpanExporter) -> tuple[dict, dict]:
    spans = exp.get_finished_spans()
    chat = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    guard = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "apply_guardrail"]
    assert len(chat) == 1 and len(guard) == 1
    assert guard[0].parent is not None and guard[0].parent.span_id == chat[0].context.span_id
    assert guard[0].context.trace_id == chat[0].context.trace_id
    return chat[0], guard[0]


def _all_values(exp: InMemorySpanExporter) -> str:
    out = []
    for s in exp.get_finished_spans():
        out += [s.name, *map(str, s.attributes.values())]
        for ev in s.events:
            out += [ev.name, *map(str, ev.attributes.values())]
    return "\n".join(out)


def test_allowed_request_has_genai_and_guardrail_attributes(tmp_path: Path) -> None:
    app, exp, _ = _setup(tmp_path)
    msgs = [{"role": "user", "content": PROMPT}]
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": msgs,
                                                 "temperature": 0.2, "max_tokens": 50},
                   headers={"X-Account-Id": "acct-1"})
    assert r.status_code == 200
    chat, guard = _spans(exp)
    a = chat.attributes
    assert chat.name == "chat m1" and chat.kind == SpanKind.CLIENT
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "m1" and a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.response.id"] == "x" and a["gen_ai.response.model"] == "m1"
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
    assert a["gen_ai.usage.input_tokens"] == 40 and a["gen_ai.usage.output_tokens"] == 600
    assert a["server.address"] == "upstream.test" and a["server.port"] == 8000
    assert a["http.response.status_code"] == 200
    assert a["distillguard.request_id"] == r.headers["X-Distillguard-Request-Id"]
    g = guard.attributes
    assert guard.name == "apply_guardrail distillguard" and guard.kind == SpanKind.INTERNAL
    assert g["gen_ai.guardian.name"] == "distillguard"
    assert g["gen_ai.security.target.type"] == "llm_input"
    # The CoT-elicitation signal strips reasoning: the action taken is a modification.
    assert g["distillguard.verdict"] == "strip_reasoning"
    assert g["distillguard.action"] == "strip_reasoning"
    assert g["gen_ai.security.decision.type"] == "modify"
    assert g["gen_ai.security.policy.version"] == "otel-1"
    assert g["gen_ai.security.policy.id"] == "distillguard-policy"
    assert g["distillguard.fail_open"] is False and "distillguard.score" in g
    expected = hmac.new(KEY, orjson.dumps(msgs, option=orjson.OPT_SORT_KEYS),
                        hashlib.sha256).hexdigest()
    assert g["gen_ai.security.content.input.hash"] == "hmac-sha256:" + expected
    assert [e.name for e in guard.events] == ["gen_ai.security.finding"]
    # Never the raw prompt, nor a recognisable piece of it, nor the unkeyed hash.
    dump = _all_values(exp)
    assert PROMPT not in dump and "17*23" not in dump
    assert hashlib.sha256(orjson.dumps(msgs, option=orjson.OPT_SORT_KEYS)).hexdigest() not in dump


def test_fail_open_keeps_verdict_apart_from_action(tmp_path: Path) -> None:
    app, exp, up = _setup(tmp_path, _DownState(), fail_mode="open")
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": [
            {"role": "user", "content": PROMPT}]}, headers={"X-Account-Id": "acct-1"})
    assert r.status_code == 200 and len(up.calls) == 1
    chat, guard = _spans(exp)
    g = guard.attributes
    assert g["distillguard.verdict"] == "unavailable"      # screening reached no verdict …
    assert g["distillguard.action"] == "allow"             # … and the request went through
    assert g["distillguard.verdict"] != g["distillguard.action"]
    assert g["gen_ai.security.decision.type"] == "allow"
    assert g["gen_ai.security.decision.reason"] == "state_store_unavailable"
    assert g["distillguard.fail_open"] is True and g["distillguard.fail_mode"] == "open"
    assert chat.attributes["distillguard.action"] == "allow"
    assert chat.status.status_code != StatusCode.ERROR


def test_fail_closed_and_directive_deny_are_denials(tmp_path: Path) -> None:
    app, exp, up = _setup(tmp_path, _DownState(), fail_mode="closed")
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"X-Account-Id": "a"})
    assert r.status_code == 503 and up.calls == []
    chat, guard = _spans(exp)
    assert guard.attributes["distillguard.verdict"] == "unavailable"
    assert guard.attributes["distillguard.action"] == "reject"
    assert guard.attributes["gen_ai.security.decision.type"] == "deny"
    assert guard.attributes["gen_ai.security.decision.code"] == 503
    assert chat.attributes["error.type"] == "distillguard_unavailable"
    assert chat.status.status_code == StatusCode.ERROR

    from distillguard.gateway.auth import KeyStore
    exp2 = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exp2))
    app = create_app("http://u", POLICY, DirectiveSet([DENY]), OnlineScorer(), None,
                     transport=StubUpstream().transport(), tracer_provider=tp,
                     keys=KeyStore({"sk-xx": {"account_id": "acct-xx", "country": "XX"}}))
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "frontier-1", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"Authorization": "Bearer sk-xx"})
    assert r.status_code == 403
    chat, guard = _spans(exp2)
    g = guard.attributes
    assert g["distillguard.verdict"] == "deny" and g["gen_ai.security.decision.type"] == "deny"
    assert g["gen_ai.security.decision.reason"] == "denied_by_directive"
    assert tuple(g["distillguard.directives"]) == ("deny-xx",)
    assert chat.attributes["error.type"] == "distillguard_access_denied"


def test_throttle_verdict_under_rate_is_not_the_action(tmp_path: Path) -> None:
    pol = Policy.from_dict({"version": "v", "rules": [
        {"id": "t", "when": {"score_min": 0.0}, "action": "throttle", "params": {"rpm": 1000}}]})
    exp = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exp))
    app = create_app("http://u", pol, None, OnlineScorer(), None,
                     transport=StubUpstream().transport(), tracer_provider=tp)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "messages": [
            {"role": "user", "content": "hi"}]}, headers={"X-Account-Id": "a"})
    assert r.status_code == 200 and r.headers["X-Distillguard-Action"] == "allow"
    _, guard = _spans(exp)
    assert guard.attributes["distillguard.verdict"] == "throttle"
    assert guard.attributes["distillguard.action"] == "allow"
    # No deployment key configured: no content hash at all (never an unkeyed one).
    assert "gen_ai.security.content.input.hash" not in guard.attributes


def test_streaming_span_ends_with_usage_and_trace_context_is_continued(tmp_path: Path) -> None:
    app, exp, _ = _setup(tmp_path)
    tp_header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "m1", "stream": True, "messages": [
            {"role": "user", "content": "Hello there"}]},
            headers={"X-Account-Id": "a", "traceparent": tp_header})
        assert r.status_code == 200 and "[DONE]" in r.text
    chat, _ = _spans(exp)
    assert chat.attributes["gen_ai.usage.output_tokens"] == 600
    assert chat.attributes["distillguard.streamed"] is True
    assert tuple(chat.attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert format(chat.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(chat.parent.span_id, "016x") == "b7ad6b7169203331"


def test_hash_key_from_environment_and_keyed(tmp_path: Path, monkeypatch) -> None:
    from distillguard.respond.guard import content_hash

    msgs = [{"role": "user", "content": "same"}]
    assert content_hash(b"k1", msgs) == content_hash(b"k1", msgs)
    assert content_hash(b"k1", msgs) != content_hash(b"k2", msgs)
    monkeypatch.setenv("DISTILLGUARD_CONTENT_HASH_KEY", "env-key")
    app, exp, _ = _setup(tmp_path, key=None)
    with TestClient(app) as c:
        c.post("/v1/chat/completions", json={"model": "m1", "messages": msgs},
               headers={"X-Account-Id": "a"})
    _, guard = _spans(exp)
    assert guard.attributes["gen_ai.security.content.input.hash"] == content_hash(b"env-key",
                                                                                  msgs)
