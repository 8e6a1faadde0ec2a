"""Load test: added latency of the gateway at a fixed request rate, three separate processes.

    python -m distillguard.gateway.loadtest --rate 500 --duration 10

Starts the stub upstream and the gateway as two ``uvicorn`` processes on 127.0.0.1 (one
worker each, MemoryState, the packaged policy and example directives, audit and request log
written to a temporary directory) and drives them with ``wrk`` (third process) and a Lua
script that POSTs a chat completion and paces each connection so the total rate is about
``--rate`` requests/s. It measures the stub directly, then through the gateway, and prints a
table of p50/p90/p99 latency and the difference (the gateway's added latency).

``wrk`` (``apt-get install wrk``) is closed-loop: each connection waits ``delay`` ms after a
response before sending the next request, so the achieved rate is reported next to the
target. ``--gateway-env KEY=VALUE`` passes settings to the gateway process (see
:func:`gateway_app`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BODY = ('{"model": "m1", "messages": [{"role": "user", "content": '
        '"Explain how a hash map handles collisions, with a short example."}]}')

LUA = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  wrk.headers["X-Account-Id"] = "load-" .. (counter %% 50)
  return wrk.format(nil, "/v1/chat/completions")
end
delay = function()
  return %(delay_ms)d
end
"""


def gateway_app() -> Any:
    """uvicorn factory for the gateway process; configured by environment variables.

    ``DG_UPSTREAM`` (required), ``DG_TMP`` (audit/request-log directory), ``DG_OTEL=1``
    (install an SDK TracerProvider with a no-op exporter, to measure tracing cost),
    ``DG_NO_LOGS=1`` (no audit, no request log).
    """
    from importlib import resources

    from distillguard.gateway.app import create_app
    from distillguard.respond import AuditLog, OnlineScorer, load_directives, load_policy

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
    return create_app(os.environ["DG_UPSTREAM"], load_policy(), ds, OnlineScorer(),
                      None if no_logs else AuditLog(tmp / "audit.jsonl"),
                      request_log=None if no_logs else tmp / "requests.jsonl")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(target: str, port: int, env: dict[str, str], factory: bool,
           fast: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]
    if factory:
        cmd.append("--factory")
    for name in ("uvloop", "httptools") if fast else ():
        try:
            __import__(name)
        except ImportError:
            continue
        cmd += ["--loop" if name == "uvloop" else "--http", name]
    if not fast:
        cmd += ["--loop", "asyncio", "--http", "h11"]
    return subprocess.Popen(cmd, env={**os.environ, **env})


def _wait(url: str, timeout: float = 30.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            httpx.post(url + "/v1/chat/completions", content=BODY,
                       headers={"X-Account-Id": "warm", "Content-Type": "application/json"},
                       timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, rate: int, duration: int, conns: int, script: Path) -> dict[str, float]:
    # each connection: rate/conns requests per second → delay = conns/rate s minus ~latency
    delay_ms = max(0, int(1000 * conns / rate) - 1)
    script.write_text(LUA % {"body": BODY, "delay_ms": delay_ms})
    out = subprocess.run(["wrk", "-t", "1", "-c", str(conns), "-d", f"{duration}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True,
                         timeout=duration + 30).stdout
    res: dict[str, float] = {}
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s*{q}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            res[f"p{q}"] = float(m.group(1)) * _UNIT[m.group(2)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = float(m.group(1)) if m else 0.0
    return res


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 elsewhere."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(rate: int = 500, duration: int = 10, conns: int = 10,
        gateway_env: dict[str, str] | None = None, fast: bool = True
        ) -> dict[str, dict[str, float]]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (apt-get install -y wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="dg-load-"))
    up_port, gw_port = _port(), _port()
    up_url, gw_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    procs = [_start("distillguard.gateway.stub:stub_app", up_port, {}, True, fast)]
    try:
        _wait(up_url)
        procs.append(_start("distillguard.gateway.loadtest:gateway_app", gw_port,
                            {"DG_UPSTREAM": up_url, "DG_TMP": str(tmp), **(gateway_env or {})},
                            True, fast))
        _wait(gw_url)
        out = {}
        for name, url in (("direct", up_url), ("gateway", gw_url)):
            _wrk(url, rate, 2, conns, tmp / "warm.lua")          # warm-up
            cpu0 = _cpu_s(procs[-1].pid)
            out[name] = _wrk(url, rate, duration, conns, tmp / "load.lua")
            n = out[name]["rps"] * duration
            # CPU per request of the gateway process (insensitive to other load).
            out[name]["gw_cpu_ms"] = (_cpu_s(procs[-1].pid) - cpu0) * 1000 / n if n else 0.0
        return out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def table(res: dict[str, dict[str, float]]) -> str:
    rows = ["| | rps | p50 ms | p90 ms | p99 ms | non-2xx | gateway CPU ms/req |",
            "|---|---|---|---|---|---|---|"]
    for name in ("direct", "gateway"):
        r = res[name]
        rows.append(f"| {name} | {r['rps']:.0f} | {r.get('p50', 0):.2f} | {r.get('p90', 0):.2f} "
                    f"| {r.get('p99', 0):.2f} | {r['non2xx']:.0f} | "
                    + (f"{r['gw_cpu_ms']:.3f} |" if name == "gateway" else "– |"))
    d, g = res["direct"], res["gateway"]
    rows.append("| **added** | | " + " | ".join(
        f"**{g.get(q, 0) - d.get(q, 0):.2f}**" for q in ("p50", "p90", "p99")) + " | | |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--plain", action="store_true",
                    help="asyncio loop and h11 even when uvloop/httptools are installed")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in a.gateway_env)
    print(table(run(a.rate, a.duration, a.connections, env, not a.plain)))


if __name__ == "__main__":
    main()
