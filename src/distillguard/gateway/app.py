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
``fail_open``. A :class:`~distillguard.respond.state.FallbackState` store (the CLI's default
with Redis, ``--fail-mode local``) never fails: it scores on per-worker state during an
outage, logs an alert and returns to Redis when it answers; ``/healthz`` then says
``"state_store": "fallback"``, and requests scored meanwhile carry
``X-Distillguard-Screening: local`` and ``state_fallback: true`` in their audit entry.
Directives are always fail-closed: they do not depend on the state store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

try:  # optional fast upstream client (≈8x less CPU per request than httpx)
    import aiohttp
except ImportError:  # pragma: no cover - exercised only without aiohttp
    aiohttp = None  # type: ignore[assignment]
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from distillguard.gateway.auth import Caller, KeyStore
from distillguard.gateway.otel import Telemetry
from distillguard.respond._errors import StateStoreError
from distillguard.respond.audit import AuditLog
from distillguard.respond.directives import DirectiveSet
from distillguard.respond.guard import Guard, Screening, request_view, text_of
from distillguard.respond.online import OnlineScore, OnlineScorer
from distillguard.respond.output import StreamStripper, cap_max_tokens, strip_reasoning_body
from distillguard.respond.policy import Policy, PolicyDecision

__all__ = ["RequestLog", "create_app"]

DEFAULT_MAX_BODY = 4 * 1024 * 1024       # bytes; larger bodies → 413 before parsing
DEFAULT_BODY_TIMEOUT_S = 30.0            # a body not received whole by then → 408 (slowloris)
MAX_LOGGED_RESPONSE = 4000               # characters of the response kept in the request log
_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}
_UPSTREAM_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, TimeoutError) + (
    (aiohttp.ClientError,) if aiohttp is not None else ())


class _AioResponse:
    """An aiohttp response with the slice of httpx.Response's API the gateway uses."""

    def __init__(self, r: Any) -> None:
        self._r, self.status_code, self.headers = r, r.status, r.headers

    async def aread(self) -> bytes:
        return await self._r.read()

    async def aiter_lines(self) -> AsyncIterator[str]:
        async for raw in self._r.content:
            yield raw.decode("utf-8", "replace").rstrip("\r\n")

    async def aclose(self) -> None:
        self._r.release()


