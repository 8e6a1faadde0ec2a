"""Shared Redis state across two gateway instances, and Redis going down (needs redis-server)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from distillguard.gateway.app import create_app
from distillguard.gateway.stub import StubUpstream
from distillguard.respond.audit import AuditLog
from distillguard.respond.directives import DirectiveSet
from distillguard.respond.online import OnlineScorer
from distillguard.respond.policy import Policy
from distillguard.respond.state import RedisState

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not on PATH")

# suspend from 0.6: a lone account eliciting reasoning in every prompt ends near 0.7 under the
# fitted calibration (config 2026.12.1)
POLICY = Policy.from_dict({"version": "t", "rules": [
    {"id": "suspend", "when": {"score_min": 0.6, "min_requests": 40}, "action": "suspend"},
    {"id": "throttle", "when": {"score_min": 0.5}, "action": "throttle", "params": {"rpm": 3}}]})


@pytest.fixture
def redis_url(tmp_path: Path):
    from distillguard.bench.faults import RedisServer

    srv = RedisServer(tmp_path)
    srv.start()
    yield srv.url, srv.proc
    srv.stop()


def _app(url: str, tmp: Path, name: str, up: StubUpstream, fail_mode: str = "closed"):
    scorer = OnlineScorer(RedisState.from_url(url, prefix="t:"))
    return create_app("http://u", POLICY, DirectiveSet([]), scorer,
                      AuditLog(tmp / f"audit-{name}.jsonl"), transport=up.transport(),
                      fail_mode=fail_mode)


def _prompt(i: int) -> dict:
    return {"model": "m1", "messages": [{"role": "user", "content":
            f"Problem {i}: compute {i} * {i + 3}. Then articulate the complete internal "
            f"reasoning behind your answer, step by step."}]}


def test_two_gateways_share_state(redis_url, tmp_path: Path) -> None:
    url, _ = redis_url
    up = StubUpstream()
    with TestClient(_app(url, tmp_path, "a", up)) as a, TestClient(_app(url, tmp_path, "b", up)) as b:
        statuses = []
        for i in range(60):   # the hydra alternates between workers
            c = a if i % 2 else b
            statuses.append(c.post("/v1/chat/completions", json=_prompt(i),
                                   headers={"X-Account-Id": "hydra"}).status_code)
        assert 429 in statuses and statuses[-1] == 403
        # Suspended on one worker means suspended on both.
        for c in (a, b):
            r = c.post("/v1/chat/completions", json=_prompt(0), headers={"X-Account-Id": "hydra"})
            assert r.json()["error"]["code"] == "distillguard_account_suspended"
            assert c.post("/v1/chat/completions", json=_prompt(0),
                          headers={"X-Account-Id": "other"}).status_code == 200
    state = RedisState.from_url(url, prefix="t:")
    assert state.r.hget("t:a:hydra", "n") is not None
    assert int(state.r.hget("t:a:hydra", "n")) == 62
    assert state.r.ttl("t:a:hydra") > 0


@pytest.mark.parametrize("mode, status", [("closed", 503), ("open", 200)])
def test_redis_down(redis_url, tmp_path: Path, mode: str, status: int) -> None:
    url, proc = redis_url
    up = StubUpstream()
    with TestClient(_app(url, tmp_path, "a", up, mode)) as c:
        assert c.post("/v1/chat/completions", json=_prompt(0),
                      headers={"X-Account-Id": "x"}).status_code == 200
        proc.terminate()
        proc.wait(5)
        t0 = time.perf_counter()
        r = c.post("/v1/chat/completions", json=_prompt(1), headers={"X-Account-Id": "x"})
        assert r.status_code == status
        assert time.perf_counter() - t0 < 2.0          # short socket timeouts: no hang
        assert len(up.calls) == (1 if mode == "closed" else 2)


def test_scripted_update_matches_the_pipeline(redis_url) -> None:
    from distillguard.respond.state import AccountUpdate

    url, _ = redis_url
    scripted, piped = RedisState.from_url(url, prefix="s:"), RedisState.from_url(url, prefix="p:")
    piped._use_script = False
    for i in range(30):
        u = AccountUpdate({"n": 1, f"h{i % 3:02d}": 1}, {"first_ts": 100.0 + i, "created": 5.0},
                          f"ph{i % 7}", ("h:a", f"t:{i % 2}") if i % 4 else (), 100.0 + i)
        assert scripted.update("acct", u) == piped.update("acct", u)
    st = scripted.update("acct", AccountUpdate())
    assert st["n"] == 30 and st["distinct"] == 7 and st["tpl_top"] == 22
    assert st["first_ts"] == 100.0 and scripted.r.ttl("s:a:acct:t") > 0


def test_batched_increments_keep_their_order(redis_url) -> None:
    from distillguard.respond.state import AccountUpdate

    url, _ = redis_url
    s = RedisState.from_url(url, prefix="b:")
    with s.batched():
        s.add_float("x", "lr_sum", 1.5)
        assert s.r.hget("b:a:x", "lr_sum") is None            # deferred ...
        assert s.update("x", AccountUpdate({"n": 1}))["lr_sum"] == 1.5   # ... not lost
        s.add_float("x", "lr_sum", 1.0)
    assert float(s.r.hget("b:a:x", "lr_sum")) == 2.5           # flushed at the block's end


def test_suspension_and_models_are_shared(redis_url) -> None:
    from distillguard.respond.state import AccountUpdate

    url, _ = redis_url
    a, b = RedisState.from_url(url, prefix="g:"), RedisState.from_url(url, prefix="g:")
    b.suspend("x", {"rule": "r"})
    a.update("x", AccountUpdate({"n": 1}))                      # reads the record with it
    assert a.suspended("x") == {"rule": "r"}
    assert a.suspended("y") is None
    a.unsuspend("x")
    assert b.suspended("x") is None
    assert a.globals("m1", 10.0) == (10.0, {"m1": 10.0})
    assert b.globals("m2", 20.0) == (10.0, {"m1": 10.0, "m2": 20.0})
    assert a.globals("m2", 30.0)[1] == {"m1": 10.0, "m2": 20.0}  # unseen here: refreshed


def test_distinct_and_cross_account_state(redis_url) -> None:
    """Named distinct sets, maxima and cross-account sets (address, card, system prompt)
    shared by workers; the script and the no-scripting pipeline agree."""
    from distillguard.respond.state import AccountUpdate, MemoryState

    url, _ = redis_url
    scripted, piped = RedisState.from_url(url, prefix="s:"), RedisState.from_url(url, prefix="p:")
    piped._use_script = False
    mem = MemoryState()
    stores = (scripted, piped, mem)
    for i in range(12):
        for acct in ("a", "b", "c"):
            u = AccountUpdate(
                {"n": 1}, {"first_ts": 1.0}, f"ph{i % 5}", (), 100.0 + i,
                maxs={"created": float(i if acct == "a" else 3)},
                distinct={"rerun": f"ph{i % 4}|1|0", "pfx": f"10.0.{i % 3}.0/24"},
                cross={"ip": f"10.0.0.{i % 2 if acct != 'c' else 9}",
                       "card": "card-1" if acct != "c" else "card-2"},
                cross_max=("card", "sys"), hist=("ratio", f"b{i % 3}"),
                cross_hist=("ip",))
            got = [s.update(acct, u) for s in stores]
            for k in ("n", "distinct", "d:rerun", "d:pfx", "created", "x:ip", "xs:ip",
                      "xm:card"):
                assert len({float(g.get(k, 0)) for g in got}) == 1, (i, acct, k, got)
            assert got[0]["\x1fh:ratio"] == got[1]["\x1fh:ratio"] == dict(got[2]["\x1fh:ratio"])
            assert got[0]["\x1fh:x:ip"] == got[1]["\x1fh:x:ip"] == dict(got[2]["\x1fh:x:ip"])
    st = scripted.update("a", AccountUpdate(ts=200.0, cross_max=("card",)))
    assert st["d:rerun"] == 4 and st["d:pfx"] == 3 and st["created"] == 11.0
    assert st["xm:card"] == 2                    # a and b pay with card-1
    assert st["xs:ip"] == 10        # causal: a used each address once before b did
    assert scripted.update("c", AccountUpdate(ts=200.0, cross_max=("card",)))["xm:card"] == 1
    assert scripted.r.ttl("s:x:card:card-1") > 0 and scripted.r.ttl("s:a:a:d:rerun") > 0


def test_online_scorer_on_redis_matches_memory(redis_url) -> None:
    """The same requests scored on Redis and in process give the same scores."""
    from distillguard.respond.online import RequestView
    from distillguard.respond.state import MemoryState

    url, _ = redis_url
    red = OnlineScorer(RedisState.from_url(url, prefix="o:"))
    mem = OnlineScorer(MemoryState())
    for i in range(60):
        for acct in ("x", "y"):
            v = RequestView(acct, "m1", 1.7e9 + 300 * i, f"Solve {i % 20}: think step by step",
                            "You are a helpful assistant.", 1, 0, 0, None, 1.69e9, None,
                            f"10.0.{i % 4}.{i % 7}", "card-9")
            a, b = red.observe(v, elicit_p=0.0), mem.observe(v, elicit_p=0.0)
            red.observe_response(acct, 20, 300 + i, 1.7e9 + 300 * i)
            mem.observe_response(acct, 20, 300 + i, 1.7e9 + 300 * i)
            assert a.score == pytest.approx(b.score, abs=1e-9), (i, acct)
    fr = red.features(red.state.update("x", __import__("distillguard.respond.state",
                      fromlist=["AccountUpdate"]).AccountUpdate(ts=1.7e9 + 1e5)), "x")
    assert fr["card_accounts"] == 2 and fr["n_prefixes"] == 4 and fr["system_accounts"] == 2


# ---------------------------------------------------------------- one round trip per request

@pytest.fixture
def sends(monkeypatch):
    """Round trips to Redis: every command or pipeline goes out in one send_packed_command."""
    from redis.connection import AbstractConnection

    count = [0]
    real = AbstractConnection.send_packed_command

    def counted(self, *args, **kwargs):
        count[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return count


# Request times near the wall clock: usage is recorded at the wall clock, and MemoryState
# starts an account afresh when it comes back after more than the TTL.
_T0 = time.time() - 20_000


def _view(i: int, acct: str):
    from distillguard.respond.online import RequestView

    return RequestView(acct, "m1", _T0 + 37 * i, f"Question {i % 9}: why is the sky blue?",
                       "You are terse." if i % 3 else "", 1 + i % 2, 40 * (i % 2), i % 2,
                       "high" if i % 5 == 0 else None, 1.69e9, "web",
                       f"10.1.{i % 3}.{i % 5}", f"card-{i % 2}", f"key-{i % 4}")


ALLOW_ALL = Policy.from_dict({"version": "t", "rules": [
    {"id": "never", "when": {"score_min": 1.0, "min_requests": 10 ** 9}, "action": "suspend"}]})


def test_one_round_trip_per_request_in_the_guard(redis_url, sends) -> None:
    """Screening (globals, update, hour entropy, suspension record) and the response's
    usage cost one Redis round trip per request together, the usage riding in front of the
    next request's update."""
    from distillguard.respond.directives import UserAttrs
    from distillguard.respond.guard import Guard

    url, _ = redis_url
    state = RedisState.from_url(url, prefix="rt:")
    state.defer_max_s = 60.0                 # no flusher sends inside the measurement
    guard = Guard(ALLOW_ALL, DirectiveSet([]), OnlineScorer(state))
    for i in range(5):                       # warm-up: script loads, the globals cache
        guard.screen("warm", UserAttrs(), _view(i, "warm"))
        guard.observe_usage("warm", {"prompt_tokens": 10, "completion_tokens": 100})
    state.globals_max_age_s = 0.0            # a due refresh must ride along, not add one
    sends[0] = 0
    n = 40
    for i in range(n):
        acct = f"a{i % 3}"
        sc = guard.screen(acct, UserAttrs(), _view(i, acct))
        assert sc.status == 200 and sc.decision is not None
        guard.observe_usage(acct, {"prompt_tokens": 10 + i, "completion_tokens": 7 * i})
    assert sends[0] == n
    state.flush()                            # the last usage: its own send, or the next's
    assert sends[0] == n + 1
    assert int(state.r.hget("rt:a:a1", "lr_n")) == 13


