"""Pre-call screening shared by the gateway and the LiteLLM guardrail.

:meth:`Guard.screen` runs, for one validated chat request: access directives (Cedar, always
fail closed), the online scorer and the policy, and returns a :class:`Screening` that keeps
the **verdict** (what screening concluded) apart from the **action** (what is actually
applied). They differ when fail-open lets an unscored request through (verdict
``unavailable``, action ``allow``) and when a throttle verdict is under its rate (verdict
``throttle``, action whatever else applies). Blocking outcomes carry the documented HTTP
status and ``error.code`` of :data:`distillguard.respond.policy.ERROR_CODES`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from distillguard.respond._errors import StateStoreError
from distillguard.respond.directives import Decision, DirectiveSet, UserAttrs
from distillguard.respond.online import OnlineScore, OnlineScorer, RequestView, decide
from distillguard.respond.policy import ACTIONS, ERROR_CODES, Policy, PolicyDecision
from distillguard.respond.state import MemoryState

__all__ = ["Guard", "Screening", "content_hash", "decision_type", "request_view", "text_of"]

_MESSAGES = {"suspend": "this account is suspended pending review",
             "require_verification": "additional verification is required",
             "throttle": "rate limit for this account exceeded"}


def text_of(content: Any) -> str:
    """Text of an OpenAI message ``content`` (a string or an array of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def request_view(account_id: str, payload: dict[str, Any], ts: float,
                 account_created: float | None = None,
                 signup_channel: str | None = None, ip: str | None = None,
                 payment_fingerprint: str | None = None,
                 api_key_id: str | None = None) -> RequestView:
    """What the online scorer reads from a (validated) chat completion request, with the
    caller's address and payment fingerprint (infrastructure and card-sharing evidence)."""
    msgs = payload["messages"]
    texts = [text_of(m.get("content")) for m in msgs]
    users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
    last = users[-1] if users else len(msgs) - 1
    system = next((texts[i] for i, m in enumerate(msgs)
                   if m.get("role") in ("system", "developer")), "")
    return RequestView(
        account_id, payload["model"], ts, texts[last], system, len(users),
        sum(len(t) for j, t in enumerate(texts) if j != last),
        len(payload.get("tools") or []), payload.get("reasoning_effort"),
        account_created, signup_channel or None, ip or None, payment_fingerprint or None,
        api_key_id or None)


def content_hash(key: bytes, messages: Any) -> str:
    """``hmac-sha256:<hex>`` of the canonical JSON of ``messages`` under a deployment key.

    Keyed, so a reader of traces cannot confirm a guessed prompt without the key; equal
    prompts still hash equal within one deployment (campaign correlation).
    """
    data = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS, default=str)
    return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()


def decision_type(action: str) -> str:
    """OTel GenAI guardrail ``gen_ai.security.decision.type`` for an applied action."""
    if action in ("allow",):
        return "allow"
    if action == "log":
        return "audit"
    if action in ("cap_output", "strip_reasoning"):
        return "modify"
    return "deny"


@dataclass
class Screening:
    """Outcome of the pre-call checks for one request."""

    verdict: str                 # what screening concluded (policy action, "deny", "unavailable")
    action: str                  # what is applied ("allow", an output action, a block, "reject")
    status: int = 200            # 200: forward; otherwise answer with the error below
    code: str | None = None      # documented error.code when blocked
    message: str = ""
    etype: str = ""
    headers: dict[str, str] = field(default_factory=dict)     # e.g. Retry-After
    body: dict[str, Any] = field(default_factory=dict)        # extra error fields
    audit: dict[str, Any] = field(default_factory=dict)       # extra audit fields
    decision: PolicyDecision | None = None
    score: OnlineScore | None = None
    directive: Decision | None = None
    fail_open: bool = False
    local_state: bool = False    # scored on per-worker state (FallbackState during an outage)

    @property
    def fallback_audit(self) -> dict[str, Any]:
        """Audit fields marking a request scored on the per-worker fallback."""
        return {"state_fallback": True} if self.local_state else {}

    @property
    def blocked(self) -> bool:
        return self.status != 200

    @property
    def applied(self) -> tuple[str, ...]:
        """Every applied action (for ``X-Distillguard-Action``)."""
        if self.blocked:
            return (self.action,)
        d = self.decision
        acts = tuple(a for a in (d.actions if d else ()) if a not in ("allow", "throttle"))
        return acts or ("allow",)


