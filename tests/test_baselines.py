"""Baselines catch the synthetic attack each paper targets, and leave benign-like accounts.

Queries are random vectors injected through ``embedder=`` (prompts are row keys) so the
tests are fast and test the detectors, not the embedding. One test runs on real text with the
hashed backend, and the embedding backends get their own checks at the end.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone

from distillguard.bench.baselines import PRADA, MMDWindow, StatefulKNN, VolumeBaseline
from distillguard.bench.embed import available_backends, embed
from distillguard.errors import NotFittedError

DIM = 32
N_TOPICS = 50
T0 = dt.datetime(2025, 3, 1)


class _World:
    """Benign query distribution (a topic mixture) plus a vector table behind the prompts."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.centers = self.rng.normal(size=(N_TOPICS, DIM))
        self.vectors: list[np.ndarray] = []

    def benign(self, n: int) -> np.ndarray:
        topics = self.rng.integers(0, N_TOPICS, n)
        return self.centers[topics] + self.rng.normal(scale=0.8, size=(n, DIM))

    def frame(self, accounts: dict[str, np.ndarray], shuffle: bool = False) -> pl.DataFrame:
        """One request per row vector; prompt = key into the table the embedder reads."""
        ids, ts, prompts = [], [], []
        for aid, x in accounts.items():
            start = len(self.vectors)
            self.vectors.extend(x)
            ids += [aid] * len(x)
            ts += [T0 + dt.timedelta(minutes=i) for i in range(len(x))]
            prompts += [f"v{start + i}" for i in range(len(x))]
        df = pl.DataFrame({"account_id": ids, "ts": ts, "prompt": prompts})
        return df.sample(fraction=1.0, shuffle=True, seed=1) if shuffle else df

    def embedder(self) -> Callable[[list[str]], np.ndarray]:
        def lookup(texts: list[str]) -> np.ndarray:
            table = np.asarray(self.vectors)
            return table[[int(t[1:]) for t in texts]]

        return lookup


@pytest.fixture(scope="module")
def world() -> _World:
    return _World()


@pytest.fixture(scope="module")
def benign_train(world: _World) -> pl.DataFrame:
    sizes = world.rng.integers(150, 250, size=100)
    return world.frame({f"b{i:03d}": world.benign(int(n)) for i, n in enumerate(sizes)})


@pytest.fixture(scope="module")
def benign_test(world: _World) -> dict[str, np.ndarray]:
    sizes = world.rng.integers(150, 250, size=20)
    return {f"t{i:02d}": world.benign(int(n)) for i, n in enumerate(sizes)}


def _check(det, world: _World, train: pl.DataFrame, benign_test: dict[str, np.ndarray],
           attack: dict[str, np.ndarray]) -> pl.DataFrame:
    """Fit on benign, score attack + fresh benign accounts; common assertions."""
    det.fit(train)
    assert det.labels_.mean() <= det.contamination  # budget holds on the training accounts
    out = det.predict(world.frame({**benign_test, **attack}))
    flagged = dict(zip(out["account_id"], out["flagged"], strict=True))
    scores = dict(zip(out["account_id"], out["score"], strict=True))
    for aid in attack:
        assert flagged[aid], f"{type(det).__name__} missed {aid}"
        assert scores[aid] > max(scores[b] for b in benign_test)
    # fresh benign accounts: at a 2% budget, at most a couple may cross by chance
    assert sum(flagged[b] for b in benign_test) <= 2
    return out


def test_volume_flags_huge_account(world, benign_train, benign_test) -> None:
    det = VolumeBaseline(contamination=0.02)
    out = _check(det, world, benign_train, benign_test, {"huge": world.benign(2000)})
    assert det.threshold_ < 250
    assert out.filter(pl.col("account_id") == "huge")["score"][0] == 2000


def test_volume_per_active_day() -> None:
    df = pl.DataFrame({
        "account_id": ["a"] * 4 + ["b"] * 2,
        "ts": [T0, T0, T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2), T0, T0],
    })
    out = VolumeBaseline(per="active_day", contamination=0.5).fit(df).decision_function(df)
    assert out["score"].to_list() == [4 / 3, 2.0]