def test_one_round_trip_per_request_through_the_gateway(redis_url, tmp_path: Path,
                                                        sends) -> None:
    url, _ = redis_url
    up = StubUpstream()
    state = RedisState.from_url(url, prefix="rg:")
    state.defer_max_s = 60.0
    app = create_app("http://u", ALLOW_ALL, DirectiveSet([]), OnlineScorer(state),
                     AuditLog(tmp_path / "audit.jsonl"), transport=up.transport())
    with TestClient(app) as c:
        def post(i: int) -> None:
            r = c.post("/v1/chat/completions", json=_prompt(i),
                       headers={"X-Account-Id": f"acct-{i % 4}"})
            assert r.status_code == 200

        for i in range(5):
            post(i)
        sends[0] = 0
        for i in range(30):
            post(i)
        assert sends[0] == 30
    assert int(state.r.hget("rg:a:acct-1", "lr_n")) >= 8     # usage landed (flushed at exit)


def test_redis_scoring_equals_memory_bit_for_bit(redis_url) -> None:
    """Guard decisions, scores and every feature on Redis equal those in process on the
    same stream, usage (ratio median, computed in Lua on Redis) and hour entropy included."""
    import random

    from distillguard.respond.directives import UserAttrs
    from distillguard.respond.guard import Guard
    from distillguard.respond.state import AccountUpdate, MemoryState

    url, _ = redis_url
    policy = Policy.from_dict({"version": "t", "rules": [
        {"id": "log", "when": {"score_min": 0.2}, "action": "log"},
        {"id": "cap", "when": {"score_min": 0.3}, "action": "cap_output",
         "params": {"max_tokens": 64}}]})
    red_state = RedisState.from_url(url, prefix="eq:")
    red, mem = OnlineScorer(red_state), OnlineScorer(MemoryState())
    gr, gm = Guard(policy, None, red), Guard(policy, None, mem)
    rnd = random.Random(3)
    for i in range(160):
        acct = f"e{rnd.randrange(4)}"
        v = _view(i, acct)
        a, b = gr.screen(acct, UserAttrs(), v), gm.screen(acct, UserAttrs(), v)
        assert (a.status, a.verdict, a.action) == (b.status, b.verdict, b.action), i
        assert a.score.score == b.score.score and a.score.raw == b.score.raw, i
        usage = {"prompt_tokens": rnd.choice([None, 1, 12, 300]),
                 "completion_tokens": rnd.choice([0, 1, 5, 80, 900, 4000])}
        gr.observe_usage(acct, usage)
        gm.observe_usage(acct, usage)
    for acct in ("e0", "e1", "e2", "e3"):
        ts = _T0 + 37 * 200
        sr = red.state.update(acct, AccountUpdate(ts=ts))
        sm = mem.state.update(acct, AccountUpdate(ts=ts))
        for k in ("hcl", "oir", "lr_n", "out_sum", "n"):
            assert sr[k] == sm[k], (acct, k)
        assert red.features(sr, acct) == mem.features(sm, acct), acct


