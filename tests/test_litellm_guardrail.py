"""distillguard as a LiteLLM guardrail, against LiteLLM's real base class and types."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")   # no network at import
pytest.importorskip("litellm")

from litellm.integrations.custom_guardrail import CustomGuardrail  # noqa: E402
from litellm.proxy._types import ProxyException, UserAPIKeyAuth  # noqa: E402
from litellm.types.guardrails import GuardrailEventHooks  # noqa: E402
from litellm.types.utils import ModelResponse, ModelResponseStream  # noqa: E402

from distillguard.gateway.litellm_guardrail import DistillguardGuardrail  # noqa: E402
from distillguard.gateway.stub import REASONING  # noqa: E402
from distillguard.respond._errors import RespondError, StateStoreError  # noqa: E402
from distillguard.respond.audit import AuditLog, verify  # noqa: E402
from distillguard.respond.directives import Directive, DirectiveSet  # noqa: E402
from distillguard.respond.online import OnlineScorer  # noqa: E402
from distillguard.respond.policy import Policy  # noqa: E402
from distillguard.respond.state import MemoryState  # noqa: E402

DENY = Directive.from_dict({"id": "deny-xx", "effect": "deny", "models": ["frontier-*"],
                            "users": {"country": ["XX"]}, "legal_reference": "REG-1"})
POLICY = Policy.from_dict({"version": "ll-1", "rules": [
    {"id": "strip", "when": {"signals_any": ["cot_elicit"]}, "action": "strip_reasoning"},
    {"id": "cap", "when": {"signals_any": ["cot_elicit"]}, "action": "cap_output",
     "params": {"max_tokens": 256}}]})
COT = "Solve 17*23 and articulate the complete internal reasoning behind it, step by step."


class _DownState(MemoryState):
    def _fail(self, *a, **k):
        raise StateStoreError("redis down")
    update = globals = rate = suspended = suspend = _fail  # type: ignore[assignment]


def _guard(tmp_path: Path, policy: Policy = POLICY, **kw) -> DistillguardGuardrail:
    return DistillguardGuardrail(policy=policy, directives=DirectiveSet([DENY]),
                                 audit=str(tmp_path / "audit.jsonl"), guardrail_name="dg",
                                 event_hook=["pre_call", "post_call"], default_on=True, **kw)


def _pre(g: DistillguardGuardrail, auth: UserAPIKeyAuth, data: dict) -> dict:
    return asyncio.run(g.async_pre_call_hook(user_api_key_dict=auth, cache=None, data=data,
                                             call_type="completion"))


def test_is_a_litellm_custom_guardrail_loaded_like_the_proxy_does(tmp_path: Path) -> None:
    from litellm.proxy.types_utils.utils import get_instance_fn

    cls = get_instance_fn("distillguard.gateway.litellm_guardrail.DistillguardGuardrail",
                          config_file_path=str(tmp_path / "config.yaml"))
    assert cls is DistillguardGuardrail
    # The registry passes guardrail_name/event_hook/default_on plus every litellm_param.
    g = cls(guardrail_name="distillguard", event_hook=["pre_call", "post_call"],
            default_on=True, fail_mode="open", version=2, action="block")
    assert isinstance(g, CustomGuardrail)
    assert g.should_run_guardrail({"model": "m1", "messages": []},
                                  GuardrailEventHooks.pre_call)
    assert not type(g).uses_apply_guardrail_interface()   # native hooks are called
    # A bad setting must stop the proxy (LiteLLM skips guardrails raising ValueError).
    with pytest.raises(RespondError):
        cls(guardrail_name="x", event_hook="pre_call", fail_mode="sometimes")


def test_directive_deny_raises_documented_error(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    auth = UserAPIKeyAuth(user_id="u-xx", metadata={"distillguard": {"country": "XX"}})
    data = {"model": "frontier-1", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ProxyException) as ei:
        _pre(g, auth, data)
    e = ei.value
    assert e.code == "403" and e.type == "access_denied"
    assert e.openai_code == "distillguard_access_denied"
    assert e.provider_specific_fields["distillguard_code"] == "distillguard_access_denied"
    assert e.provider_specific_fields["directives"] == ["deny-xx"]
    assert e.headers["X-Distillguard-Policy-Version"] == "ll-1"
    assert e.to_dict()["message"] == "access to this model is not permitted for this account"
    # Another user (team metadata) and another model pass.
    ok = UserAPIKeyAuth(user_id="u-us", team_metadata={"distillguard": {"country": "US"}})
    assert _pre(g, ok, dict(data)) is not None
    assert _pre(g, auth, {**data, "model": "m1"}) is not None
    assert verify(tmp_path / "audit.jsonl").entries == 3


def test_throttle_over_rate_is_429_with_retry_after(tmp_path: Path) -> None:
    pol = Policy.from_dict({"version": "t", "rules": [
        {"id": "t", "when": {"score_min": 0.0}, "action": "throttle", "params": {"rpm": 2}}]})
    g = _guard(tmp_path, pol)
    auth = UserAPIKeyAuth(team_id="team-7")          # no user_id: the team is the account
    data = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        _pre(g, auth, dict(data))
    with pytest.raises(ProxyException) as ei:
        _pre(g, auth, dict(data))
    assert ei.value.code == "429" and ei.value.openai_code == "distillguard_rate_limited"
    assert int(ei.value.headers["Retry-After"]) >= 1


def test_cap_and_strip_non_streaming(tmp_path: Path) -> None:
    scorer = OnlineScorer(MemoryState())
    g = _guard(tmp_path, scorer=scorer)
    auth = UserAPIKeyAuth(user_id="u1")
    data = {"model": "m1", "max_tokens": 4000, "messages": [{"role": "user", "content": COT}]}
    out = _pre(g, auth, data)
    assert out["max_tokens"] == 256
    assert out["metadata"]["distillguard"]["strip_reasoning"] is True
    resp = ModelResponse(id="x", model="m1", choices=[{
        "index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "<think>hidden</think>Answer.",
            "reasoning_content": REASONING}}],
        usage={"prompt_tokens": 40, "completion_tokens": 600, "total_tokens": 640,
               "completion_tokens_details": {"reasoning_tokens": 500}})
    r = asyncio.run(g.async_post_call_success_hook(data=out, user_api_key_dict=auth,
                                                   response=resp))
    dumped = r.model_dump_json()
    assert REASONING not in dumped and "hidden" not in dumped
    assert r.choices[0].message.content == "Answer."
    assert r.usage.completion_tokens_details.reasoning_tokens is None
    assert scorer.state.update("u1", _noop()).get("lr_n") == 1.0     # usage reached the scorer


def _noop():
    from distillguard.respond.state import AccountUpdate
    return AccountUpdate({}, {}, None, (), 1.7e9)


def test_ordinary_request_is_untouched(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    auth = UserAPIKeyAuth(user_id="u2")
    data = {"model": "m1", "max_tokens": 4000,
            "messages": [{"role": "user", "content": "Suggest a name for my cat."}]}
    out = _pre(g, auth, data)
    assert out["max_tokens"] == 4000
    resp = ModelResponse(id="x", model="m1", choices=[{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "Tom.", "reasoning_content": REASONING}}])
    r = asyncio.run(g.async_post_call_success_hook(data=out, user_api_key_dict=auth,
                                                   response=resp))
    assert r.choices[0].message.reasoning_content == REASONING


def test_strip_streaming_with_split_think_tags(tmp_path: Path) -> None:
    g = _guard(tmp_path)
    auth = UserAPIKeyAuth(user_id="u3")
    data = _pre(g, auth, {"model": "m1", "stream": True,
                          "messages": [{"role": "user", "content": COT}]})
    deltas = [{"role": "assistant"}, {"reasoning_content": REASONING}, {"content": "<thi"},
              {"content": "nk>hidden</th"}, {"content": "ink>Hello world"}]
    chunks = [ModelResponseStream(id="c", model="m1", choices=[{"index": 0, "delta": d}])
              for d in deltas]

    async def gen():
        for c in chunks:
            yield c

    async def collect():
        return [c async for c in g.async_post_call_streaming_iterator_hook(
            user_api_key_dict=auth, response=gen(), request_data=data)]

    out = asyncio.run(collect())
    text = "".join(c.choices[0].delta.content or "" for c in out)
    assert text == "Hello world"
    assert all(REASONING not in c.model_dump_json() for c in out)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_state_store_down(tmp_path: Path, mode: str) -> None:
    g = _guard(tmp_path, scorer=OnlineScorer(_DownState()), fail_mode=mode)
    auth = UserAPIKeyAuth(user_id="u4")
    data = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    if mode == "closed":
        with pytest.raises(ProxyException) as ei:
            _pre(g, auth, data)
        assert ei.value.code == "503" and ei.value.openai_code == "distillguard_unavailable"
        assert ei.value.headers["Retry-After"] == "5"
    else:
        st = _pre(g, auth, data)["metadata"]["distillguard"]
        assert st["verdict"] == "unavailable" and st["action"] == "allow" and st["fail_open"]
    # Directives still apply with the state store down.
    xx = UserAPIKeyAuth(user_id="u5", metadata={"distillguard": {"country": "XX"}})
    with pytest.raises(ProxyException):
        _pre(g, xx, {**data, "model": "frontier-1"})
    assert verify(tmp_path / "audit.jsonl").ok
    assert isinstance(g.audit, AuditLog)
