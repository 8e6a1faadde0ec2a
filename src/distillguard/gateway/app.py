"""OpenAI-compatible gateway: detection and graduated response in the request path.

Per ``POST /v1/chat/completions``:

1. read the body under a size limit and validate it (4xx; the upstream never sees bad input);
2. authenticate the caller (API key → account, see :mod:`distillguard.gateway.auth`);
3. check access directives (Cedar; deny / error → 403 ``distillguard_access_denied``);
4. score the request online and pick the policy action (suspend / verify → 403, throttle →
   429 + Retry-After when over the rate, cap_output → lowered max_tokens);
5. forward to the upstream (httpx, transport injectable), stream or not;
6. apply output actions (strip reasoning, also inside SSE streams);
7. write the canonical request-log record and one hash-chained audit entry.

Every action is visible: ``X-Distillguard-Action`` (all applied actions), ``-Policy-Version``,
``-Request-Id``, ``-Max-Tokens`` (when capped), ``-Reasoning: stripped``. Error bodies follow
the OpenAI shape ``{"error": {message, type, code, param}}`` with the codes of
:data:`distillguard.respond.policy.ERROR_CODES`. Detection reasons are audited, not returned
(they would teach an adversary what to change).

State store failures follow ``fail_mode``: ``"closed"`` answers 503 ``distillguard_unavailable``
with Retry-After (nothing unscored passes); ``"open"`` forwards the request unscored and audits
``fail_open``. Directives are always fail-closed: they do not depend on the state store.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from distillguard.gateway.auth import Caller, KeyStore
from distillguard.respond._errors import StateStoreError
from distillguard.respond.audit import AuditLog
from distillguard.respond.directives import DirectiveSet
from distillguard.respond.online import OnlineScore, OnlineScorer, RequestView, decide
from distillguard.respond.output import StreamStripper, cap_max_tokens, strip_reasoning_body
from distillguard.respond.policy import ERROR_CODES, Policy, PolicyDecision

__all__ = ["RequestLog", "create_app"]

DEFAULT_MAX_BODY = 4 * 1024 * 1024       # bytes; larger bodies → 413 before parsing
MAX_LOGGED_RESPONSE = 4000               # characters of the response kept in the request log
_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class RequestLog:
    """Appends canonical request-log records (data/request-log.schema.json) as JSONL."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, rec: dict[str, Any]) -> None:
        line = orjson.dumps(rec, default=str) + b"\n"
        with self._lock, self.path.open("ab") as fh:
            fh.write(line)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, code: str, etype: str = "invalid_request_error",
           param: str | None = None, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validate(payload: Any) -> dict[str, Any]:
    """The checks that keep malformed requests away from the upstream."""
    if not isinstance(payload, dict):
        raise _BadRequest(400, "request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise _BadRequest(400, "model must be a non-empty string", "model")
    msgs = payload.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _BadRequest(400, "messages must be a non-empty array", "messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _BadRequest(400, f"messages[{i}] must be an object with a string role",
                              f"messages[{i}]")
        c = m.get("content")
        if c is not None and not isinstance(c, str | list):
            raise _BadRequest(400, f"messages[{i}].content must be a string, an array or null",
                              f"messages[{i}].content")
    if "stream" in payload and not isinstance(payload["stream"], bool):
        raise _BadRequest(400, "stream must be a boolean", "stream")
    for k in ("max_tokens", "max_completion_tokens"):
        v = payload.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise _BadRequest(400, f"{k} must be a positive integer", k)
    if "tools" in payload and payload["tools"] is not None and not isinstance(payload["tools"], list):
        raise _BadRequest(400, "tools must be an array", "tools")
    eff = payload.get("reasoning_effort")
    if eff is not None and not isinstance(eff, str):
        raise _BadRequest(400, "reasoning_effort must be a string", "reasoning_effort")
    return payload


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _view(caller: Caller, payload: dict[str, Any], ts: float) -> RequestView:
    msgs = payload["messages"]
    texts = [_text(m.get("content")) for m in msgs]
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    last = users[-1] if users else len(msgs) - 1
    system = next((texts[i] for i, m in enumerate(msgs) if m["role"] in ("system", "developer")),
                  "")
    return RequestView(
        caller.account_id, payload["model"], ts, texts[last], system, len(users),
        sum(len(t) for j, t in enumerate(texts) if j != last),
        len(payload.get("tools") or []), payload.get("reasoning_effort"),
        caller.account_created, caller.attrs.signup_channel or None)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_app(upstream_url: str, policy: Policy, directives: DirectiveSet | None,
               scorer: OnlineScorer, audit: AuditLog | None, transport: Any = None,
               fail_mode: str = "closed", *, keys: KeyStore | None = None,
               request_log: RequestLog | str | Path | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY, upstream_api_key: str | None = None,
               timeout_s: float = 600.0) -> FastAPI:
    """Build the gateway app (see the module docstring for the request flow).

    ``transport`` is passed to ``httpx.AsyncClient`` (``httpx.MockTransport`` in tests).
    ``keys`` defaults to an empty KeyStore that accepts ``X-Account-Id`` (testing only).
    """
    if fail_mode not in ("closed", "open"):
        raise ValueError(f"fail_mode must be 'closed' or 'open', got {fail_mode!r}")
    keys = keys or KeyStore(allow_account_header=True)
    directives = directives or DirectiveSet([])
    rlog = RequestLog(request_log) if isinstance(request_log, str | Path) else request_log
    holder: dict[str, httpx.AsyncClient] = {}

    def client() -> httpx.AsyncClient:
        # Created lazily so apps driven through ASGITransport (no lifespan) work too.
        if "c" not in holder:
            holder["c"] = httpx.AsyncClient(base_url=upstream_url.rstrip("/"),
                                            transport=transport, timeout=timeout_s)
        return holder["c"]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if "c" in holder:
            await holder.pop("c").aclose()

    app = FastAPI(title="distillguard gateway", lifespan=lifespan)
    app.state.policy, app.state.directives, app.state.scorer = policy, directives, scorer

    def base_headers(rid: str, d: PolicyDecision | None, extra: dict[str, str] | None = None
                     ) -> dict[str, str]:
        h = {"X-Distillguard-Request-Id": rid, "X-Distillguard-Policy-Version": policy.version}
        if d is not None:
            h["X-Distillguard-Action"] = ",".join(a for a in d.actions if a != "allow") or "allow"
        return {**h, **(extra or {})}

    def record(rid: str, ts: float, caller: Caller | None, payload: dict[str, Any] | None,
               status: int, d: PolicyDecision | None, s: OnlineScore | None,
               response_text: str | None = None, usage: dict[str, Any] | None = None,
               request: Request | None = None, event: str = "decision",
               **extra: Any) -> None:
        """One request-log record (when the request was valid) and one audit entry."""
        action = extra.pop("action", None) or (d.action if d else "allow")
        if rlog is not None and caller is not None and payload is not None:
            rec: dict[str, Any] = {
                "request_id": rid, "ts": _iso(ts), "account_id": caller.account_id,
                "model": payload["model"], "messages": payload["messages"],
                "org_id": caller.attrs.org or None, "api_key_id": caller.api_key_id,
                "ip": request.client.host if request and request.client else None,
                "user_agent": request.headers.get("user-agent") if request else None,
                "signup_channel": caller.attrs.signup_channel or None,
                "country": caller.attrs.country or None,
                "account_created": _iso(caller.account_created)
                if caller.account_created is not None else None,
                "tools": payload.get("tools"), "reasoning_effort": payload.get("reasoning_effort"),
                "input_tokens": (usage or {}).get("prompt_tokens"),
                "output_tokens": (usage or {}).get("completion_tokens"),
                "response": response_text[:MAX_LOGGED_RESPONSE] if response_text else None,
                "status": status,
                # Extras land in the store's `extra` JSON (dry runs read nationality/employee).
                "nationality": caller.attrs.nationality or None,
                "employee": caller.attrs.employee, "dg_action": action,
                "dg_score": round(s.score, 6) if s else None,
            }
            rlog.write(rec)
        if audit is not None:
            audit.append(
                event, request_id=rid, request_ts=_iso(ts),
                account_id=caller.account_id if caller else None,
                model=payload.get("model") if payload else None, status=status, action=action,
                actions=list(d.actions) if d else [], rules=list(d.rules) if d else [],
                score=round(s.score, 6) if s else None, reasons=s.reasons if s else [],
                policy_version=policy.version, **extra)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        state_ok = True
        try:
            await run_in_threadpool(scorer.state.suspended, "_healthz")
        except StateStoreError:
            state_ok = False
        ok = state_ok or fail_mode == "open"
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "state_store": "ok" if state_ok else "down",
             "fail_mode": fail_mode, "policy_version": policy.version,
             "directives": len(directives.directives),
             "directives_broken": bool(directives.broken)},
            status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        caller = keys.authenticate(request.headers)
        if caller is None:
            return _error(401, "missing or unknown API key", "invalid_api_key")
        try:
            up = await client().get("/v1/models", headers=_up_headers(request))
        except httpx.HTTPError as exc:
            return _error(502, f"upstream unreachable: {type(exc).__name__}",
                          "distillguard_upstream_error", "upstream_error")
        if up.status_code != 200:
            return Response(up.content, up.status_code, media_type="application/json")
        body = up.json()
        # Only list models this caller may use: a directive-denied model is not advertised.
        data = [m for m in body.get("data", []) if isinstance(m, dict)
                and directives.check(caller.account_id, str(m.get("id")), caller.attrs).allowed]
        return JSONResponse({**body, "data": data})

    def _up_headers(request: Request) -> dict[str, str]:
        if upstream_api_key:
            return {"Authorization": f"Bearer {upstream_api_key}"}
        auth = request.headers.get("authorization")
        return {"Authorization": auth} if auth else {}

    async def read_body(request: Request) -> bytes:
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > max_body_bytes:
                    raise _BadRequest(413, f"request body exceeds {max_body_bytes} bytes")
            except ValueError:
                raise _BadRequest(400, "invalid Content-Length") from None
        chunks, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > max_body_bytes:
                raise _BadRequest(413, f"request body exceeds {max_body_bytes} bytes")
            chunks.append(part)
        return b"".join(chunks)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        rid = "dg-" + uuid.uuid4().hex
        ts = time.time()
        try:
            raw = await read_body(request)
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise _BadRequest(400, f"body is not valid JSON: {exc}") from None
            payload = _validate(payload)
        except _BadRequest as bad:
            code = "request_too_large" if bad.status == 413 else "invalid_request"
            if audit is not None:
                audit.append("bad_request", request_id=rid, status=bad.status,
                             action="reject", reason=bad.message[:200])
            return _error(bad.status, bad.message, code, param=bad.param,
                          headers=base_headers(rid, None))
        caller = keys.authenticate(request.headers)
        if caller is None:
            if audit is not None:
                audit.append("unauthenticated", request_id=rid, status=401, action="reject")
            return _error(401, "missing or unknown API key", "invalid_api_key",
                          headers=base_headers(rid, None))

        # Access directives: independent of the state store, always fail closed.
        dd = directives.check(caller.account_id, payload["model"], caller.attrs, ts)
        if not dd.allowed:
            status, code = ERROR_CODES["directive"]
            record(rid, ts, caller, payload, status, None, None, request=request,
                   action="deny", directive_code=dd.code, directives=list(dd.directive_ids),
                   legal_references=list(dd.legal_references), errors=list(dd.errors)[:3])
            return _error(status, "access to this model is not permitted for this account",
                          code, "access_denied", headers=base_headers(rid, None),
                          reason=dd.code, directives=list(dd.directive_ids))

        view = _view(caller, payload, ts)
        s: OnlineScore | None = None
        try:
            s, d, over, retry = await run_in_threadpool(_score, view)
        except StateStoreError as exc:
            if fail_mode == "closed":
                status, code = ERROR_CODES["state_unavailable"]
                record(rid, ts, caller, payload, status, None, None, request=request,
                       action="reject", fail_mode="closed", error=str(exc)[:200])
                return _error(status, "request screening is temporarily unavailable", code,
                              "service_unavailable",
                              headers=base_headers(rid, None, {"Retry-After": "5"}))
            d, over, retry = PolicyDecision("allow", actions=("allow",)), False, 0
            fail_open = True
        else:
            fail_open = False

        if d.blocking in ("suspend", "require_verification") or (d.blocking == "throttle" and over):
            status, code = ERROR_CODES[d.blocking]
            extra_h = {"Retry-After": str(retry)} if d.blocking == "throttle" else {}
            extra_h["X-Distillguard-Action"] = d.blocking    # what was applied, nothing else
            extra_b: dict[str, Any] = {"rule": d.blocking_rule}
            if d.blocking == "require_verification" and d.params.get("verify_url"):
                extra_b["verify_url"] = d.params["verify_url"]
            msg = {"suspend": "this account is suspended pending review",
                   "require_verification": "additional verification is required",
                   "throttle": "rate limit for this account exceeded"}[d.blocking]
            record(rid, ts, caller, payload, status, d, s, request=request,
                   action=d.blocking)
            return _error(status, msg, code, "distillguard_policy",
                          headers=base_headers(rid, d, extra_h), **extra_b)

        out_headers: dict[str, str] = {}
        if d.max_tokens is not None and cap_max_tokens(payload, d.max_tokens):
            out_headers["X-Distillguard-Max-Tokens"] = str(d.max_tokens)
        if d.strip_reasoning:
            out_headers["X-Distillguard-Reasoning"] = "stripped"
        if fail_open:
            out_headers["X-Distillguard-Screening"] = "unavailable"
        up_req = client().build_request("POST", "/v1/chat/completions",
                                        content=orjson.dumps(payload),
                                        headers={"Content-Type": "application/json",
                                                 **_up_headers(request)})
        try:
            up = await client().send(up_req, stream=True)
        except httpx.HTTPError as exc:
            record(rid, ts, caller, payload, 502, d, s, request=request,
                   upstream_error=type(exc).__name__, fail_open=fail_open)
            return _error(502, f"upstream unreachable: {type(exc).__name__}",
                          "distillguard_upstream_error", "upstream_error",
                          headers=base_headers(rid, d))
        headers = {**{k: v for k, v in up.headers.items() if k.lower() not in _HOP},
                   **base_headers(rid, d, out_headers)}
        ctype = up.headers.get("content-type", "")
        if payload.get("stream") and up.status_code == 200 and "text/event-stream" in ctype:
            return StreamingResponse(
                _stream(up, rid, ts, caller, payload, d, s, request, fail_open),
                status_code=200, headers=headers, media_type="text/event-stream")
        try:
            content = await up.aread()
        finally:
            await up.aclose()
        text, usage = None, None
        if up.status_code == 200 and "json" in ctype:
            try:
                body = orjson.loads(content)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                if d.strip_reasoning:
                    strip_reasoning_body(body)
                    content = orjson.dumps(body)
                usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
                ch = (body.get("choices") or [{}])[0]
                text = _text((ch.get("message") or {}).get("content")) if isinstance(ch, dict) \
                    else None
        await _after(caller, usage)
        record(rid, ts, caller, payload, up.status_code, d, s, text, usage, request,
               fail_open=fail_open)
        return Response(content, up.status_code, headers=headers)

    def _score(view: RequestView) -> tuple[OnlineScore, PolicyDecision, bool, int]:
        s = scorer.observe(view)
        d = decide(policy, scorer, s, view.account_id, view.ts)
        over, retry = False, 0
        if d.blocking == "throttle":
            rpm = int(d.params.get("rpm", 0))
            bucket = int(view.ts // 60)
            over = rpm == 0 or scorer.state.rate(view.account_id, bucket, 120) > rpm
            retry = int(d.params.get("retry_after_s", 60)) if rpm == 0 else \
                max(1, math.ceil((bucket + 1) * 60 - view.ts))
        return s, d, over, retry

    async def _after(caller: Caller, usage: dict[str, Any] | None) -> None:
        if usage:
            try:
                await run_in_threadpool(scorer.observe_response, caller.account_id,
                                        usage.get("prompt_tokens"), usage.get("completion_tokens"))
            except StateStoreError:
                pass  # usage evidence is best-effort; the decision was already made and audited

    async def _stream(up: httpx.Response, rid: str, ts: float, caller: Caller,
                      payload: dict[str, Any], d: PolicyDecision, s: OnlineScore | None,
                      request: Request, fail_open: bool) -> AsyncIterator[bytes]:
        stripper = StreamStripper() if d.strip_reasoning else None
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        status = 200
        try:
            async for line in up.aiter_lines():
                if not line.startswith("data:"):
                    yield (line + "\n").encode()
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    yield b"data: [DONE]\n"
                    continue
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    yield (line + "\n").encode()
                    continue
                if stripper is not None and isinstance(obj, dict):
                    obj = stripper.chunk(obj)
                    if obj is None:
                        continue
                if isinstance(obj, dict):
                    if isinstance(obj.get("usage"), dict):
                        usage = obj["usage"]
                    for ch in obj.get("choices") or []:
                        c = (ch.get("delta") or {}).get("content") if isinstance(ch, dict) else None
                        if isinstance(c, str) and sum(map(len, parts)) < MAX_LOGGED_RESPONSE:
                            parts.append(c)
                yield b"data: " + orjson.dumps(obj) + b"\n"
        except httpx.HTTPError:
            status = 502
            err = {"error": {"message": "upstream stream interrupted", "type": "upstream_error",
                             "code": "distillguard_upstream_error", "param": None}}
            yield b"data: " + orjson.dumps(err) + b"\n\n"
        finally:
            await up.aclose()
            await _after(caller, usage)
            record(rid, ts, caller, payload, status, d, s, "".join(parts), usage, request,
                   fail_open=fail_open, streamed=True)

    return app
