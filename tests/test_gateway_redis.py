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
