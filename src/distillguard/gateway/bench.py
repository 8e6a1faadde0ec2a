"""Latency benchmark: p50/p99 added by the gateway vs calling a stub upstream directly.

    python -m distillguard.gateway.bench --n 500

Starts the stub upstream and the gateway with uvicorn on free 127.0.0.1 ports, sends the same
non-streaming request ``n`` times to each, and prints JSON with p50/p99 of both and the
difference, plus the Cedar directive decision latency. Numbers depend on the machine; the
stub answers instantly, so the difference is the gateway's own cost (parse, auth, Cedar,
scoring, policy, forwarding, audit, request log).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def _serve(app: Any) -> tuple[Any, str]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(n: int = 500) -> dict[str, Any]:
    """Measure and return the latency summary (milliseconds)."""
    from distillguard.gateway.app import create_app
    from distillguard.gateway.stub import stub_app
    from distillguard.respond import (
        AuditLog,
        DirectiveSet,
        OnlineScorer,
        UserAttrs,
        load_directives,
        load_policy,
    )

    tmp = Path(tempfile.mkdtemp(prefix="dg-bench-"))
    from importlib import resources
    ds = load_directives(Path(str(resources.files("distillguard").joinpath("data/directives"))))
    up_server, up_url = _serve(stub_app())
    app = create_app(up_url, load_policy(), ds, OnlineScorer(), AuditLog(tmp / "audit.jsonl"),
                     request_log=tmp / "requests.jsonl")
    gw_server, gw_url = _serve(app)
    body = {"model": "m1", "messages": [{"role": "user", "content":
            "Explain how a hash map handles collisions, with a short example."}]}
    out: dict[str, Any] = {"n": n}
    try:
        with httpx.Client(timeout=10) as c:
            for name, url in (("direct", up_url), ("gateway", gw_url)):
                for _ in range(20):       # warm-up
                    c.post(url + "/v1/chat/completions", json=body,
                           headers={"X-Account-Id": "bench"})
                lat = []
                for i in range(n):
                    t0 = time.perf_counter()
                    r = c.post(url + "/v1/chat/completions", json=body,
                               headers={"X-Account-Id": f"bench-{i % 50}"})
                    lat.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                out[name] = {"p50_ms": round(statistics.median(lat), 3),
                             "p99_ms": round(_pct(lat, 0.99), 3)}
    finally:
        gw_server.should_exit = up_server.should_exit = True
    out["added_p50_ms"] = round(out["gateway"]["p50_ms"] - out["direct"]["p50_ms"], 3)
    out["added_p99_ms"] = round(out["gateway"]["p99_ms"] - out["direct"]["p99_ms"], 3)
    lat = [ds.check("a", "frontier-1", UserAttrs(country="US")).latency_us for _ in range(2000)]
    empty = DirectiveSet([])
    lat0 = [empty.check("a", "m1", UserAttrs()).latency_us for _ in range(2000)]
    out["directive_check_us"] = {"p50": round(statistics.median(lat), 1),
                                 "p99": round(_pct(lat, 0.99), 1),
                                 "p50_no_directives": round(statistics.median(lat0), 1)}
    sc = OnlineScorer()
    from distillguard.respond.online import RequestView
    t0 = time.perf_counter()
    for i in range(2000):
        sc.observe(RequestView(f"a{i % 100}", "m1", 1.7e9 + i, body["messages"][0]["content"]))
    out["online_observe_us"] = round((time.perf_counter() - t0) / 2000 * 1e6, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    print(json.dumps(run(ap.parse_args().n), indent=2))


if __name__ == "__main__":
    main()
