"""The gateway under faults, with real components: ``python -m distillguard.bench.faults OUT``.

Everything runs over real sockets: the gateway is served by uvicorn in a thread, the upstream
is a small HTTP/1.1 server written on asyncio sockets (:class:`FaultUpstream`) that answers,
fails (500, 503), hangs, resets the connection (RST, before or in the middle of a stream) or
streams slowly depending on the requested model; Redis is a ``redis-server`` subprocess that
is killed (SIGKILL, restarted empty) or frozen (SIGSTOP, SIGCONT); slow clients are raw
sockets. Scenarios:

* ``redis``: mixed traffic (benign accounts, a directive-denied account, a suspended account)
  while Redis is killed and restarted, then frozen and resumed, against a gateway whose state
  is :class:`~distillguard.respond.state.FallbackState`;
* ``upstream``: every upstream fault, with benign and denied traffic alongside;
* ``bodies``: oversized (declared and chunked), malformed, non-UTF-8, deeply nested and
  schema-invalid bodies;
* ``slowloris``: clients that send headers or bodies a byte at a time while normal traffic
  runs;
* ``burst``: open-loop traffic at a base rate, then 10x for a while, then the base rate;
* ``workers``: the real ``distillguard gateway --workers 2 --redis-url ...`` in a subprocess
  while Redis is SIGKILLed and restarted empty;
* ``redis-closed`` (only with ``--only``): the Redis scenario on the bare RedisState failing
  closed, the behaviour before the fallback, for comparison (its failures are expected).

``--long`` (or ``DG_LONG=1``) runs the long profile: 3 Redis cycles of 4 s outages, 10 rounds
of upstream faults, 400 slow clients for 10 s, 5 s burst phases.

Every request has an expected answer (status, error code, body shape). A **wrong decision** is
a request answered allowed (200, or seen by the upstream) that directives or a suspension
deny, or a request denied (403, 429, 503) that should pass. Prints a table and writes
``OUT/faults.json``; exit code 0 when every request was answered correctly and nothing
crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["FaultUpstream", "GatewayServer", "RedisServer", "main", "run_faults"]

TIMEOUT_S = 1.5               # the gateway's upstream timeout in these runs
SLOW_GAP_S = 0.4              # gap between chunks of a slow stream (7 gaps > TIMEOUT_S)
MAX_BODY = 64_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- upstream
class FaultUpstream:
    """A real HTTP/1.1 upstream on 127.0.0.1 whose behaviour is chosen by the model name.

    ``m1`` / ``frontier-x``: a completion (or an SSE stream when ``stream`` is true);
    ``fault-500`` / ``fault-503``: that status with an OpenAI-shaped error body;
    ``fault-hang``: reads the request and never answers; ``fault-reset``: resets the
    connection (RST) without answering; ``fault-reset-mid``: starts a stream, then resets;
    ``fault-stall-mid``: starts a stream, then sends nothing more;
    ``fault-slow``: a stream whose chunks are ``SLOW_GAP_S`` apart. Every request body's last
    message is kept in :attr:`seen` (the harness checks that denied requests never arrive).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-upstream", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        def _close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(_close)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024))
        self._ready.set()
        self._loop.run_forever()
        tasks = asyncio.all_tasks(self._loop)      # handlers still open (a hang): end them
        for t in tasks:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                path = line.split()[1].decode() if len(line.split()) > 1 else "/"
                length = 0
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                body = await reader.readexactly(length) if length else b""
                if not await self._answer(path, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _answer(self, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        from distillguard.gateway.stub import completion, sse_chunks

        if path.startswith("/v1/models"):
            data = json.dumps({"object": "list", "data": [{"id": "m1"}]}).encode()
            await self._send(writer, 200, data)
            return True
        payload = json.loads(body)
        msgs = payload.get("messages") or [{}]
        with self._lock:
            self.seen.append(str(msgs[-1].get("content")))
        model = str(payload.get("model"))
        if model in ("fault-500", "fault-503"):
            status = int(model[-3:])
            err = {"error": {"message": "upstream overloaded", "type": "server_error",
                             "code": f"upstream_{status}", "param": None}}
            await self._send(writer, status, json.dumps(err).encode())
            return True
        if model == "fault-hang":
            await asyncio.sleep(3600)
            return False
        if model == "fault-reset":
            self._reset(writer)
            return False
        if not payload.get("stream"):
            await self._send(writer, 200, json.dumps(completion(model)).encode())
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunks = [f"data: {json.dumps(c)}\n\n".encode() for c in sse_chunks(model)]
        chunks.append(b"data: [DONE]\n\n")
        for i, c in enumerate(chunks):
            if model == "fault-reset-mid" and i == 3:
                await writer.drain()
                self._reset(writer)
                return False
            if model == "fault-stall-mid" and i == 3:
                await asyncio.sleep(3600)
            if model == "fault-slow" and i:
                await asyncio.sleep(SLOW_GAP_S)
            writer.write(b"%x\r\n%s\r\n" % (len(c), c))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, data: bytes) -> None:
        reason = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()


# ---------------------------------------------------------------------------- redis
class RedisServer:
    """A ``redis-server`` subprocess without persistence that can be killed and restarted."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start it; return the monotonic time it first answered a PING."""
        import redis

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return time.monotonic()
            except redis.RedisError:
                time.sleep(0.005)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> float:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        return time.monotonic()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(5)


# ---------------------------------------------------------------------------- gateway
class GatewayServer:
    """The gateway app served by a real uvicorn server in a thread of this process, with the
    HTTP protocol the CLI uses."""

    def __init__(self, app: Any, http: Any = None) -> None:
        import uvicorn

        from distillguard.gateway.cli import _http_protocol

        http = http or _http_protocol()         # the CLI's protocol (header deadline)
        self.port = free_port()
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical",
                             lifespan="on", backlog=2048, http=http)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


