"""distillguard as a LiteLLM proxy guardrail: the same screening, no second HTTP hop.

``config.yaml`` of the LiteLLM proxy (``pip install 'litellm[proxy]' distillguard``)::

    guardrails:
      - guardrail_name: distillguard
        litellm_params:
          guardrail: distillguard.gateway.litellm_guardrail.DistillguardGuardrail
          mode: [pre_call, post_call]
          default_on: true
          policy: /etc/distillguard/policy.yaml          # optional (default: packaged)
          directives: /etc/distillguard/directives       # file or directory, optional
          redis_url: os.environ/DISTILLGUARD_REDIS_URL   # optional (default: in-process)
          fail_mode: closed                              # or open
          audit: /var/log/distillguard/audit.jsonl       # optional

Hooks (LiteLLM's native ``CustomLogger`` hooks; ``apply_guardrail`` is deliberately not
implemented so the proxy calls these):

* ``async_pre_call_hook``: directives + online score + policy (:class:`Guard`). Blocked
  requests raise LiteLLM's ``ProxyException`` with the gateway's HTTP status, ``type`` and
  message; the documented ``distillguard_*`` code is in ``openai_code`` and in
  ``provider_specific_fields.distillguard_code``, ``Retry-After`` and ``X-Distillguard-*``
  go in the headers. ``cap_output`` lowers ``max_tokens`` in the returned request.
* ``async_post_call_success_hook``: strip reasoning (``reasoning_content``,
  ``thinking_blocks``, ``<think>`` blocks, reasoning-token breakdown) and feed usage to the
  scorer.
* ``async_post_call_streaming_iterator_hook``: the same on streamed chunks (``<think>``
  tags split across chunks included).

Account: the first non-empty of ``account_fields`` of LiteLLM's ``UserAPIKeyAuth``
(default ``user_id``, ``team_id``, ``token``). Attributes for directives and scoring
(``country``, ``nationality``, ``org``, ``signup_channel``, ``employee``,
``account_created``, and ``payment_fingerprint`` for card-sharing evidence) come from a
``distillguard`` mapping in the team's then the key's ``metadata`` (key wins); ``org``
defaults to LiteLLM's ``org_id``. The client address is the proxy's
``metadata.requester_ip_address``. The decision is kept in
the request's ``metadata["distillguard"]`` for the post-call hooks.

Without LiteLLM installed the class still imports (base ``object``) and raises
:class:`GuardrailBlocked` (same fields) so the hooks can be used and tested directly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from distillguard.gateway.auth import _epoch
from distillguard.respond._errors import RespondError, StateStoreError
from distillguard.respond.audit import AuditLog
from distillguard.respond.directives import DirectiveSet, UserAttrs, load_directives
from distillguard.respond.guard import Guard, Screening, request_view
from distillguard.respond.online import OnlineScorer
from distillguard.respond.output import REASONING_FIELDS, ThinkStripper, _strip_text, cap_max_tokens
from distillguard.respond.policy import Policy, load_policy
from distillguard.respond.state import MemoryState

__all__ = ["DistillguardGuardrail", "GuardrailBlocked"]

try:  # optional: LiteLLM proxy
    from litellm.integrations.custom_guardrail import CustomGuardrail as _Base
    from litellm.proxy._types import ProxyException as _ProxyException
    HAVE_LITELLM = True
except ImportError:  # pragma: no cover - exercised only without litellm
    _Base = object  # type: ignore[assignment,misc]
    _ProxyException = None
    HAVE_LITELLM = False

_EXTRA_FIELDS = ("thinking_blocks",)
_ATTRS = ("country", "nationality", "org", "signup_channel", "employee")


class GuardrailBlocked(Exception):
    """Raised by the pre-call hook when LiteLLM is not installed (same fields)."""

    def __init__(self, message: str, type: str, param: str | None, code: int,
                 headers: dict[str, str], openai_code: str,
                 provider_specific_fields: dict[str, Any]) -> None:
        super().__init__(message)
        self.message, self.type, self.param, self.code = message, type, param, code
        self.headers, self.openai_code = headers, openai_code
        self.provider_specific_fields = provider_specific_fields


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _drop(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return obj.pop(key, None) is not None
    if getattr(obj, key, None) is None:
        return False
    try:
        delattr(obj, key)
    except AttributeError:
        setattr(obj, key, None)
    return True


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)


def _strip_usage(usage: Any) -> None:
    details = _get(usage, "completion_tokens_details") if usage is not None else None
    if details is not None and _get(details, "reasoning_tokens") is not None:
        _set(details, "reasoning_tokens", None)


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"prompt_tokens": _get(usage, "prompt_tokens"),
            "completion_tokens": _get(usage, "completion_tokens")}


def _env(v: Any) -> Any:
    """Resolve LiteLLM's ``os.environ/NAME`` convention."""
    if isinstance(v, str) and v.startswith("os.environ/"):
        import os
        return os.environ.get(v.split("/", 1)[1]) or None
    return v