def _jbda_like(world: _World, n: int) -> np.ndarray:
    """Papernot-style synthetic queries: seeds, then signed perturbations of earlier queries
    with two step sizes, so nearest-query distances pile up at two values (not normal)."""
    q = list(world.benign(3))
    while len(q) < n:
        base = q[world.rng.integers(len(q))]
        q.append(base + world.rng.choice([0.02, 0.3]) * np.sign(world.rng.normal(size=DIM)))
    return np.asarray(q)


def test_prada_flags_synthetic_perturbations(world, benign_train, benign_test) -> None:
    det = PRADA(contamination=0.02, embedder=world.embedder())
    out = _check(det, world, benign_train, benign_test, {"jbda": _jbda_like(world, 200)})
    assert det.delta_ == pytest.approx(1 - det.threshold_)
    assert 0.8 < det.delta_ < 1.0  # benign W stays high; calibrated delta near the paper's
    row = out.filter(pl.col("account_id") == "jbda")
    assert row["w_min"][0] < det.delta_ and row["n_tests"][0] > 0


def test_prada_needs_enough_queries(world, benign_train) -> None:
    det = PRADA(contamination=0.02, embedder=world.embedder()).fit(benign_train)
    out = det.decision_function(world.frame({"short": _jbda_like(world, 60)}))
    assert out["score"][0] == 0.0 and out["n_tests"][0] == 0  # <= min_distances: untested


def test_knn_flags_near_duplicates(world, benign_train, benign_test) -> None:
    seed = world.benign(1)
    dup = seed + world.rng.normal(scale=0.05, size=(200, DIM))
    det = StatefulKNN(k=20, contamination=0.02, embedder=world.embedder())
    out = _check(det, world, benign_train, benign_test, {"dup": dup})
    row = out.filter(pl.col("account_id") == "dup")
    # buffer cleared after each detection: one detection per k + 1 queries at most
    assert 5 <= row["n_detections"][0] <= 200 // (20 + 1)
    assert det.query_threshold_ > 0


def test_knn_unscored_accounts_are_least_suspicious(world, benign_train) -> None:
    det = StatefulKNN(k=20, contamination=0.02, embedder=world.embedder()).fit(benign_train)
    out = det.decision_function(world.frame({"tiny": np.repeat(world.benign(1), 20, axis=0)}))
    assert out["score"][0] == -2.0 and out["n_detections"][0] == 0


def test_mmd_flags_shifted_distribution(world, benign_train, benign_test) -> None:
    shifted = world.rng.normal(size=(150, DIM)) + 2.0  # a region benign users never visit
    det = MMDWindow(contamination=0.02, embedder=world.embedder())
    _check(det, world, benign_train, benign_test, {"shift": shifted})
    assert det.bandwidth_ > 0 and det.reference_.shape == (1000, DIM)
    assert det.n_accounts_fit_ == 50  # the other half supplied the reference sample


def test_mmd_window_scores_a_burst(world, benign_train) -> None:
    """One off-distribution window inside long benign traffic is enough (max over windows)."""
    det = MMDWindow(contamination=0.02, stride=25, embedder=world.embedder()).fit(benign_train)
    burst = np.vstack([world.benign(200), world.rng.normal(size=(50, DIM)) + 2.0,
                       world.benign(200)])
    out = det.predict(world.frame({"burst": burst}))
    assert out["flagged"][0] and out["n_windows"][0] == 17


def test_text_near_duplicates_hashed_backend() -> None:
    """End to end on real text: a templated sweep vs people asking varied questions."""
    rng = np.random.default_rng(3)
    subjects = ["my cat", "the invoice", "a python script", "our garden", "the train",
                "this recipe", "my essay", "the router", "a poem", "the budget"]
    asks = ["How do I fix", "Can you summarise", "Why is", "What should I do about",
            "Explain", "Help me improve", "Is it normal that", "Write a note on"]
    tails = ["today", "quickly", "for my boss", "in simple words", "again", "please",
             "before Friday", "step by step", "with examples", "in French"]

    def person(n: int) -> list[str]:
        return [f"{rng.choice(asks)} {rng.choice(subjects)} {rng.choice(tails)}?"
                for _ in range(n)]

    rows = {f"u{i}": person(40) for i in range(30)}
    sweep = [f"Solve step by step and show reasoning: integrate x^{i} dx" for i in range(40)]

    def to_frame(accounts: dict[str, list[str]]) -> pl.DataFrame:
        return pl.DataFrame({
            "account_id": [a for a, p in accounts.items() for _ in p],
            "ts": [T0 + dt.timedelta(seconds=i) for p in accounts.values()
                   for i in range(len(p))],
            "prompt": [q for p in accounts.values() for q in p],
        })

    hashed = lambda texts: embed(texts, backend="hashed")  # noqa: E731
    det = StatefulKNN(k=5, contamination=0.05, embedder=hashed).fit(to_frame(rows))
    fresh = {f"f{i}": person(40) for i in range(5)}
    out = det.predict(to_frame({"sweep": sweep, **fresh}))
    flagged = dict(zip(out["account_id"], out["flagged"], strict=True))
    scores = dict(zip(out["account_id"], out["score"], strict=True))
    assert flagged["sweep"] and scores["sweep"] > max(scores[f] for f in fresh) + 0.2
    assert sum(flagged[f] for f in fresh) <= 1  # 5% budget calibrated on only 30 accounts