DENY_XX = {"id": "deny-xx", "effect": "deny", "models": ["frontier-*"],
           "users": {"country": ["XX"]}, "legal_reference": "REG-1"}
POLICY = {"version": "faults-1", "rules": [
    {"id": "suspend", "when": {"score_min": 0.6, "min_requests": 40}, "action": "suspend"},
    {"id": "throttle", "when": {"score_min": 0.5}, "action": "throttle", "params": {"rpm": 3}},
    {"id": "watch", "when": {"score_min": 0.2}, "action": "log"}]}


def build_gateway(upstream_url: str, state: Any, workdir: Path, **kw: Any) -> Any:
    from distillguard.gateway.app import create_app
    from distillguard.gateway.auth import KeyStore
    from distillguard.respond.audit import AuditLog
    from distillguard.respond.directives import Directive, DirectiveSet
    from distillguard.respond.online import OnlineScorer
    from distillguard.respond.policy import Policy

    keys = KeyStore({"sk-xx": {"account_id": "acct-xx", "country": "XX"}},
                    allow_account_header=True)
    workdir.mkdir(parents=True, exist_ok=True)
    kw.setdefault("timeout_s", TIMEOUT_S)
    kw.setdefault("max_body_bytes", MAX_BODY)
    return create_app(upstream_url, Policy.from_dict(POLICY),
                      DirectiveSet([Directive.from_dict(DENY_XX)]), OnlineScorer(state),
                      AuditLog(workdir / "audit.jsonl"), keys=keys, **kw)


# ---------------------------------------------------------------------------- traffic
@dataclass
class Probe:
    """One request and what a correct answer is."""

    kind: str                       # benign | denied | suspended | a fault name
    account: str
    model: str = "m1"
    stream: bool = False
    expect: int = 200               # expected status
    code: str | None = None         # expected error.code (None: a completion)
    stream_end: str = "done"        # streams: "done" ([DONE] seen) or "error" (error event)

    def request(self, i: int) -> tuple[dict[str, str], dict[str, Any]]:
        headers = {"Authorization": "Bearer sk-xx"} if self.account == "acct-xx" else \
            {"X-Account-Id": self.account}
        payload = {"model": self.model, "stream": self.stream, "messages": [
            {"role": "user", "content": f"acct={self.account} i={i}: translate 'good morning' "
                                        f"into French, please."}]}
        return headers, payload