class DistillguardGuardrail(_Base):  # type: ignore[misc,valid-type]
    """LiteLLM ``CustomGuardrail`` running distillguard's screening and output actions."""

    use_native_lifecycle_hooks = True

    def __init__(self, policy: str | Policy | None = None,
                 directives: str | list[str] | DirectiveSet | None = None,
                 redis_url: str | None = None, fail_mode: str = "closed",
                 audit: str | AuditLog | None = None, scorer: OnlineScorer | None = None,
                 account_fields: list[str] | tuple[str, ...] = ("user_id", "team_id", "token"),
                 **kwargs: Any) -> None:
        # LiteLLM skips a guardrail whose constructor raises ValueError/TypeError and starts
        # without it; configuration errors here are RespondError so the proxy fails to start.
        policy, directives, redis_url, audit = (_env(v) for v in (policy, directives,
                                                                  redis_url, audit))
        if fail_mode not in ("closed", "open"):
            raise RespondError(f"distillguard: fail_mode must be 'closed' or 'open', "
                               f"got {fail_mode!r}")
        pol = policy if isinstance(policy, Policy) else load_policy(policy)
        if isinstance(directives, DirectiveSet) or directives is None:
            ds = directives
        else:
            ds = load_directives([Path(p) for p in ([directives] if isinstance(directives, str)
                                                    else directives)])
        if scorer is None:
            from distillguard.respond.state import RedisState
            scorer = OnlineScorer(RedisState.from_url(redis_url) if redis_url else MemoryState())
        self.guard = Guard(pol, ds, scorer, fail_mode)
        self.audit = AuditLog(audit) if isinstance(audit, str | Path) else audit
        self.account_fields = tuple(account_fields)
        if HAVE_LITELLM:
            kwargs.setdefault("guardrail_name", "distillguard")
            super().__init__(**kwargs)
        else:  # pragma: no cover
            self.guardrail_name = kwargs.get("guardrail_name", "distillguard")

    # ------------------------------------------------------------------ caller
    def _account(self, auth: Any) -> tuple[str, UserAttrs, float | None, str | None]:
        account = next((str(v) for f in self.account_fields if (v := _get(auth, f))),
                       "anonymous")
        info: dict[str, Any] = {}
        for md in (_get(auth, "team_metadata"), _get(auth, "metadata")):
            if isinstance(md, Mapping) and isinstance(md.get("distillguard"), Mapping):
                info.update(md["distillguard"])
        if not info.get("org") and _get(auth, "org_id"):
            info["org"] = _get(auth, "org_id")
        attrs = UserAttrs.from_mapping({k: info.get(k) for k in _ATTRS})
        pf = info.get("payment_fingerprint")
        return account, attrs, _epoch(info.get("account_created")), str(pf) if pf else None

    async def _screen(self, account: str, attrs: UserAttrs, data: dict[str, Any],
                      created: float | None, ts: float, payment: str | None = None,
                      api_key_id: str | None = None) -> Screening:
        # The client address the proxy recorded (LiteLLM: metadata.requester_ip_address).
        ip = None
        for md in (data.get("metadata"), data.get("litellm_metadata")):
            if isinstance(md, Mapping) and md.get("requester_ip_address"):
                ip = str(md["requester_ip_address"])
                break
        view = request_view(account, data, ts, created, attrs.signup_channel, ip, payment,
                            api_key_id)
        if self.guard.inline:
            return self.guard.screen(account, attrs, view)
        import asyncio
        return await asyncio.to_thread(self.guard.screen, account, attrs, view)

    # ------------------------------------------------------------------ hooks
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: Any) -> dict | None:
        """Directives + score + policy before the call; raise on a block, cap max_tokens."""
        if not isinstance(data.get("messages"), list) or not data.get("model"):
            return data                      # not a chat completion: nothing to screen
        rid = "dg-" + uuid.uuid4().hex
        ts = time.time()
        account, attrs, created, payment = self._account(user_api_key_dict)
        token = _get(user_api_key_dict, "token")          # LiteLLM's hashed key
        sc = await self._screen(account, attrs, data, created, ts, payment,
                                str(token) if token else None)
        d = sc.decision
        hdr = {"X-Distillguard-Request-Id": rid,
               "X-Distillguard-Policy-Version": self.guard.policy.version,
               "X-Distillguard-Action": ",".join(a for a in sc.applied if a != "allow")
               or "allow"}
        if self.audit is not None:
            self.audit.append("decision", request_id=rid, account_id=account,
                              model=data.get("model"), status=sc.status, action=sc.action,
                              verdict=sc.verdict, actions=list(d.actions) if d else [],
                              rules=list(d.rules) if d else [],
                              score=round(sc.score.score, 6) if sc.score else None,
                              reasons=sc.score.reasons if sc.score else [],
                              policy_version=self.guard.policy.version, via="litellm",
                              fail_open=sc.fail_open, **sc.audit)
        if sc.blocked:
            fields = {"distillguard_code": sc.code, **sc.body}
            args = dict(message=sc.message, type=sc.etype, param=None, code=sc.status,
                        headers={**hdr, **sc.headers}, openai_code=sc.code,
                        provider_specific_fields=fields)
            if _ProxyException is not None:
                raise _ProxyException(**args)
            raise GuardrailBlocked(**args)  # pragma: no cover
        assert d is not None
        meta = data.get("metadata")
        if not isinstance(meta, dict):
            meta = data["metadata"] = {}
        meta["distillguard"] = {"request_id": rid, "account_id": account,
                                "strip_reasoning": d.strip_reasoning,
                                "max_tokens": d.max_tokens, "action": sc.action,
                                "verdict": sc.verdict, "fail_open": sc.fail_open}
        if d.max_tokens is not None:
            cap_max_tokens(data, d.max_tokens)
        return data

    @staticmethod
    def _state(data: Mapping[str, Any] | None) -> dict[str, Any]:
        for k in ("metadata", "litellm_metadata"):
            md = (data or {}).get(k)
            if isinstance(md, Mapping) and isinstance(md.get("distillguard"), Mapping):
                return dict(md["distillguard"])
        return {}

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any,
                                           response: Any) -> Any:
        """Strip reasoning when the policy said so; feed usage to the online scorer."""
        st = self._state(data)
        if not st:
            return response
        if st.get("strip_reasoning"):
            for ch in _get(response, "choices") or []:
                msg = _get(ch, "message")
                if msg is None:
                    continue
                for f in (*REASONING_FIELDS, *_EXTRA_FIELDS):
                    _drop(msg, f)
                c = _get(msg, "content")
                if isinstance(c, str) and "<think>" in c:
                    _set(msg, "content", _strip_text(c).lstrip("\n"))
            _strip_usage(_get(response, "usage"))
        await self._usage(st, _usage_dict(_get(response, "usage")))
        return response

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: Any,
                                                      response: Any, request_data: dict
                                                      ) -> AsyncIterator[Any]:
        """Strip reasoning from streamed chunks (tags split across chunks included)."""
        st = self._state(request_data)
        strip = bool(st.get("strip_reasoning"))
        think: dict[int, ThinkStripper] = {}
        usage = None
        async for chunk in response:
            if _get(chunk, "usage") is not None:
                usage = _get(chunk, "usage")
                if strip:
                    _strip_usage(usage)
            if strip:
                for ch in _get(chunk, "choices") or []:
                    delta = _get(ch, "delta")
                    if delta is None:
                        continue
                    for f in (*REASONING_FIELDS, *_EXTRA_FIELDS):
                        _drop(delta, f)
                    ts = think.setdefault(int(_get(ch, "index") or 0), ThinkStripper())
                    c = _get(delta, "content")
                    if isinstance(c, str):
                        new = ts.feed(c)
                        if _get(ch, "finish_reason"):
                            new += ts.flush()
                        _set(delta, "content", new)
                    elif _get(ch, "finish_reason"):
                        tail = ts.flush()
                        if tail:
                            _set(delta, "content", tail)
            yield chunk
        if st:
            await self._usage(st, _usage_dict(usage))

    async def _usage(self, st: Mapping[str, Any], usage: dict[str, Any] | None) -> None:
        if not usage or not st.get("account_id"):
            return
        try:
            if self.guard.usage_inline:      # no I/O: in process, or queued (Redis)
                self.guard.observe_usage(st["account_id"], usage)
            else:
                import asyncio
                await asyncio.to_thread(self.guard.observe_usage, st["account_id"], usage)
        except StateStoreError:  # pragma: no cover - observe_usage already swallows
            pass