# --- contract --------------------------------------------------------------------------------


def test_estimator_contract(world, benign_train) -> None:
    for det in (VolumeBaseline(), PRADA(), StatefulKNN(), MMDWindow()):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            det.decision_function(benign_train)
        twin = clone(det)  # __init__ stores params unchanged
        assert twin.get_params() == det.get_params()
    with pytest.raises(ValueError, match="contamination"):
        VolumeBaseline(contamination=0.0).fit(benign_train)
    with pytest.raises(ValueError, match="prompt"):
        PRADA().fit(benign_train.drop("prompt"))


def test_order_invariance_and_embedding_column(world, benign_train) -> None:
    """Unsorted input gives the same scores; an embedding column replaces the embedder."""
    accounts = {"x": world.benign(120), "y": world.benign(130)}
    det = StatefulKNN(k=10, contamination=0.02, embedder=world.embedder()).fit(benign_train)
    a = det.decision_function(world.frame(accounts))
    b = det.decision_function(world.frame(accounts, shuffle=True))
    assert a.equals(b)

    def with_embedding(df: pl.DataFrame) -> pl.DataFrame:
        emb = world.embedder()(df["prompt"].to_list()).astype(np.float32)
        return df.with_columns(pl.Series("embedding", emb)).drop("prompt")

    precomputed = StatefulKNN(k=10, contamination=0.02).fit(with_embedding(benign_train))
    assert precomputed.threshold_ == pytest.approx(det.threshold_)
    c = precomputed.decision_function(with_embedding(world.frame(accounts)))
    assert np.allclose(c["score"], a["score"])


def test_fit_refuses_too_little_benign_history(world) -> None:
    """A threshold calibrated on accounts the test never ran on would be meaningless."""
    short = world.frame({f"s{i}": world.benign(30) for i in range(10)})
    for det in (PRADA(), StatefulKNN(), MMDWindow()):
        with pytest.raises(ValueError, match="cannot"):
            clone(det).set_params(embedder=world.embedder()).fit(short)


def test_benign_rank(world, benign_train) -> None:
    det = VolumeBaseline(contamination=0.02).fit(benign_train)
    ranks = det.benign_rank([0, 1e9])
    assert ranks.tolist() == [0.0, 1.0]


# --- embeddings ------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_hashed_embedding(no_network) -> None:
    x = embed(["reverse a list in python", "Reverse a list in Python!", "bake bread", ""],
              backend="hashed")
    assert x.shape == (4, 256) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x[:3], axis=1), 1.0, atol=1e-5)
    assert not x[3].any()  # empty text -> zero vector, no NaN
    assert x[0] @ x[1] > 0.6 > x[0] @ x[2]
    assert np.array_equal(x, embed(["reverse a list in python", "Reverse a list in Python!",
                                    "bake bread", ""], backend="hashed", batch_size=1))


@pytest.mark.skipif("wordllama" not in available_backends(), reason="wordllama not installed")
def test_wordllama_offline(no_network) -> None:
    texts = ["Write a python function to reverse a list",
             "Write a Python function that reverses a list",
             "What's the weather like in Paris?", ""]
    x = embed(texts, backend="wordllama", batch_size=2)
    assert x.shape == (4, 256) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x[:3], axis=1), 1.0, atol=1e-5) and not x[3].any()
    assert x[0] @ x[1] > 0.8 > x[0] @ x[2]
    assert np.allclose(x, embed(texts, backend="auto"), atol=1e-6)  # order kept across batches


def test_embed_rejects_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        embed(["a"], backend="bert")  # type: ignore[arg-type]