@dataclass
class Outcome:
    kind: str
    account: str
    t: float
    latency: float
    status: int
    correct: bool
    wrong_allow: bool
    wrong_deny: bool
    detail: str = ""
    local: bool = False         # answered with X-Distillguard-Screening: local


# A request the gateway refused for who is asking (not an upstream error passed through).
DENY_CODES = {"distillguard_rate_limited", "distillguard_verification_required",
              "distillguard_account_suspended", "distillguard_access_denied",
              "distillguard_unavailable", "invalid_api_key"}


def _code(body: Any) -> str:
    try:
        err = json.loads(body).get("error") if isinstance(body, str | bytes) else body.get("error")
    except (ValueError, AttributeError):
        return ""
    return str(err.get("code") or "") if isinstance(err, dict) else ""


def send(client: httpx.Client, base: str, probe: Probe, i: int) -> Outcome:
    headers, payload = probe.request(i)
    t0 = time.monotonic()
    status, detail, ok, code, local = 0, "", False, "", False
    try:
        if probe.stream:
            with client.stream("POST", base + "/v1/chat/completions", json=payload,
                               headers=headers) as r:
                status = r.status_code
                local = r.headers.get("x-distillguard-screening") == "local"
                text = "".join(r.iter_text())
            code = _code(text) if status != 200 else ""
            if status != 200:
                ok = code == probe.code
            elif probe.stream_end == "done":
                    ok = "data: [DONE]" in text and "distillguard_upstream_error" not in text
            else:
                ok = "distillguard_upstream_error" in text and "[DONE]" not in text
            detail = "stream " + ("complete" if "[DONE]" in text else "cut") if status == 200 \
                else text[:200]
        else:
            r = client.post(base + "/v1/chat/completions", json=payload, headers=headers)
            status = r.status_code
            local = r.headers.get("x-distillguard-screening") == "local"
            body = r.json() if r.headers.get("content-type", "").startswith(
                "application/json") else {}
            code = _code(body)
            if probe.code is None:
                ok = status == 200 and bool(body.get("choices"))
            else:
                ok = code == probe.code
            detail = json.dumps(body.get("error"))[:200] if "error" in body else ""
    except httpx.HTTPError as exc:
        detail = f"client error: {type(exc).__name__}"
    lat = time.monotonic() - t0
    ok = ok and status == probe.expect
    allowed = status == 200
    denied = code in DENY_CODES
    should_deny = probe.kind in ("denied", "suspended")
    return Outcome(probe.kind, probe.account, t0, lat, status, ok,
                   wrong_allow=should_deny and allowed, wrong_deny=not should_deny and denied,
                   detail=detail, local=local)


BENIGN = [Probe("benign", f"benign-{k}", model="frontier-x" if k % 2 else "m1")
          for k in range(8)]
DENIED = Probe("denied", "acct-xx", model="frontier-x", expect=403,
               code="distillguard_access_denied")
SUSPENDED = Probe("suspended", "susp-1", expect=403, code="distillguard_account_suspended")


