"""Time to detect for the baselines: streams whose first alert is known by construction.

Queries are given as an ``embedding`` column (no embedder), so every distance is exact and
the request at which a detector must first alert follows from the construction.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from distillguard.bench.baselines import PRADA, MMDWindow, StatefulKNN, VolumeBaseline
from distillguard.bench.ttd import baseline_time_to_detect, checkpoint_every

T0 = dt.datetime(2025, 3, 1)


def frame(accounts: dict[str, np.ndarray], minutes: float = 1.0) -> pl.DataFrame:
    """One request per row vector, ``minutes`` apart within an account, rows shuffled."""
    ids, ts, emb = [], [], []
    for aid, x in accounts.items():
        ids += [aid] * len(x)
        ts += [T0 + dt.timedelta(minutes=minutes * i) for i in range(len(x))]
        emb += list(np.asarray(x, dtype=np.float32))
    df = pl.DataFrame({"account_id": ids, "ts": ts,
                       "embedding": np.asarray(emb, dtype=np.float32)})
    return df.sample(fraction=1.0, shuffle=True, seed=3)  # order must not matter


def alert_at(det, accounts: dict[str, np.ndarray]) -> dict[str, int | None]:
    out = det.first_alerts(frame(accounts))
    return dict(zip(out["account_id"], out["alert_index"], strict=True))


# --- the stateful k-NN detector: exact at every request --------------------------------------


def basis_stream(dim: int, order: np.ndarray) -> np.ndarray:
    """Distinct one-hot vectors: every pair is exactly sqrt(2) apart."""
    return np.eye(dim)[order]


def test_knn_first_alert_at_first_repeat() -> None:
    """Benign accounts never repeat a query, so every benign mean k-NN distance is sqrt(2);
    the attack's first repeat (request 40) is the first query with a neighbour at 0."""
    rng = np.random.default_rng(0)
    dim = 64
    train = {f"b{i}": basis_stream(dim, rng.permutation(dim)[:60]) for i in range(20)}
    det = StatefulKNN(k=5, contamination=0.05, max_history=100).fit(frame(train))
    assert det.threshold_ == pytest.approx(-np.sqrt(2), abs=1e-6)
    attack = np.vstack([basis_stream(dim, np.arange(40)), basis_stream(dim, np.arange(20))])
    benign = basis_stream(dim, rng.permutation(dim)[:60])
    got = alert_at(det, {"attack": attack, "benign": benign, "short": attack[:5]})
    assert got == {"attack": 40, "benign": None, "short": None}


def test_knn_stream_agrees_with_batch_on_prefixes() -> None:
    """The alert is the first request whose prefix ``predict`` flags (per-query detector)."""
    rng = np.random.default_rng(1)
    train = {f"b{i}": rng.normal(size=(80, 16)) for i in range(30)}
    det = StatefulKNN(k=8, contamination=0.05).fit(frame(train))
    base = rng.normal(size=16)
    attack = np.vstack([rng.normal(size=(30, 16)),
                        base + rng.normal(scale=0.3, size=(40, 16))])
    j = alert_at(det, {"a": attack})["a"]
    assert j is not None and 30 < j < 70
    flagged = [det.predict(frame({"a": attack[: i + 1]}))["flagged"][0] for i in range(j + 1)]
    assert flagged == [False] * j + [True]


# --- PRADA: its own test schedule --------------------------------------------------------------


def test_prada_first_alert_at_first_scheduled_test() -> None:
    """An account repeating one query has all nearest distances 0, so W = 0 (maximally
    non-normal) at its first test: query 30 = the first multiple of check_every (10) with
    more than min_distances (20) distances. Testing after every query would give 21."""
    rng = np.random.default_rng(2)
    train = {f"b{i}": rng.normal(size=(int(rng.integers(60, 120)), 16)) for i in range(30)}
    det = PRADA(min_distances=20, check_every=10, contamination=0.05,
                max_history=200).fit(frame(train))
    assert 0.0 < det.threshold_ < 1.0
    repeat = np.repeat(rng.normal(size=(1, 16)), 50, axis=0)
    got = alert_at(det, {"repeat": repeat, "benign": rng.normal(size=(150, 16)),
                         "short": repeat[:21]})
    # "short" is tested once, at its last request (index 20 holds only 20 distances: none)
    assert got == {"repeat": 30, "benign": None, "short": None}
    assert alert_at(det, {"short": repeat[:22]}) == {"short": 21}  # the last request is tested


# --- MMD: window ends ------------------------------------------------------------------------


def test_mmd_first_alert_at_end_of_first_shifted_window() -> None:
    """Two benign windows, then off-distribution traffic from request 45 on: the first
    window containing it ends at request 59 (windows of 20, stride 20)."""
    rng = np.random.default_rng(3)
    train = {f"b{i}": rng.normal(size=(100, 16)) for i in range(40)}
    det = MMDWindow(window=20, contamination=0.05, n_reference=500).fit(frame(train))
    attack = np.vstack([rng.normal(size=(45, 16)), rng.normal(size=(40, 16)) + 3.0])
    got = alert_at(det, {"attack": attack, "benign": rng.normal(size=(200, 16)),
                         "short": attack[45:64]})
    assert got == {"attack": 59, "benign": None, "short": None}