class Guard:
    """Directives + online scorer + policy, with the state-store fail mode."""

    def __init__(self, policy: Policy, directives: DirectiveSet | None, scorer: OnlineScorer,
                 fail_mode: str = "closed") -> None:
        if fail_mode not in ("closed", "open"):
            raise ValueError(f"fail_mode must be 'closed' or 'open', got {fail_mode!r}")
        self.policy, self.scorer, self.fail_mode = policy, scorer, fail_mode
        self.directives = directives or DirectiveSet([])
        # RedisState.batched: float increments ride with the next command (fewer round trips).
        self._batched = getattr(scorer.state, "batched", contextlib.nullcontext)

    @property
    def inline(self) -> bool:
        """True when screening does no I/O (in-process state): run it on the event loop."""
        return isinstance(self.scorer.state, MemoryState)

    @property
    def usage_inline(self) -> bool:
        """True when :meth:`observe_usage` does no I/O: in-process state, or a store that
        queues usage for its next round trip (``defer_usage``: RedisState, and FallbackState
        over one, whose outage path is in process)."""
        st = self.scorer.state
        return self.inline or hasattr(getattr(st, "primary", st), "defer_usage")

    def screen(self, account_id: str, attrs: UserAttrs, view: RequestView) -> Screening:
        """Directives, then score and policy. Never raises for a state-store outage."""
        dd = self.directives.check(account_id, view.model, attrs, view.ts)
        if not dd.allowed:
            status, code = ERROR_CODES["directive"]
            return Screening(
                "deny", "deny", status, code,
                "access to this model is not permitted for this account", "access_denied",
                body={"reason": dd.code, "directives": list(dd.directive_ids)},
                audit={"directive_code": dd.code, "directives": list(dd.directive_ids),
                       "legal_references": list(dd.legal_references),
                       "errors": list(dd.errors)[:3]},
                directive=dd)
        try:
            with self._batched():
                s, d, over, retry = self._score(view)
        except StateStoreError as exc:
            if self.fail_mode == "closed":
                status, code = ERROR_CODES["state_unavailable"]
                return Screening("unavailable", "reject", status, code,
                                 "request screening is temporarily unavailable",
                                 "service_unavailable", headers={"Retry-After": "5"},
                                 audit={"fail_mode": "closed", "error": str(exc)[:200]},
                                 directive=dd)
            return Screening("unavailable", "allow",
                             decision=PolicyDecision("allow", actions=("allow",)),
                             directive=dd, fail_open=True)
        local = bool(getattr(self.scorer.state, "degraded", False))
        if d.blocking in ("suspend", "require_verification") or (d.blocking == "throttle"
                                                                  and over):
            status, code = ERROR_CODES[d.blocking]
            body: dict[str, Any] = {"rule": d.blocking_rule}
            if d.blocking == "require_verification" and d.params.get("verify_url"):
                body["verify_url"] = d.params["verify_url"]
            return Screening(d.action, d.blocking, status, code, _MESSAGES[d.blocking],
                             "distillguard_policy",
                             headers={"Retry-After": str(retry)} if d.blocking == "throttle"
                             else {}, body=body, decision=d, score=s, directive=dd,
                             local_state=local)
        applied = [a for a in d.actions if a != "throttle"] or ["allow"]
        return Screening(d.action, max(applied, key=ACTIONS.index), decision=d, score=s,
                         directive=dd, local_state=local)

    def _score(self, view: RequestView) -> tuple[OnlineScore, PolicyDecision, bool, int]:
        s = self.scorer.observe(view)
        d = decide(self.policy, self.scorer, s, view.account_id, view.ts)
        over, retry = False, 0
        if d.blocking == "throttle":
            rpm = int(d.params.get("rpm", 0))
            bucket = int(view.ts // 60)
            over = rpm == 0 or self.scorer.state.rate(view.account_id, bucket, 120) > rpm
            retry = int(d.params.get("retry_after_s", 60)) if rpm == 0 else \
                max(1, math.ceil((bucket + 1) * 60 - view.ts))
        return s, d, over, retry

    def observe_usage(self, account_id: str, usage: dict[str, Any] | None) -> None:
        """Feed response usage (long-output evidence); best effort."""
        if not usage:
            return
        try:
            with self._batched():
                self.scorer.observe_response(account_id, usage.get("prompt_tokens"),
                                             usage.get("completion_tokens"))
        except StateStoreError:
            pass
