"""The gateway under faults, with real components (distillguard.bench.faults).

A real redis-server is SIGKILLed / SIGSTOPped under traffic; a real HTTP upstream fails,
hangs, resets and streams slowly; slow clients hold raw sockets; a 10x burst. Short profile
here; ``DG_LONG=1`` runs the long one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from distillguard.bench import faults

LONG = os.environ.get("DG_LONG") == "1"
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server not on PATH")


def _assert_ok(res: dict) -> None:
    assert res["wrong_allow"] == 0, res
    assert res["wrong_deny"] == 0, res
    assert res["correct"] == res["requests"] > 0, res
    assert res.get("gateway_alive", True), res
    assert res.get("upstream_saw_denied", 0) == 0, res


@needs_redis
def test_redis_down_and_back(tmp_path: Path) -> None:
    kw = {"cycles": 3, "down_s": 4.0} if LONG else {}
    res = faults.scenario_redis(tmp_path, **kw)
    _assert_ok(res)
    assert res["outages"] == len(res["recoveries"]) and res["alerts"] == res["outages"]
    assert res["healthz_during_outage"] == ["fallback"] * res["outages"]
    assert 0 < res["answered_on_local_state"] < res["requests"]   # marked while degraded
    for rec in res["recoveries"]:
        assert rec["recovery_s"] < 1.0, rec          # probe every 0.25 s
        assert rec["scored_on_redis_after"] and rec["suspension_in_redis"], rec


@needs_redis
def test_without_fallback_an_outage_denies_and_a_restart_unsuspends(tmp_path: Path) -> None:
    """The behaviour before FallbackState, kept measurable: fail-closed 503s for everyone,
    and a Redis restarted empty forgets its suspensions (the suspended account passes)."""
    res = faults.scenario_redis(tmp_path, fallback=False)
    assert res["wrong_deny"] > 0 and res["wrong_allow"] > 0


@needs_redis
def test_fallback_replays_outage_suspensions(tmp_path: Path, caplog) -> None:
    from distillguard.respond.state import FallbackState, RedisState

    srv = faults.RedisServer(tmp_path / "r")
    srv.start()
    try:
        primary = RedisState.from_url(srv.url, prefix="f:")
        primary.suspend("elsewhere", {"rule": "console"})      # made by another worker
        primary.r.set("f:s:legacy", '{"rule": "before the index"}')
        st = FallbackState(primary, probe_interval_s=0.05, sync_interval_s=None)
        assert st.sync_suspensions() == 2          # the first sync also SCANs
        assert primary.r.sismember("f:susp", "legacy")
        primary.unsuspend("legacy")
        assert st.sync_suspensions() == 1 and not primary.r.sismember("f:susp", "legacy")
        st.suspend("old", {"rule": "r0"})
        primary.globals("m", 1.0)                      # the store's t0 exists
        srv.pause()
        with caplog.at_level(logging.WARNING, logger="distillguard.state"):
            assert st.suspended("old") == {"rule": "r0"}        # fails over, still enforced
            assert st.degraded
            assert st.suspended("elsewhere") == {"rule": "console"}
            st.suspend("new", {"rule": "r1"})
            st.unsuspend("old")
            assert st.suspended("old") is None
            srv.resume()
            deadline = time.monotonic() + 5
            while st.degraded and time.monotonic() < deadline:
                time.sleep(0.01)
        assert not st.degraded
        assert any("ALERT state store down" in r.getMessage() for r in caplog.records)
        assert any("state store back" in r.getMessage() for r in caplog.records)
        assert primary.suspended("new") == {"rule": "r1"}
        assert primary.suspended("old") is None
        # A restart without persistence: the suspensions this worker knew are written back.
        srv.kill()
        assert st.suspended("new") == {"rule": "r1"} and st.degraded
        srv.start()
        deadline = time.monotonic() + 5
        while st.degraded and time.monotonic() < deadline:
            time.sleep(0.01)
        assert primary.suspended("new") == {"rule": "r1"}
        assert primary.suspended("elsewhere") == {"rule": "console"}
    finally:
        srv.stop()


@needs_redis
def test_restart_is_seen_after_another_worker_wrote_t0(tmp_path: Path) -> None:
    """Redis restarted empty and a fresh worker wrote t0 before this worker probed: the
    epoch tells the restart apart, so the known suspensions are still written back (the
    race behind the wrong allows of the two-worker outage scenario)."""
    from distillguard.respond.state import FallbackState, RedisState

    srv = faults.RedisServer(tmp_path / "r")
    srv.start()
    try:
        primary = RedisState.from_url(srv.url, prefix="f:")
        st = FallbackState(primary, probe_interval_s=1.0, sync_interval_s=None)
        st.suspend("known", {"rule": "r0"})
        primary.globals("m", 1.0)
        assert st.sync_suspensions() == 1              # learns the primary's epoch
        srv.kill()
        assert st.suspended("known") == {"rule": "r0"} and st.degraded
        srv.start()
        fresh = RedisState.from_url(srv.url, prefix="f:")   # a worker started meanwhile
        fresh.globals("m", 2.0)                              # writes t0 to the empty store
        FallbackState(fresh, sync_interval_s=None).sync_suspensions()   # and a new epoch
        deadline = time.monotonic() + 8
        while st.degraded and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not st.degraded
        assert primary.suspended("known") == {"rule": "r0"}
    finally:
        srv.stop()


def test_upstream_faults(tmp_path: Path) -> None:
    """500/503 pass through; hang and reset → 502 within the timeout; a reset or a stall in a
    stream ends it with an error event; a slow stream that keeps sending is delivered whole
    (it was cut at timeout_s: aiohttp's total timeout); denied requests never reach it."""
    res = faults.scenario_upstream(tmp_path, rounds=10 if LONG else 2)
    _assert_ok(res)
    assert res["answers_after"]
    assert res["hang_answered_in_s"] < faults.TIMEOUT_S + 1.0
    assert all(v.split("/")[0] == v.split("/")[1] for v in res["by_fault"].values())


def test_bad_bodies(tmp_path: Path) -> None:
    """Oversized (declared, chunked, lying), malformed, non-UTF-8, deeply nested and
    schema-invalid bodies: 413 or 400, never forwarded, the gateway still answers after."""
    res = faults.scenario_bodies(tmp_path)
    _assert_ok(res)
    assert res["upstream_saw_bad"] == 0 and res["answers_after"]


def test_slowloris(tmp_path: Path) -> None:
    """Clients dripping headers or bodies do not stop normal traffic; a dripped body is
    answered 408 after body_timeout_s and a connection whose headers drip is closed at the
    header deadline (both held their connection forever before)."""
    res = faults.scenario_slowloris(tmp_path, **({"clients": 400, "hold_s": 10.0} if LONG
                                                 else {"clients": 100, "hold_s": 3.0}))
    _assert_ok(res)
    assert res["slow_body_408"] == res["slow_body_clients"] > 0
    assert res["slow_header_clients_still_open"] == 0        # closed at the header deadline


def test_slowloris_headers_without_the_deadline_stay_open(tmp_path: Path) -> None:
    """uvicorn's own protocol has no header deadline: the drippers are all still there."""
    res = faults.scenario_slowloris(tmp_path, clients=40, hold_s=3.0, header_deadline=False)
    _assert_ok(res)
    assert res["slow_header_clients_still_open"] == 20


def test_cli_uses_the_header_deadline_protocol() -> None:
    from distillguard.gateway.cli import _http_protocol
    from distillguard.gateway.protocol import IMPORT_PATH

    assert _http_protocol() == IMPORT_PATH


def test_burst(tmp_path: Path) -> None:
    """Open-loop traffic at a base rate, then 10x, then the base rate: every request is
    answered correctly (no 5xx, no timeout), directives still deny."""
    res = faults.scenario_burst(tmp_path, **({"phase_s": 5.0} if LONG
                                             else {"base_rps": 30.0, "phase_s": 1.5}))
    _assert_ok(res)
    assert set(res["phases"]) == {"base", "burst", "after"}


def test_cli_fail_mode_local_wraps_redis() -> None:
    from distillguard.gateway.cli import _guard_mode, _state
    from distillguard.respond.state import FallbackState, RedisState

    url = "redis://127.0.0.1:1/0"
    assert isinstance(_state(url, "local"), FallbackState) and _guard_mode("local") == "closed"
    assert isinstance(_state(url, "closed"), RedisState) and _guard_mode("open") == "open"


@needs_redis
def test_cli_workers_redis_down_and_back(tmp_path: Path) -> None:
    """The real `distillguard gateway --workers 2 --redis-url` (default --fail-mode local):
    each worker alerts on its stderr, falls back, comes back; no wrong decision."""
    res = faults.scenario_workers(tmp_path, down_s=4.0 if LONG else 2.0)
    _assert_ok(res)
    # one alert per worker that took a request during the outage; each came back
    assert 1 <= res["alerts"] == res["back"] <= 2, res
    assert res["answered_on_local_state"] > 0
    assert res["recovery_s"] < 2.0, res
