"""OpenTelemetry spans for the gateway: GenAI semantic conventions plus guardrail attributes.

Optional: without the ``opentelemetry`` API installed, or with no SDK TracerProvider
configured (the API's default is a no-op), :class:`Telemetry` costs a few microseconds per
request and records nothing. Configure the SDK as usual (``opentelemetry-instrument``, or
``trace.set_tracer_provider`` before the app starts) to export spans.

Per chat request, two spans:

* ``chat {model}`` (kind CLIENT: the call to the model, GenAI client-span conventions):
  ``gen_ai.operation.name=chat``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.request.max_tokens`` / ``temperature`` / ``top_p`` (after any cap),
  ``gen_ai.response.id`` / ``model`` / ``finish_reasons``, ``gen_ai.usage.input_tokens`` /
  ``output_tokens``, ``server.address`` / ``server.port`` (upstream),
  ``http.response.status_code``, ``error.type`` (the documented ``error.code`` when the
  gateway answered with an error), ``distillguard.request_id``, ``distillguard.action``.
* its child ``apply_guardrail distillguard`` (INTERNAL), following the GenAI security-guardian
  proposal (``apply_guardrail`` operation, ``gen_ai.guardian.*``, ``gen_ai.security.*``;
  development status upstream, names may change): ``gen_ai.security.target.type=llm_input``,
  ``gen_ai.security.decision.type`` (allow / audit / modify / deny: the action *taken*),
  ``gen_ai.security.decision.code`` (HTTP status when blocked),
  ``gen_ai.security.decision.reason`` (low-cardinality: rule id or directive code),
  ``gen_ai.security.policy.id`` / ``name`` / ``version``,
  ``gen_ai.security.content.input.hash`` (``hmac-sha256:<hex>`` of the canonical messages
  under the deployment key; omitted when no key is configured; the raw prompt is never
  recorded), and ``distillguard.verdict`` (what screening concluded) kept apart from
  ``distillguard.action`` (what was applied), ``distillguard.actions``,
  ``distillguard.rules``, ``distillguard.score``, ``distillguard.fail_open``,
  ``distillguard.fail_mode``, ``distillguard.directives``. A ``gen_ai.security.finding``
  event (``risk.category=model_distillation``, ``risk.score``, ``risk.severity``) is added
  when the verdict is not ``allow``.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlsplit

from distillguard import __version__
from distillguard.respond.guard import Screening, content_hash, decision_type

__all__ = ["HASH_KEY_ENV", "Telemetry"]

HASH_KEY_ENV = "DISTILLGUARD_CONTENT_HASH_KEY"

try:  # optional dependency
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.trace import SpanKind as _Kind
    from opentelemetry.trace import Status as _Status
    from opentelemetry.trace import StatusCode as _Code
except ImportError:  # pragma: no cover - exercised only without the extra
    _trace = None


def _severity(score: float | None) -> str:
    if score is None:
        return "none"
    return "critical" if score >= 0.9 else "high" if score >= 0.7 else \
        "medium" if score >= 0.4 else "low" if score > 0 else "none"


class Telemetry:
    """Creates the request and guardrail spans; a no-op when tracing is not configured."""

    def __init__(self, upstream_url: str, policy_version: str, *,
                 tracer_provider: Any = None, hash_key: bytes | str | None = None,
                 provider_name: str = "openai", policy_id: str = "distillguard-policy",
                 fail_mode: str = "closed") -> None:
        self.tracer = None
        if _trace is not None:
            self.tracer = (tracer_provider.get_tracer("distillguard.gateway", __version__)
                           if tracer_provider is not None
                           else _trace.get_tracer("distillguard.gateway", __version__))
        key = hash_key if hash_key is not None else os.environ.get(HASH_KEY_ENV)
        self.hash_key = key.encode() if isinstance(key, str) else key
        u = urlsplit(upstream_url)
        self._server = {"server.address": u.hostname or "",
                        "server.port": u.port or (443 if u.scheme == "https" else 80)}
        self.provider_name, self.policy_id = provider_name, policy_id
        self.policy_version, self.fail_mode = policy_version, fail_mode

    # ---------------------------------------------------------------- request span
    def start(self, headers: Any, rid: str) -> Any:
        """Start the request span (parent: an incoming ``traceparent``), or return None."""
        if self.tracer is None:
            return None
        ctx = _propagate.extract(headers) if "traceparent" in headers else None
        span = self.tracer.start_span("chat", context=ctx, kind=_Kind.CLIENT)
        if not span.is_recording():
            return None
        span.set_attributes({"gen_ai.operation.name": "chat",
                             "gen_ai.provider.name": self.provider_name,
                             "distillguard.request_id": rid, **self._server})
        return span

    def request(self, span: Any, payload: dict[str, Any], account_id: str | None) -> None:
        if span is None:
            return
        model = payload.get("model")
        span.update_name(f"chat {model}")
        attrs: dict[str, Any] = {"gen_ai.request.model": model}
        for k, a in (("temperature", "gen_ai.request.temperature"),
                     ("top_p", "gen_ai.request.top_p")):
            v = payload.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                attrs[a] = v
        if account_id:
            attrs["distillguard.account_id"] = account_id
        span.set_attributes(attrs)

    def guardrail(self, span: Any, sc: Screening, payload: dict[str, Any],
                  t0_ns: int) -> None:
        """The ``apply_guardrail`` child span for one screening (started at ``t0_ns``)."""
        if span is None or self.tracer is None:
            return
        g = self.tracer.start_span("apply_guardrail distillguard",
                                   context=_trace.set_span_in_context(span),
                                   kind=_Kind.INTERNAL, start_time=t0_ns)
        d = sc.decision
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "apply_guardrail",
            "gen_ai.guardian.name": "distillguard", "gen_ai.guardian.version": __version__,
            "gen_ai.security.target.type": "llm_input",
            "gen_ai.security.decision.type": decision_type(sc.action),
            "gen_ai.security.policy.id": self.policy_id,
            "gen_ai.security.policy.name": "distillguard",
            "gen_ai.security.policy.version": self.policy_version,
            "distillguard.verdict": sc.verdict, "distillguard.action": sc.action,
            "distillguard.actions": list(sc.applied),
            "distillguard.fail_open": sc.fail_open, "distillguard.fail_mode": self.fail_mode,
        }
        reason = (d.blocking_rule if sc.blocked and d is not None else
                  sc.directive.code if sc.directive is not None and not sc.directive.allowed
                  else "state_store_unavailable" if sc.verdict == "unavailable" else None)
        if reason:
            attrs["gen_ai.security.decision.reason"] = reason
        if sc.blocked:
            attrs["gen_ai.security.decision.code"] = sc.status
        if d is not None and d.rules:
            attrs["distillguard.rules"] = list(d.rules)
        if sc.score is not None:
            attrs["distillguard.score"] = round(sc.score.score, 6)
        if sc.directive is not None and sc.directive.directive_ids:
            attrs["distillguard.directives"] = list(sc.directive.directive_ids)
        if self.hash_key:
            attrs["gen_ai.security.content.input.hash"] = content_hash(self.hash_key,
                                                                        payload.get("messages"))
        g.set_attributes(attrs)
        if sc.verdict not in ("allow", "unavailable"):
            ev: dict[str, Any] = {"gen_ai.security.risk.category": "model_distillation",
                                  "gen_ai.security.risk.severity": _severity(
                                      sc.score.score if sc.score else None)}
            if sc.score is not None:
                ev["gen_ai.security.risk.score"] = round(sc.score.score, 6)
            g.add_event("gen_ai.security.finding", ev)
        g.end()
        span.set_attribute("distillguard.action", sc.action)
        span.set_attribute("distillguard.verdict", sc.verdict)

    def response(self, span: Any, status: int, *, payload: dict[str, Any] | None = None,
                 body: Any = None, usage: dict[str, Any] | None = None,
                 error_code: str | None = None, streamed: bool = False) -> None:
        """Finish the request span with response attributes."""
        if span is None:
            return
        attrs: dict[str, Any] = {"http.response.status_code": status}
        if payload is not None:
            mt = payload.get("max_completion_tokens") or payload.get("max_tokens")
            if isinstance(mt, int):
                attrs["gen_ai.request.max_tokens"] = mt
        if isinstance(body, dict):
            if isinstance(body.get("id"), str):
                attrs["gen_ai.response.id"] = body["id"]
            if isinstance(body.get("model"), str):
                attrs["gen_ai.response.model"] = body["model"]
            fr = [c.get("finish_reason") for c in body.get("choices") or []
                  if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)]
            if fr:
                attrs["gen_ai.response.finish_reasons"] = fr
        if usage:
            for k, a in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                         ("completion_tokens", "gen_ai.usage.output_tokens")):
                if isinstance(usage.get(k), int):
                    attrs[a] = usage[k]
        if streamed:
            attrs["distillguard.streamed"] = True
        if status >= 400:
            attrs["error.type"] = error_code or str(status)
            span.set_status(_Status(_Code.ERROR, error_code or str(status)))
        span.set_attributes(attrs)
        span.end()

    @staticmethod
    def now_ns() -> int:
        return time.time_ns()