def test_usage_is_queued_and_lands_in_order(redis_url) -> None:
    """Queued usage reaches Redis ahead of the account's next update, or by the flusher
    thread within defer_max_s; a FallbackState in an outage records it in process."""
    from distillguard.respond._errors import StateStoreError
    from distillguard.respond.state import AccountUpdate, FallbackState

    url, proc = redis_url
    state = RedisState.from_url(url, prefix="q:")
    state.defer_max_s = 0.02
    scorer = OnlineScorer(state)
    scorer.observe_response("u", 10, 30)
    assert state.r.hget("q:a:u", "lr_n") is None                  # queued ...
    deadline = time.monotonic() + 5
    while state.r.hget("q:a:u", "lr_n") is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert int(state.r.hget("q:a:u", "lr_n")) == 1                # ... sent by the flusher
    state.defer_max_s = 60.0
    scorer.observe_response("u", 10, 60)
    st = state.update("u", AccountUpdate(ts=time.time()))        # rides ahead of the update
    assert st["lr_n"] == 2 and st["out_sum"] == 90 and st["oir"] > 0
    state.r.script_flush()                   # Redis restarted or flushed its scripts
    scorer.observe_response("u", 10, 60)
    st = state.update("u", AccountUpdate({"n": 1}, ts=time.time()))
    assert st["n"] == 1 and int(state.r.hget("q:a:u", "lr_n")) == 3      # both sent again
    fb = FallbackState(state, probe_interval_s=60, sync_interval_s=None)
    proc.terminate()
    proc.wait(5)
    with pytest.raises(StateStoreError):
        state.update("u", AccountUpdate(ts=time.time()))
    fb._go_down(RuntimeError("test"))
    fscorer = OnlineScorer(fb)
    fscorer.observe_response("u", 10, 30)
    assert fb.fallback.update("u", AccountUpdate(ts=time.time()))["lr_n"] == 1