class Traffic:
    """Closed-loop clients cycling through ``probes`` until stopped."""

    def __init__(self, base: str, probes: list[Probe], clients: int = 4) -> None:
        self.base, self.probes, self.clients = base, probes, clients
        self.out: list[Outcome] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _loop(self, k: int) -> None:
        i = k
        with httpx.Client(timeout=15) as c:
            while not self._stop.is_set():
                o = send(c, self.base, self.probes[i % len(self.probes)], i)
                with self._lock:
                    self.out.append(o)
                i += self.clients

    def __enter__(self) -> Traffic:
        for k in range(self.clients):
            t = threading.Thread(target=self._loop, args=(k,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def summarize(name: str, out: list[Outcome], **extra: Any) -> dict[str, Any]:
    wrong = [o for o in out if not o.correct]
    if out and "max_latency_ms" not in extra:
        extra["max_latency_ms"] = round(1000 * max(o.latency for o in out), 1)
    return {"scenario": name, "requests": len(out),
            "correct": sum(o.correct for o in out),
            "wrong_allow": sum(o.wrong_allow for o in out),
            "wrong_deny": sum(o.wrong_deny for o in out),
            "incorrect_examples": [f"{o.kind}/{o.account}: {o.status} {o.detail}"
                                   for o in wrong[:5]], **extra}


def leaked(upstream: FaultUpstream) -> int:
    """Denied or suspended requests the upstream saw (must be 0)."""
    return sum(("acct=acct-xx" in s or "acct=susp-1" in s) for s in upstream.seen)


class _Alerts(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# ---------------------------------------------------------------------------- scenarios
def scenario_redis(work: Path, down_s: float = 2.0, cycles: int = 1,
                   fallback: bool = True) -> dict[str, Any]:
    """Redis SIGKILLed and restarted empty, then SIGSTOPped and resumed, under traffic.

    ``fallback=False`` runs the gateway on the bare RedisState with ``fail_mode="closed"``
    (the behaviour before FallbackState), for comparison.
    """
    import redis as redis_mod

    from distillguard.respond.state import FallbackState, RedisState

    srv = RedisServer(work / "redis")
    srv.start()
    primary = RedisState.from_url(srv.url, prefix="dg:")
    state: Any = FallbackState(primary, sync_interval_s=1.0) if fallback else primary
    primary.suspend("susp-1", {"rule": "operator", "ts": time.time()})
    alerts = _Alerts()
    logging.getLogger("distillguard.state").addHandler(alerts)
    up = FaultUpstream().start()
    gw = GatewayServer(build_gateway(up.url, state, work / "gw-redis")).start()
    rc = redis_mod.Redis.from_url(srv.url, socket_timeout=1, decode_responses=True)
    recoveries: list[dict[str, Any]] = []
    health: list[str] = []

    def wait_back(ready: float, how: str) -> None:
        deadline = time.monotonic() + 15
        while getattr(state, "degraded", False) and time.monotonic() < deadline:
            time.sleep(0.005)
        last = getattr(state, "last_recovery", None)
        back = last[1] if last else float("nan")
        acct = f"recovered-{len(recoveries)}"       # an account only this request uses
        with httpx.Client(timeout=10) as c:
            o = send(c, gw.url, Probe("benign", acct), 0)
        recoveries.append({"fault": how, "recovery_s": round(back - ready, 3),
                           "scored_on_redis_after": o.correct
                           and rc.hget(f"dg:a:{acct}", "n") == "1",
                           "suspension_in_redis": rc.get("dg:s:susp-1") is not None})

    def healthz() -> str:
        return str(httpx.get(gw.url + "/healthz", timeout=5).json().get("state_store"))

    try:
        with Traffic(gw.url, [*BENIGN, DENIED, SUSPENDED]) as tr:
            for _ in range(cycles):
                time.sleep(1.0)
                srv.kill()
                time.sleep(down_s / 2)
                health.append(healthz())
                time.sleep(down_s / 2)
                wait_back(srv.start(), "SIGKILL, restarted empty")
                time.sleep(1.0)
                srv.pause()
                time.sleep(down_s / 2)
                health.append(healthz())
                time.sleep(down_s / 2)
                wait_back(srv.resume(), "SIGSTOP, SIGCONT")
            time.sleep(0.5)
        out = tr.out
        alive = gw.alive
    finally:
        gw.stop()
        up.stop()
        srv.stop()
        logging.getLogger("distillguard.state").removeHandler(alerts)
    return summarize(
        "redis down and back" + ("" if fallback else " (no fallback, fail closed)"), out,
        upstream_saw_denied=leaked(up), gateway_alive=alive,
        outages=getattr(state, "outages", None),
        answered_on_local_state=sum(o.local for o in out),
        fallback_calls=getattr(state, "fallback_calls", None),
        alerts=sum("ALERT" in r.getMessage() for r in alerts.records),
        healthz_during_outage=health, recoveries=recoveries)


FAULTS = [
    Probe("upstream 500", "benign-0", model="fault-500", expect=500, code="upstream_500"),
    Probe("upstream 503", "benign-1", model="fault-503", expect=503, code="upstream_503"),
    Probe("upstream hang", "benign-2", model="fault-hang", expect=502,
          code="distillguard_upstream_error"),
    Probe("upstream reset", "benign-3", model="fault-reset", expect=502,
          code="distillguard_upstream_error"),
    Probe("reset mid-stream", "benign-4", model="fault-reset-mid", stream=True,
          stream_end="error"),
    Probe("stall mid-stream", "benign-4", model="fault-stall-mid", stream=True,
          stream_end="error"),
    Probe("slow stream", "benign-5", model="fault-slow", stream=True),
    Probe("benign", "benign-6"), Probe("benign stream", "benign-7", stream=True),
    DENIED, Probe("denied", "acct-xx", model="frontier-x", stream=True, expect=403,
          code="distillguard_access_denied"),
]


def scenario_upstream(work: Path, rounds: int = 3) -> dict[str, Any]:
    from distillguard.respond.state import MemoryState

    up = FaultUpstream().start()
    gw = GatewayServer(build_gateway(up.url, MemoryState(), work / "gw-up")).start()
    out: list[Outcome] = []
    try:
        with ThreadPoolExecutor(16) as ex, httpx.Client(timeout=15) as c:
            futs = [ex.submit(send, c, gw.url, p, r * 100 + j)
                    for r in range(rounds) for j, p in enumerate(FAULTS)]
            out = [f.result() for f in futs]
        hang = [o.latency for o in out if o.kind == "upstream hang"]
        with httpx.Client(timeout=5) as c:
            after = send(c, gw.url, BENIGN[0], 999).correct
        alive = gw.alive
    finally:
        gw.stop()
        up.stop()
    by_kind: dict[str, str] = {}
    for p in FAULTS:
        os_ = [o for o in out if o.kind == p.kind]
        by_kind[p.kind] = f"{sum(o.correct for o in os_)}/{len(os_)}"
    return summarize("upstream faults", out, upstream_saw_denied=leaked(up),
                     gateway_alive=alive, answers_after=after, by_fault=by_kind,
                     hang_answered_in_s=round(max(hang), 2) if hang else None)


def _raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes, read the answer; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # The gateway may answer (413) and close before an oversized body is all sent: the
        # send or the shutdown then fails, and the answer is still there to read.
        with contextlib.suppress(OSError):    # BrokenPipe, ConnectionReset, ENOTCONN
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


def _post(body: bytes, *, chunked: bool = False, length: int | None = None,
          account: str = "benign-0") -> bytes:
    h = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Account-Id: {account}\r\n"
         f"Content-Type: application/json\r\nConnection: close\r\n")
    if chunked:
        step = 16384
        enc = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                       for i in range(0, len(body), step)) + b"0\r\n\r\n"
        return (h + "Transfer-Encoding: chunked\r\n\r\n").encode() + enc
    return (h + f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
            ).encode() + body


def scenario_bodies(work: Path) -> dict[str, Any]:
    from distillguard.respond.state import MemoryState

    up = FaultUpstream().start()
    gw = GatewayServer(build_gateway(up.url, MemoryState(), work / "gw-bodies")).start()
    ok_msg = {"model": "m1", "messages": [{"role": "user", "content": "acct=bad hi"}]}
    big = json.dumps({**ok_msg, "messages": [{"role": "user",
                                              "content": "acct=bad " + "x" * 200_000}]})
    cases: list[tuple[str, bytes, int, str]] = [
        ("oversized, declared", _post(big.encode()), 413, "request_too_large"),
        ("oversized, chunked", _post(big.encode(), chunked=True), 413, "request_too_large"),
        ("oversized, lying Content-Length", _post(b"{}", length=10**12), 413,
         "request_too_large"),
        ("malformed JSON", _post(b'{"model": "m1", "messages": [acct=bad'), 400,
         "invalid_request"),
        ("not UTF-8", _post(b'{"model": "m1\xff\xfe", "messages": []}'), 400, "invalid_request"),
        ("nested 100,000 deep", _post(b"[" * 100_000 + b"]" * 100_000), 413,
         "request_too_large"),
        ("nested 30,000 deep", _post(b'{"model": "m1", "messages": ' + b"[" * 30000
                                     + b"]" * 30000 + b"}"), 400, "invalid_request"),
        ("wrong types", _post(json.dumps({"model": 1, "messages": "acct=bad"}).encode()), 400,
         "invalid_request"),
        ("empty body", _post(b""), 400, "invalid_request"),
        ("JSON array", _post(b"[1, 2, 3]"), 400, "invalid_request"),
        ("negative max_tokens", _post(json.dumps({**ok_msg, "max_tokens": -5}).encode()), 400,
         "invalid_request"),
        ("bad Content-Length", _post(b"{}", length=-1), 400, ""),
    ]
    out: list[Outcome] = []
    try:
        for name, data, expect, code in cases:
            t0 = time.monotonic()
            status, body = _raw(gw.port, data)
            try:
                got = json.loads(body).get("error", {}).get("code", "")
            except (ValueError, AttributeError):
                got = ""
            ok = status == expect and (not code or got == code)
            out.append(Outcome(name, "benign-0", t0, time.monotonic() - t0, status, ok,
                               False, False, f"code={got}"))
        with httpx.Client(timeout=5) as c:
            after = send(c, gw.url, BENIGN[0], 1).correct
        alive = gw.alive
    finally:
        gw.stop()
        up.stop()
    return summarize("oversized and malformed bodies", out,
                     upstream_saw_bad=sum("acct=bad" in s for s in up.seen),
                     gateway_alive=alive, answers_after=after,
                     by_case={o.kind: f"{o.status} {'ok' if o.correct else 'WRONG'}"
                              for o in out})


def scenario_slowloris(work: Path, clients: int = 200, hold_s: float = 4.0,
                       header_deadline: bool = True) -> dict[str, Any]:
    """Slow-header and slow-body clients hold connections; normal traffic must still pass.

    The gateway runs with the CLI's HTTP protocol (a 2 s header deadline here, 10 s by
    default); ``header_deadline=False`` runs uvicorn's own, which has none.
    """
    from distillguard.gateway.protocol import HeaderTimeoutProtocol
    from distillguard.respond.state import MemoryState

    class _Short(HeaderTimeoutProtocol):
        header_timeout_s = 2.0

    up = FaultUpstream().start()
    gw = GatewayServer(build_gateway(up.url, MemoryState(), work / "gw-slow",
                                     body_timeout_s=2.0),
                       http=_Short if header_deadline else "httptools").start()
    socks: list[socket.socket] = []
    slow_body_answers: list[int] = []
    stop = threading.Event()

    def drip() -> None:
        i = 0
        while not stop.is_set():
            for k, s in enumerate(socks):
                with contextlib_suppress():
                    s.send(b"X-Slow-%d: a\r\n" % i if k % 2 == 0 else b"a")
            i += 1
            stop.wait(0.5)

    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "acct=s"}]})
    try:
        for k in range(clients):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            if k % 2 == 0:      # slow headers: never finishes them
                s.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            else:               # slow body: headers done, body a byte per 0.5 s
                s.send(_post(body.encode())[: -len(body)] + body[:5].encode())
            socks.append(s)
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        with Traffic(gw.url, [*BENIGN, DENIED]) as tr:
            time.sleep(hold_s)
        stop.set()
        dripper.join(5)
        header_open = 0
        for k, s in enumerate(socks):
            s.settimeout(0.5 if k % 2 else 0.01)
            try:
                head = s.recv(200)
            except TimeoutError:
                head = None
            except ConnectionError:
                head = b""
            if k % 2 == 1:
                parts = (head or b"").split(b" ", 2)
                slow_body_answers.append(int(parts[1]) if len(parts) > 1 else 0)
            elif head is None:
                header_open += 1         # still held open by the server
        out = tr.out
        alive = gw.alive
    finally:
        for s in socks:
            s.close()
        gw.stop()
        up.stop()
    lat = sorted(o.latency for o in out)
    return summarize(
        f"slowloris ({clients} slow clients)", out, gateway_alive=alive,
        upstream_saw_denied=leaked(up),
        slow_body_408=sum(a == 408 for a in slow_body_answers),
        slow_body_clients=len(slow_body_answers), slow_header_clients_still_open=header_open,
        p99_ms=round(1000 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None)


class contextlib_suppress:
    """``contextlib.suppress(OSError)`` for the dripping sockets."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, OSError)


def scenario_burst(work: Path, base_rps: float = 40.0, factor: float = 10.0,
                   phase_s: float = 2.0) -> dict[str, Any]:
    """Open-loop traffic: base rate, factor x base rate, base rate again."""
    import aiohttp

    from distillguard.respond.state import MemoryState

    up = FaultUpstream().start()
    gw = GatewayServer(build_gateway(up.url, MemoryState(), work / "gw-burst")).start()
    probes = [*BENIGN, DENIED]
    out: list[tuple[str, Outcome]] = []

    async def one(sess: Any, phase: str, i: int) -> None:
        p = probes[i % len(probes)]
        headers, payload = p.request(i)
        t0 = time.monotonic()
        status, ok, code = 0, False, ""
        try:
            async with sess.post(gw.url + "/v1/chat/completions", json=payload,
                                 headers=headers) as r:
                status = r.status
                body = await r.json(content_type=None)
                code = _code(body)
                ok = status == p.expect and ((p.code is None and bool(body.get("choices")))
                                             or code == p.code)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        should_deny = p.kind == "denied"
        out.append((phase, Outcome(p.kind, p.account, t0, time.monotonic() - t0, status, ok,
                                   should_deny and status == 200,
                                   not should_deny and code in DENY_CODES)))

    async def drive() -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=0)) as sess:
            tasks = []
            i = 0
            start = time.monotonic()
            for phase, rps in (("base", base_rps), ("burst", base_rps * factor),
                               ("after", base_rps)):
                n = int(rps * phase_s)
                for k in range(n):
                    at = start + k / rps
                    await asyncio.sleep(max(0.0, at - time.monotonic()))
                    tasks.append(asyncio.create_task(one(sess, phase, i)))
                    i += 1
                start += phase_s
            await asyncio.gather(*tasks)

    try:
        asyncio.run(drive())
        alive = gw.alive
    finally:
        gw.stop()
        up.stop()
    phases: dict[str, Any] = {}
    for ph in ("base", "burst", "after"):
        lat = sorted(o.latency for p, o in out if p == ph)
        if lat:
            phases[ph] = {"n": len(lat), "p50_ms": round(1000 * lat[len(lat) // 2], 1),
                          "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1)}
    return summarize(f"{factor:g}x burst ({base_rps:g} -> {base_rps * factor:g} req/s)",
                     [o for _, o in out], gateway_alive=alive,
                     upstream_saw_denied=leaked(up), phases=phases)


def scenario_workers(work: Path, workers: int = 2, down_s: float = 2.0) -> dict[str, Any]:
    """``distillguard gateway --workers N --redis-url ...`` (the real CLI, subprocess) while
    Redis is SIGKILLed and restarted empty: the same checks, alerts read from its stderr."""
    import sys

    import redis as redis_mod
    import yaml

    from distillguard.respond.state import RedisState

    work.mkdir(parents=True, exist_ok=True)
    (work / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    (work / "directives.yaml").write_text(yaml.safe_dump(DENY_XX))
    (work / "keys.yaml").write_text(yaml.safe_dump(
        {"keys": {"sk-xx": {"account_id": "acct-xx", "country": "XX"}}}))
    srv = RedisServer(work / "redis")
    srv.start()
    RedisState.from_url(srv.url, prefix="dg:").suspend("susp-1", {"rule": "operator"})
    up = FaultUpstream().start()
    port = free_port()
    err = (work / "gateway.stderr").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillguard.cli", "gateway", "--upstream", up.url,
         "--port", str(port), "--workers", str(workers), "--redis-url", srv.url,
         "--policy", str(work / "policy.yaml"), "--directives", str(work / "directives.yaml"),
         "--keys", str(work / "keys.yaml"), "--allow-account-header",
         "--audit", str(work / "audit.jsonl"), "--request-log", str(work / "requests.jsonl")],
        stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    rc = redis_mod.Redis.from_url(srv.url, socket_timeout=1, decode_responses=True)
    recovery = float("nan")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("gateway CLI did not start")
            time.sleep(0.1)
        with Traffic(base, [*BENIGN, DENIED, SUSPENDED]) as tr:
            time.sleep(2.0)        # every worker serves (and reads the suspension) first
            srv.kill()
            time.sleep(down_s)
            ready = srv.start()
            # back when fresh accounts' requests land in Redis and the suspension is back
            k = 0
            with httpx.Client(timeout=10) as c:
                while time.monotonic() - ready < 15:
                    acct = f"recovered-{k}"
                    send(c, base, Probe("benign", acct), 0)
                    k += 1
                    if rc.hget(f"dg:a:{acct}", "n") == "1" and rc.get("dg:s:susp-1"):
                        recovery = time.monotonic() - ready
                        break
                    time.sleep(0.01)
            time.sleep(1.0)
        out = tr.out
        alive = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        err.close()
        up.stop()
        srv.stop()
    log = (work / "gateway.stderr").read_text("utf-8", "replace")
    return summarize(
        f"gateway CLI, {workers} workers, Redis SIGKILLed and restarted empty", out,
        upstream_saw_denied=leaked(up), gateway_alive=alive,
        alerts=log.count("ALERT state store down"), back=log.count("state store back"),
        answered_on_local_state=sum(o.local for o in out),
        recovery_s=round(recovery, 3))


def scenario_redis_closed(work: Path, **kw: Any) -> dict[str, Any]:
    """The Redis scenario without the fallback (fail closed): the behaviour before it."""
    return {**scenario_redis(work, fallback=False, **kw), "reference": True}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "redis": scenario_redis, "upstream": scenario_upstream, "bodies": scenario_bodies,
    "slowloris": scenario_slowloris, "burst": scenario_burst, "workers": scenario_workers,
    "redis-closed": scenario_redis_closed}
DEFAULT = ["redis", "upstream", "bodies", "slowloris", "burst", "workers"]


def run_faults(work: Path, only: list[str] | None = None, long: bool = False) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in only or DEFAULT:
        if name in ("redis", "redis-closed", "workers") and shutil.which("redis-server") is None:
            results.append({"scenario": "redis down and back", "skipped": "no redis-server"})
            continue
        kw: dict[str, Any] = {}
        if long:
            kw = {"redis": {"cycles": 3, "down_s": 4.0}, "redis-closed": {"down_s": 4.0},
                  "upstream": {"rounds": 10},
                  "slowloris": {"clients": 400, "hold_s": 10.0},
                  "burst": {"phase_s": 5.0}, "workers": {"down_s": 4.0}}.get(name, {})
        t0 = time.monotonic()
        res = SCENARIOS[name](work / name, **kw)
        res["seconds"] = round(time.monotonic() - t0, 1)
        results.append(res)
    return results


def ok(res: dict[str, Any]) -> bool:
    if "skipped" in res or res.get("reference"):     # redis-closed: expected to fail
        return True
    return (res["correct"] == res["requests"] and res["wrong_allow"] == 0
            and res["wrong_deny"] == 0 and res.get("gateway_alive", True)
            and res.get("upstream_saw_denied", 0) == 0 and res.get("upstream_saw_bad", 0) == 0
            and res.get("answers_after", True))


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| scenario | requests | correct | wrong allow | wrong deny | notes |",
            "|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            rows.append(f"| {r['scenario']} | - | - | - | - | skipped: {r['skipped']} |")
            continue
        notes = {k: v for k, v in r.items() if k not in (
            "scenario", "requests", "correct", "wrong_allow", "wrong_deny",
            "incorrect_examples", "reference") and v not in (None, [], {})}
        if r["incorrect_examples"]:
            notes["incorrect"] = r["incorrect_examples"]
        rows.append(f"| {r['scenario']} | {r['requests']} | {r['correct']} | "
                    f"{r['wrong_allow']} | {r['wrong_deny']} | {json.dumps(notes)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distillguard.bench.faults")
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", action="append", choices=list(SCENARIOS))
    ap.add_argument("--long", action="store_true", default=os.environ.get("DG_LONG") == "1")
    a = ap.parse_args(argv)
    results = run_faults(a.out, a.only, a.long)
    (a.out / "faults.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0 if all(ok(r) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