class RequestLog:
    """Appends canonical request-log records (data/request-log.schema.json) as JSONL."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh: Any = None

    def write(self, rec: dict[str, Any]) -> None:
        line = orjson.dumps(rec, default=str) + b"\n"
        with self._lock:
            if self._fh is None:
                # Unbuffered append handle kept open: one write() per record, no reopen.
                self._fh = self.path.open("ab", buffering=0)
            self._fh.write(line)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class _GatewayApp(FastAPI):
    """FastAPI, except that ``POST /v1/chat/completions`` skips its middleware and routing.

    The route stays registered (OpenAPI, and the fallback when middleware is added); the
    handler and the response objects are the same, only the ~10 framework layers per
    request are skipped. An exception still ends as a plain 500 (uvicorn's).
    """

    fast_chat: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (self.fast_chat is not None and scope["type"] == "http"
                and scope["path"] == "/v1/chat/completions" and scope["method"] == "POST"
                and not self.user_middleware):
            response = await self.fast_chat(Request(scope, receive))
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, code: str, etype: str = "invalid_request_error",
           param: str | None = None, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code, **extra}}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


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


_text = text_of


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_app(upstream_url: str, policy: Policy, directives: DirectiveSet | None,
               scorer: OnlineScorer, audit: AuditLog | None, transport: Any = None,
               fail_mode: str = "closed", *, keys: KeyStore | None = None,
               request_log: RequestLog | str | Path | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY, upstream_api_key: str | None = None,
               timeout_s: float = 600.0, tracer_provider: Any = None,
               content_hash_key: bytes | str | None = None,
               otel_provider_name: str = "openai",
               policy_id: str = "distillguard-policy", freeze_gc: bool = False,
               body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> FastAPI:
    """Build the gateway app (see the module docstring for the request flow).

    ``transport`` is passed to ``httpx.AsyncClient`` (``httpx.MockTransport`` in tests);
    without one, chat completions go upstream through aiohttp when it is installed (much
    less CPU per request than httpx), else through httpx.
    ``body_timeout_s``: a request body not received whole within it is answered 408
    (a client dripping its body cannot hold a connection and a task forever).
    ``keys`` defaults to an empty KeyStore that accepts ``X-Account-Id`` (testing only).
    ``tracer_provider`` (default: the global OpenTelemetry one), ``content_hash_key``
    (default: ``$DISTILLGUARD_CONTENT_HASH_KEY``), ``otel_provider_name`` and ``policy_id``
    configure the spans of :mod:`distillguard.gateway.otel`. ``freeze_gc`` (for a
    server process; the CLI sets it): at startup (lifespan), move every object that exists
    then out of the cyclic garbage collector's reach (``gc.freeze``), so full collections
    stay short.
    """
    guard = Guard(policy, directives, scorer, fail_mode)
    directives = guard.directives
    usage_inline = guard.usage_inline
    keys = keys or KeyStore(allow_account_header=True)
    rlog = RequestLog(request_log) if isinstance(request_log, str | Path) else request_log
    tel = Telemetry(upstream_url, policy.version, tracer_provider=tracer_provider,
                    hash_key=content_hash_key, provider_name=otel_provider_name,
                    policy_id=policy_id, fail_mode=fail_mode)
    holder: dict[str, Any] = {}
    # Screening with a networked state store (Redis) blocks: it runs on this pool. Plain
    # run_in_executor costs less per call than anyio's run_in_threadpool.
    pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="dg-screen")

    def off_loop(fn: Any, *args: Any) -> Any:
        return asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    use_aio = aiohttp is not None and transport is None
    chat_url = upstream_url.rstrip("/") + "/v1/chat/completions"

    def session() -> Any:
        if "s" not in holder:
            holder["s"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                # Per connect and per read, as httpx's timeout: a slow stream that keeps
                # sending is not cut at timeout_s; an upstream silent that long is.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s,
                                              sock_read=timeout_s), read_bufsize=2 ** 20)
        return holder["s"]

    async def send_upstream(body: bytes, headers: dict[str, str]) -> Any:
        if use_aio:
            return _AioResponse(await session().post(chat_url, data=body, headers=headers))
        req = client().build_request("POST", "/v1/chat/completions", content=body,
                                     headers=headers)
        return await client().send(req, stream=True)

    def client() -> httpx.AsyncClient:
        # Created lazily so apps driven through ASGITransport (no lifespan) work too.
        if "c" not in holder:
            holder["c"] = httpx.AsyncClient(
                base_url=upstream_url.rstrip("/"), transport=transport, timeout=timeout_s,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
        return holder["c"]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything loaded so far (framework, policy, Cedar, scorer config: ~100k objects)
        # lives as long as the process: keep it out of the cyclic GC, whose full collections
        # otherwise stall the event loop for tens of milliseconds (a p99 spike each time).
        if freeze_gc:
            gc.collect()
            gc.freeze()
        yield
        if "c" in holder:
            await holder.pop("c").aclose()
        if "s" in holder:
            await holder.pop("s").close()
        if isinstance(request_log, str | Path) and rlog is not None:
            rlog.close()
        flush = getattr(scorer.state, "flush", None)     # queued usage writes (Redis)
        if flush is not None:
            with contextlib.suppress(StateStoreError):
                await off_loop(flush)
        pool.shutdown(wait=False)

    app = _GatewayApp(title="distillguard gateway", lifespan=lifespan)
    app.state.policy, app.state.directives, app.state.scorer = policy, directives, scorer
    app.state.guard, app.state.telemetry = guard, tel

    def base_headers(rid: str, actions: tuple[str, ...] | None,
                     extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"X-Distillguard-Request-Id": rid, "X-Distillguard-Policy-Version": policy.version}
        if actions is not None:
            h["X-Distillguard-Action"] = ",".join(a for a in actions if a != "allow") or "allow"
        return {**h, **(extra or {})}

    def record(rid: str, ts: float, caller: Caller | None, payload: dict[str, Any] | None,
               status: int, d: PolicyDecision | None, s: OnlineScore | None,
               response_text: str | None = None, usage: dict[str, Any] | None = None,
               request: Request | None = None, event: str = "decision",
               **extra: Any) -> None:
        """One request-log record (when the request was valid) and one audit entry."""
        action = extra.pop("action", None) or (d.action if d else "allow")
        its = _iso(ts)
        if rlog is not None and caller is not None and payload is not None:
            rec: dict[str, Any] = {
                "request_id": rid, "ts": its, "account_id": caller.account_id,
                "model": payload["model"], "messages": payload["messages"],
                "org_id": caller.attrs.org or None, "api_key_id": caller.api_key_id,
                "ip": request.client.host if request and request.client else None,
                "payment_fingerprint": caller.payment_fingerprint,
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
                event, request_id=rid, request_ts=its,
                account_id=caller.account_id if caller else None,
                model=payload.get("model") if payload else None, status=status, action=action,
                actions=list(d.actions) if d else [], rules=list(d.rules) if d else [],
                score=round(s.score, 6) if s else None, reasons=s.reasons if s else [],
                policy_version=policy.version, **extra)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        state_ok = True
        try:
            if guard.inline:
                scorer.state.suspended("_healthz")
            else:
                await run_in_threadpool(scorer.state.suspended, "_healthz")
        except StateStoreError:
            state_ok = False
        # FallbackState: serving, scored on this worker's own state until the store returns
        local = bool(getattr(scorer.state, "degraded", False))
        ok = state_ok or fail_mode == "open"
        return JSONResponse(
            {"status": "ok" if ok and not local else "degraded",
             "state_store": "fallback" if local else "ok" if state_ok else "down",
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
        try:
            async with asyncio.timeout(body_timeout_s):
                async for part in request.stream():
                    size += len(part)
                    if size > max_body_bytes:
                        raise _BadRequest(413, f"request body exceeds {max_body_bytes} bytes")
                    chunks.append(part)
        except TimeoutError:
            raise _BadRequest(408, f"request body not received within {body_timeout_s:g} s") \
                from None
        return b"".join(chunks)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        rid = "dg-" + os.urandom(16).hex()      # 128 random bits, as uuid4().hex, cheaper
        ts = time.time()
        span = tel.start(request.headers, rid)
        try:
            raw = await read_body(request)
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise _BadRequest(400, f"body is not valid JSON: {exc}") from None
            payload = _validate(payload)
        except _BadRequest as bad:
            code = {413: "request_too_large", 408: "request_timeout"}.get(bad.status,
                                                                         "invalid_request")
            if audit is not None:
                audit.append("bad_request", request_id=rid, status=bad.status,
                             action="reject", reason=bad.message[:200])
            tel.response(span, bad.status, error_code=code)
            return _error(bad.status, bad.message, code, param=bad.param,
                          headers=base_headers(rid, None))
        caller = keys.authenticate(request.headers)
        if caller is None:
            if audit is not None:
                audit.append("unauthenticated", request_id=rid, status=401, action="reject")
            tel.response(span, 401, error_code="invalid_api_key")
            return _error(401, "missing or unknown API key", "invalid_api_key",
                          headers=base_headers(rid, None))
        tel.request(span, payload, caller.account_id)

        # Directives (always fail closed), online score and policy; see respond.guard.
        # In-process state does no I/O: screen on the loop, no thread-pool hop.
        view = request_view(caller.account_id, payload, ts, caller.account_created,
                            caller.attrs.signup_channel,
                            request.client.host if request.client else None,
                            caller.payment_fingerprint, caller.api_key_id)
        t0 = tel.now_ns() if span is not None else 0
        if guard.inline:
            sc = guard.screen(caller.account_id, caller.attrs, view)
        else:
            sc = await off_loop(guard.screen, caller.account_id, caller.attrs, view)
        d, s, fail_open = sc.decision, sc.score, sc.fail_open
        tel.guardrail(span, sc, payload, t0)

        if sc.blocked:
            record(rid, ts, caller, payload, sc.status, d, s, request=request,
                   action=sc.action, **sc.audit, **sc.fallback_audit)
            tel.response(span, sc.status, payload=payload, error_code=sc.code)
            return _error(sc.status, sc.message, sc.code or "", sc.etype,
                          headers=base_headers(rid, sc.applied, sc.headers), **sc.body)
        assert d is not None

        out_headers: dict[str, str] = {}
        if d.max_tokens is not None and cap_max_tokens(payload, d.max_tokens):
            out_headers["X-Distillguard-Max-Tokens"] = str(d.max_tokens)
        if d.strip_reasoning:
            out_headers["X-Distillguard-Reasoning"] = "stripped"
        if fail_open:
            out_headers["X-Distillguard-Screening"] = "unavailable"
        elif sc.local_state:
            out_headers["X-Distillguard-Screening"] = "local"
        try:
            up = await send_upstream(orjson.dumps(payload),
                                     {"Content-Type": "application/json",
                                      **_up_headers(request)})
        except _UPSTREAM_ERRORS as exc:
            record(rid, ts, caller, payload, 502, d, s, request=request,
                   upstream_error=type(exc).__name__, fail_open=fail_open,
                   **sc.fallback_audit)
            tel.response(span, 502, payload=payload, error_code="distillguard_upstream_error")
            return _error(502, f"upstream unreachable: {type(exc).__name__}",
                          "distillguard_upstream_error", "upstream_error",
                          headers=base_headers(rid, sc.applied))
        headers = {**{k: v for k, v in up.headers.items() if k.lower() not in _HOP},
                   **base_headers(rid, sc.applied, out_headers)}
        ctype = up.headers.get("content-type", "")
        if payload.get("stream") and up.status_code == 200 and "text/event-stream" in ctype:
            return StreamingResponse(
                _stream(up, rid, ts, caller, payload, sc, request, span),
                status_code=200, headers=headers, media_type="text/event-stream")
        try:
            content = await up.aread()
        finally:
            await up.aclose()
        text, usage, body = None, None, None
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
               fail_open=fail_open, **sc.fallback_audit)
        tel.response(span, up.status_code, payload=payload, body=body, usage=usage)
        return Response(content, up.status_code, headers=headers)

    app.fast_chat = chat

    async def _after(caller: Caller, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        if usage_inline:        # no I/O (RedisState queues it for its next round trip)
            guard.observe_usage(caller.account_id, usage)
        else:
            # Not awaited: the answer does not wait for the state store's round trips (the
            # usage lands a moment later; observe_usage is best effort and never raises).
            with contextlib.suppress(RuntimeError):      # pool already shut down
                off_loop(guard.observe_usage, caller.account_id, usage)

    async def _stream(up: Any, rid: str, ts: float, caller: Caller,
                      payload: dict[str, Any], sc: Screening, request: Request,
                      span: Any) -> AsyncIterator[bytes]:
        d, s, fail_open = sc.decision, sc.score, sc.fail_open
        assert d is not None
        stripper = StreamStripper() if d.strip_reasoning else None
        parts: list[str] = []
        usage: dict[str, Any] | None = None
        last: dict[str, Any] = {}
        finish: list[str] = []
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
                    last = obj
                    for ch in obj.get("choices") or []:
                        if not isinstance(ch, dict):
                            continue
                        if isinstance(ch.get("finish_reason"), str):
                            finish.append(ch["finish_reason"])
                        c = (ch.get("delta") or {}).get("content")
                        if isinstance(c, str) and sum(map(len, parts)) < MAX_LOGGED_RESPONSE:
                            parts.append(c)
                yield b"data: " + orjson.dumps(obj) + b"\n"
        except _UPSTREAM_ERRORS:
            status = 502
            err = {"error": {"message": "upstream stream interrupted", "type": "upstream_error",
                             "code": "distillguard_upstream_error", "param": None}}
            yield b"data: " + orjson.dumps(err) + b"\n\n"
        finally:
            await up.aclose()
            await _after(caller, usage)
            record(rid, ts, caller, payload, status, d, s, "".join(parts), usage, request,
                   fail_open=fail_open, streamed=True, **sc.fallback_audit)
            tel.response(span, status, payload=payload,
                         body={"id": last.get("id"), "model": last.get("model"),
                               "choices": [{"finish_reason": f} for f in finish]},
                         usage=usage, streamed=True,
                         error_code="distillguard_upstream_error" if status != 200 else None)

    return app
