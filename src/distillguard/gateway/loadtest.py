"""Load test: the gateway's added latency at a constant arrival rate (open loop), as a table.

    python -m distillguard.gateway.loadtest --rate 250 500 --workers 1 2 --duration 10

Starts the stub upstream (:func:`distillguard.gateway.stub.lean_stub_app`, one uvicorn
process) and the gateway (uvicorn, ``--workers`` processes; packaged policy and example
directives; audit log and canonical request log written to a temporary directory, one file
pair per worker; MemoryState for one worker, a private ``redis-server`` shared by the workers
for more than one) on 127.0.0.1, then for each rate sends the same load **directly to the
stub** and **through the gateway**, interleaved ``--repeat`` times (default 3), and prints
one table of medians over the repeats (a burst of other load during one run does not decide
a row). The temporary directory is removed at the end.

The load generator runs in this process (uvloop when installed, raw HTTP/1.1 keep-alive
connections, one request in flight per connection, up to ``--max-connections``). It is
**open loop**: request *i* is due at ``t0 + i / rate`` whatever happened to earlier ones; a
request that finds no idle connection opens one (or waits for one at the cap), and latency is
measured from the *due* time, so queueing anywhere (generator, gateway, stub) shows in the
percentiles instead of lowering the rate (no coordinated omission). Added latency = through
the gateway minus direct, same rate, same generator, percentile by percentile.

Columns: achieved throughput (completed / elapsed), p50/p90/p99/max latency, errors
(connection errors, non-2xx, no answer within 10 s), the generator's own send lag p99 (due →
written; large values mean the generator itself was starved of CPU), the run-queue wait of
the process under test (the stub for "direct", the gateway workers otherwise: milliseconds
per second spent runnable but without a CPU, from ``/proc/*/schedstat`` — the starvation
that shows up as p99 on a shared machine), and CPU milliseconds per request of the gateway
processes (all workers, from ``/proc``), of Redis, of the stub and of the generator. The generator, the stub, Redis and the gateway all share the
machine's cores: on a 2-core machine that is part of what the figures measure.

``--gateway-env KEY=VALUE`` passes settings to the gateway processes (see
:func:`gateway_app`); ``--plain`` uses asyncio + h11 instead of uvloop + httptools.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = ('{"model": "m1", "messages": [{"role": "user", "content": '
        '"Explain how a hash map handles collisions, with a short example."}]}')
ACCOUNTS = 50
TIMEOUT_S = 10.0


def gateway_app() -> Any:
    """uvicorn factory for a gateway process; configured by environment variables.

    ``DG_UPSTREAM`` (required), ``DG_TMP`` (audit/request-log directory; files are named
    after the worker's pid), ``DG_REDIS`` (Redis URL: shared state across workers),
    ``DG_OTEL=1`` (SDK TracerProvider with a no-op exporter, to measure tracing cost),
    ``DG_NO_LOGS=1`` (no audit, no request log).
    """
    from importlib import resources

    from distillguard.gateway.app import create_app
    from distillguard.respond import (
        AuditLog,
        MemoryState,
        OnlineScorer,
        RedisState,
        load_directives,
        load_policy,
    )

    tmp = Path(os.environ.get("DG_TMP") or tempfile.mkdtemp(prefix="dg-load-"))
    if os.environ.get("DG_OTEL") == "1":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        class _Null(SpanExporter):
            def export(self, spans: Any) -> Any:
                from opentelemetry.sdk.trace.export import SpanExportResult
                return SpanExportResult.SUCCESS

        tp = TracerProvider()
        tp.add_span_processor(BatchSpanProcessor(_Null()))
        trace.set_tracer_provider(tp)
    ds = load_directives(Path(str(resources.files("distillguard").joinpath("data/directives"))))
    no_logs = os.environ.get("DG_NO_LOGS") == "1"
    redis_url = os.environ.get("DG_REDIS")
    state = RedisState.from_url(redis_url) if redis_url else MemoryState()
    pid = os.getpid()
    return create_app(os.environ["DG_UPSTREAM"], load_policy(), ds, OnlineScorer(state),
                      None if no_logs else AuditLog(tmp / f"audit-{pid}.jsonl"),
                      request_log=None if no_logs else tmp / f"requests-{pid}.jsonl",
                      freeze_gc=True)


# ------------------------------------------------------------------ processes

def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _uvicorn(target: str, port: int, env: dict[str, str], workers: int = 1,
             fast: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "uvicorn", target, "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if fast:
        for name, opt in (("uvloop", "--loop"), ("httptools", "--http")):
            try:
                __import__(name)
            except ImportError:
                continue
            cmd += [opt, name]
    else:
        cmd += ["--loop", "asyncio", "--http", "h11"]
    return subprocess.Popen(cmd, env={**os.environ, **env})


def _redis(port: int, tmp: Path) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (apt-get install -y redis-server); "
                         "several workers share their state through Redis")
    return subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp), "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL)


def _wait(port: int, timeout: float = 30.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        res = asyncio.run(_drive(port, 20, 0.1, timeout=2.0))
        if res["ok"] == res["n"] and res["n"]:
            return
        time.sleep(0.3)
    raise RuntimeError(f"127.0.0.1:{port} did not come up")


def _pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in t.read_text().split()]
            except OSError:
                pass
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (Linux /proc), 0 elsewhere."""
    total = 0.0
    for p in _pids(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _runq_wait_s(pid: int) -> float:
    """Seconds the threads of a process tree spent runnable but waiting for a CPU (schedstat)."""
    total = 0.0
    for p in _pids(pid):
        for t in Path(f"/proc/{p}/task").glob("*/schedstat"):
            try:
                total += int(t.read_text().split()[1]) / 1e9
            except (OSError, IndexError, ValueError):
                pass
    return total


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ open-loop generator

_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, gen: _Gen) -> None:
        self.gen, self.tr, self.buf, self.need = gen, None, bytearray(), -1
        self.chunked, self.status, self.due = False, 0, 0.0
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.tr = transport

    def send(self, req: bytes, due: float) -> None:
        self.busy, self.buf, self.need, self.chunked = True, bytearray(), -1, False
        self.tr.write(req)
        now = time.perf_counter()
        # Timers wake up to ~1 ms early or late: latency counts from the due time, or from
        # the write when that was earlier (never less than the request really took).
        self.due = min(due, now)
        self.gen.lag.append(max(0.0, now - due))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0 and not self.chunked:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i])
            self.status = int(head[9:12])
            m = _CL.search(head)
            if m:
                self.need = i + 4 + int(m.group(1))
            elif b"chunked" in head.lower():
                self.chunked = True
            else:
                self.need = i + 4
        if (self.chunked and self.buf.endswith(b"0\r\n\r\n")) or \
                (not self.chunked and len(self.buf) >= self.need):
            self.busy = False
            self.gen.done(self, self.status, time.perf_counter() - self.due)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class _Gen:
    def __init__(self, port: int, max_conns: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.port, self.max_conns = port, max_conns
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.opening = 0
        self.queue: collections.deque[tuple[bytes, float]] = collections.deque()
        self.lat: list[float] = []
        self.lag: list[float] = []
        self.status: collections.Counter[int] = collections.Counter()
        self.errors = 0
        self.outstanding = 0
        self.last_done = 0.0
        self.submitted_all = False
        self.finished = asyncio.Event()

    def submit(self, req: bytes, due: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(req, due)
        else:
            self.queue.append((req, due))
            if len(self.conns) + self.opening < self.max_conns:
                self.opening += 1
                self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            _, c = await self.loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
        except OSError:
            self.opening -= 1
            if self.queue:
                self.queue.popleft()
                self._finish_one(error=True)
            return
        self.opening -= 1
        self.conns.add(c)
        self._next(c)

    def _next(self, c: _Conn) -> None:
        if self.queue:
            req, due = self.queue.popleft()
            c.send(req, due)
        else:
            self.idle.append(c)

    def _finish_one(self, error: bool) -> None:
        self.errors += error
        self.outstanding -= 1
        self.last_done = time.perf_counter()
        if self.outstanding == 0 and self.submitted_all:
            self.finished.set()

    def done(self, c: _Conn, status: int, latency: float) -> None:
        self.status[status] += 1
        self.lat.append(latency)
        self._finish_one(error=not 200 <= status < 300)
        self._next(c)

    def lost(self, c: _Conn) -> None:
        self.conns.discard(c)
        if c in self.idle:
            self.idle.remove(c)
        if c.busy:
            c.busy = False
            self._finish_one(error=True)

    def close(self) -> None:
        for c in list(self.conns):
            if c.tr is not None:
                c.tr.close()


def _requests(port: int) -> list[bytes]:
    body = BODY.encode()
    return [(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
             f"Content-Type: application/json\r\nX-Account-Id: load-{i}\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode() + body for i in range(ACCOUNTS)]


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _drive(port: int, rate: float, duration: float, max_conns: int = 512,
                 timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Open-loop load: ``rate * duration`` requests, request i due at t0 + i / rate."""
    gen = _Gen(port, max_conns)
    reqs = _requests(port)
    n = max(1, int(rate * duration))
    clock = time.perf_counter       # the loop's clock may have 1 ms resolution (uvloop)
    t0 = clock() + 0.01
    i = 0
    while i < n:
        now = clock()
        while i < n and t0 + i / rate <= now + 0.0005:
            gen.submit(reqs[i % len(reqs)], t0 + i / rate)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - clock()))
    gen.submitted_all = True
    if gen.outstanding == 0:
        gen.finished.set()
    try:
        await asyncio.wait_for(gen.finished.wait(), timeout)
    except TimeoutError:
        pass
    unanswered = gen.outstanding
    elapsed = max(gen.last_done - t0, n / rate)
    gen.close()
    lat = sorted(x * 1000 for x in gen.lat)
    lag = sorted(x * 1000 for x in gen.lag)
    ok = sum(v for k, v in gen.status.items() if 200 <= k < 300)
    return {"n": n, "ok": ok, "rps": ok / elapsed, "errors": gen.errors + unanswered,
            "p50": _pct(lat, 0.50), "p90": _pct(lat, 0.90), "p99": _pct(lat, 0.99),
            "max": lat[-1] if lat else float("nan"), "lag_p99": _pct(lag, 0.99),
            "conns": len(gen.conns)}


def _run_load(port: int, rate: float, duration: float, max_conns: int) -> dict[str, Any]:
    try:
        import uvloop
        return uvloop.run(_drive(port, rate, duration, max_conns))
    except ImportError:
        return asyncio.run(_drive(port, rate, duration, max_conns))


# ------------------------------------------------------------------ matrix

def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per statistic, the median over repeated runs (errors: the sum)."""
    out: dict[str, Any] = {}
    for k, v in runs[0].items():
        vals = [r[k] for r in runs]
        if k == "errors":
            out[k] = sum(vals)
        elif v is None or not isinstance(v, int | float):
            out[k] = v
        else:
            out[k] = statistics.median(vals)
    return out


def run(rates: list[int], workers: list[int], duration: int = 10, max_conns: int = 512,
        gateway_env: dict[str, str] | None = None, fast: bool = True,
        repeat: int = 3) -> list[dict[str, Any]]:
    """Measure every (workers, rate) pair; one row per path (direct, gateway).

    Each pair is measured ``repeat`` times, direct and gateway interleaved, and every figure
    of a row is the median over the repeats (errors are summed), so that a burst of other
    load on the machine during one run does not decide the result.
    """
    tmp = Path(tempfile.mkdtemp(prefix="dg-load-"))
    up_port = _port()
    procs = [_uvicorn("distillguard.gateway.stub:lean_stub_app", up_port, {}, 1, fast)]
    rows: list[dict[str, Any]] = []
    try:
        _wait(up_port)
        for w in workers:
            gw_port, extra = _port(), []
            env = {"DG_UPSTREAM": f"http://127.0.0.1:{up_port}", "DG_TMP": str(tmp / f"w{w}"),
                   **(gateway_env or {})}
            (tmp / f"w{w}").mkdir()
            if w > 1 and "DG_REDIS" not in env:
                rport = _port()
                extra.append(_redis(rport, tmp))
                env["DG_REDIS"] = f"redis://127.0.0.1:{rport}/0"
                time.sleep(0.5)
            gw = _uvicorn("distillguard.gateway.loadtest:gateway_app", gw_port, env, w, fast)
            try:
                _wait(gw_port)
                for rate in rates:
                    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
                    for k in range(repeat):           # interleaved: direct, gateway, ...
                        for path, port in (("direct", up_port), ("gateway", gw_port)):
                            if k == 0:
                                _run_load(port, rate, 2, max_conns)     # warm-up
                            target = gw.pid if path == "gateway" else procs[0].pid
                            c0 = (_cpu_s(gw.pid), sum(_cpu_s(p.pid) for p in extra),
                                  _cpu_s(procs[0].pid), _self_cpu_s(), _runq_wait_s(target))
                            t_start = time.perf_counter()
                            r = _run_load(port, rate, duration, max_conns)
                            wall = time.perf_counter() - t_start
                            c1 = (_cpu_s(gw.pid), sum(_cpu_s(p.pid) for p in extra),
                                  _cpu_s(procs[0].pid), _self_cpu_s(), _runq_wait_s(target))
                            per = [(y - x) * 1000 / max(r["n"], 1)
                                   for x, y in zip(c0[:4], c1[:4], strict=True)]
                            r.update(gw_cpu=per[0], redis_cpu=per[1] if extra else None,
                                     stub_cpu=per[2], gen_cpu=per[3], load=os.getloadavg()[0],
                                     runq=(c1[4] - c0[4]) * 1000 / wall)
                            runs[path].append(r)
                    for path, rs in runs.items():
                        rows.append({**_median(rs), "workers": w, "rate": rate, "path": path,
                                     "repeat": repeat})
            finally:
                for p in (gw, *extra):
                    p.terminate()
                for p in (gw, *extra):
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any, d: int = 2) -> str:
        return "–" if v is None or v != v else f"{v:.{d}f}"

    out = ["| workers | target rps | path | achieved rps | p50 ms | p90 ms | p99 ms | max ms "
           "| errors | gen lag p99 ms | run-queue wait ms/s | gateway CPU ms/req "
           "| redis CPU ms/req | stub CPU ms/req | generator CPU ms/req | load avg |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["workers"], r["rate"], r["path"]): r for r in rows}
    for w, rate in dict.fromkeys((r["workers"], r["rate"]) for r in rows):
        for path in ("direct", "gateway"):
            r = by[(w, rate, path)]
            gw = path == "gateway"
            out.append(f"| {w} | {rate} | {path} | {r['rps']:.0f} | {f(r['p50'])} "
                       f"| {f(r['p90'])} | {f(r['p99'])} | {f(r['max'])} | {r['errors']} "
                       f"| {f(r['lag_p99'])} | {f(r['runq'], 0)} "
                       f"| {f(r['gw_cpu'], 3) if gw else '–'} "
                       f"| {f(r['redis_cpu'], 3) if gw else '–'} | {f(r['stub_cpu'], 3)} "
                       f"| {f(r['gen_cpu'], 3)} | {r['load']:.1f} |")
        d, g = by[(w, rate, "direct")], by[(w, rate, "gateway")]
        out.append(f"| {w} | {rate} | **added** | | **{f(g['p50'] - d['p50'])}** "
                   f"| **{f(g['p90'] - d['p90'])}** | **{f(g['p99'] - d['p99'])}** "
                   "| | | | | | | | | |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, nargs="+", default=[250, 500],
                    help="target request rates (requests/s)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="gateway worker processes (>1: shared state in a private Redis)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per (workers, rate, path), interleaved; the table shows medians")
    ap.add_argument("--max-connections", type=int, default=512)
    ap.add_argument("--plain", action="store_true",
                    help="asyncio loop and h11 even when uvloop/httptools are installed")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in a.gateway_env)
    gc.collect()
    gc.freeze()                     # the generator's own pauses would show as latency
    rows = run(a.rate, a.workers, a.duration, a.max_connections, env, not a.plain, a.repeat)
    print(f"{os.cpu_count()} CPUs; generator, stub, Redis and gateway share them. Latency "
          f"from each request's due time (open loop); medians of {a.repeat} interleaved runs "
          f"of {a.duration} s; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}.")
    print(table(rows))


if __name__ == "__main__":
    main()