@pytest.mark.parametrize("det", [
    PRADA(min_distances=20, check_every=7, contamination=0.1, max_history=60),
    MMDWindow(window=15, stride=6, contamination=0.1, n_reference=300),
], ids=["prada", "mmd"])
def test_stream_agrees_with_batch(det) -> None:
    """Alerted at the end of the stream iff ``predict`` flags the account; the prefix ending
    at the alert is flagged by ``predict``, and the prefix ending one checkpoint earlier not."""
    rng = np.random.default_rng(4)
    train = {f"b{i}": rng.normal(size=(int(rng.integers(40, 150)), 8)) for i in range(40)}
    det.fit(frame(train))
    accounts = {f"t{i}": rng.normal(size=(int(rng.integers(10, 200)), 8)) for i in range(15)}
    for i in range(15):  # drift into a narrow region part-way through
        n = int(rng.integers(30, 200))
        x = rng.normal(size=(n, 8))
        cut = int(rng.integers(0, n))
        x[cut:] = x[cut:] * 0.2 + 1.5
        accounts[f"a{i}"] = x
    got = alert_at(det, accounts)
    flagged = dict(zip(*det.predict(frame(accounts))[["account_id", "flagged"]], strict=True))
    assert {a for a, j in got.items() if j is not None} == {a for a, f in flagged.items() if f}
    assert 3 <= sum(f for f in flagged.values()) < len(accounts)
    step = checkpoint_every(det)
    for a, j in got.items():
        if j is None:
            continue
        assert det.predict(frame({a: accounts[a][: j + 1]}))["flagged"][0]
        if isinstance(det, PRADA):
            prev = (j - 1) // step * step
        else:  # the last window end before j: (window - 1) + a multiple of the stride
            w = det.window
            prev = w - 1 + (j - w) // step * step if j >= w else -1
        if prev >= 0:
            assert not det.predict(frame({a: accounts[a][: prev + 1]}))["flagged"][0]


# --- volume ----------------------------------------------------------------------------------


def test_volume_first_alert_matches_running_count() -> None:
    """Benign counts 1..50 at a 2% budget: threshold 49, so request 49 (the 50th) alerts —
    the same request the bench's time-to-detect rule (running count > threshold) picks."""
    train = {f"b{i}": np.zeros((i + 1, 2)) for i in range(50)}
    det = VolumeBaseline(contamination=0.02).fit(frame(train))
    assert det.threshold_ == 49.0
    assert alert_at(det, {"big": np.zeros((80, 2)), "small": np.zeros((49, 2))}) == {
        "big": 49, "small": None}
    daily = VolumeBaseline(per="active_day", contamination=0.5).fit(
        pl.DataFrame({"account_id": ["a", "a", "b"], "ts": [T0, T0, T0]}))  # threshold 1
    burst = pl.DataFrame({"account_id": ["x"] * 3 + ["y"] * 2,
                          "ts": [T0, T0 + dt.timedelta(hours=1), T0 + dt.timedelta(days=1),
                                 T0, T0 + dt.timedelta(days=1)]})
    out = daily.first_alerts(burst)
    assert out["alert_index"].to_list() == [1, None]  # x: 2 requests on its first day


# --- per campaign ----------------------------------------------------------------------------


def test_baseline_time_to_detect_per_campaign() -> None:
    """Campaign c1 = two accounts; the earlier alert (account a2, request 40, minute 60 of
    the campaign) decides. Campaign c2 never alerts; the benign account never alerts."""
    rng = np.random.default_rng(0)
    dim = 64
    train = {f"b{i}": basis_stream(dim, rng.permutation(dim)[:60]) for i in range(20)}
    det = StatefulKNN(k=5, contamination=0.05, max_history=100).fit(frame(train))
    rep = np.vstack([basis_stream(dim, np.arange(40)), basis_stream(dim, np.arange(20))])
    clean = basis_stream(dim, np.arange(60))
    a1 = frame({"a1": rep}, minutes=2.0)  # alerts at request 40 = minute 80
    a2 = frame({"a2": rep}).with_columns(pl.col("ts") + dt.timedelta(minutes=20))  # minute 60
    rest = frame({"c2a": clean, "ok": clean})
    requests = pl.concat([a1, a2, rest])
    labels = pl.DataFrame({"account_id": ["a1", "a2", "c2a", "ok"],
                           "label": ["distill", "distill", "distill", "ordinary"],
                           "campaign_id": ["c1", "c1", "c2", None]})
    res = baseline_time_to_detect({"knn": det}, requests, labels)["knn"]
    assert res["benign_alerted"] == 0 and res["n_benign"] == 1 and res["checkpoint_every"] == 1
    c1, c2 = res["campaigns"]
    assert c1["campaign_id"] == "c1" and c1["detected"] and c1["hours_to_detect"] == 1.0
    # served before minute 60: a1 requests at minutes 0..58 (30) + a2 at 20..59 (40)
    assert c1["share_served_before"] == round(70 / 120, 4)
    assert c2 == {"campaign_id": "c2", "requests": 60, "detected": False,
                  "share_served_before": 1.0, "hours_to_detect": None}


def test_first_alerts_requires_fit() -> None:
    from distillguard.errors import NotFittedError

    with pytest.raises(NotFittedError):
        StatefulKNN().first_alerts(frame({"a": np.zeros((3, 2))}))
