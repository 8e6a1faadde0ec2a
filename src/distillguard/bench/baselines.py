"""Published model-extraction detectors, re-implemented as benchmark baselines.

distillguard is compared against detectors from the model-stealing literature, implemented as
their papers describe them and adapted only where text prompts force it (queries are embedded
with :func:`distillguard.bench.embed.embed`; distances are Euclidean between unit vectors).

Every baseline follows the scikit-learn estimator contract and PyOD's calibrated-threshold
convention:

* ``__init__`` stores its arguments unchanged (so ``sklearn.base.clone`` and grid search work);
* ``fit(requests)`` is given **benign traffic only**; it learns state (attributes ending in
  ``_``) and sets ``threshold_`` from the benign *account* score distribution so that at most
  ``floor(contamination * n_benign_accounts)`` benign accounts score above it. The budget is
  an account-level false-positive rate because accounts are what an operator acts on;
* ``decision_function(requests)`` returns a polars frame ``[account_id, score, n_queries,
  ...]`` with one row per account; **higher score = more suspicious** (PyOD convention);
* ``predict(requests)`` adds ``flagged = score > threshold_``;
* ``first_alerts(requests)`` replays each account's requests in time order and returns the
  first request at which the account's score, evaluated on its prefix at the detector's
  checkpoints, exceeds the same ``threshold_`` (time to detect; see the method).

``requests`` is a polars frame with at least ``account_id`` (str), ``ts`` (datetime) and
``prompt`` (str); it is sorted by ``(account_id, ts)`` here, ties kept in input order. If it
carries an ``embedding`` column (list/array of floats) that is used instead of embedding the
prompts, so a benchmark can embed once and run every baseline on the same vectors.

Cost control (documented per class): per-account history is capped at ``max_history`` most
recent queries (default 1000), distance work is done in blocks of matrix products, and the
only per-query Python loops are the ones the algorithms make inherently sequential (PRADA's
growing set, the stateful detector's buffer reset after a detection). BLAS runs
single-threaded inside ``fit``/``decision_function`` (threadpoolctl, a scikit-learn
dependency): the per-account matrices are small, and multi-threaded BLAS spinning cost 3-6x
wall time on a busy 2-core machine in our measurements.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from scipy import stats
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits

from distillguard.bench.embed import embed as _default_embed
from distillguard.errors import NotFittedError

__all__ = ["VolumeBaseline", "PRADA", "StatefulKNN", "MMDWindow"]

Embedder = Callable[[list[str]], np.ndarray]

_BLOCK = 256  # query rows per distance block: B x (max_history + B) floats stays a few MB


# --------------------------------------------------------------------------------------------
# shared plumbing
# --------------------------------------------------------------------------------------------


@dataclass
class _Grouped:
    """Requests sorted by (account_id, ts) and cut into per-account slices."""

    frame: pl.DataFrame
    account_ids: list[str]
    offsets: np.ndarray  # shape (n_accounts + 1,), rows of account a are offsets[a]:offsets[a+1]

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def _group(requests: pl.DataFrame, required: set[str]) -> _Grouped:
    """Validate columns, sort by account then time (stable), and compute account offsets."""
    if not isinstance(requests, pl.DataFrame):
        raise TypeError(f"requests must be a polars DataFrame, got {type(requests).__name__}")
    missing = required - set(requests.columns)
    if missing:
        raise ValueError(f"requests lacks required columns {sorted(missing)}")
    frame = (
        requests.with_columns(pl.col("account_id").cast(pl.Utf8))
        .with_row_index("_row")
        .sort(["account_id", "ts", "_row"])
        .drop("_row")
    )
    counts = frame.group_by("account_id", maintain_order=True).len()
    offsets = np.zeros(counts.height + 1, dtype=np.int64)
    np.cumsum(counts["len"].to_numpy(), out=offsets[1:])
    return _Grouped(frame, counts["account_id"].to_list(), offsets)


def _budget_threshold(scores: np.ndarray, contamination: float) -> float:
    """Smallest cut-off with at most ``floor(contamination * n)`` scores strictly above it.

    This is the (k+1)-th largest score, k = floor(contamination * n): ties at the cut-off are
    not flagged, so the benign training false-positive rate never exceeds the budget (PyOD's
    interpolated percentile can overshoot it on small samples).
    """
    if scores.size == 0:
        raise ValueError("no benign accounts to calibrate the threshold on")
    k = int(math.floor(contamination * scores.size + 1e-9))
    desc = np.sort(scores)[::-1]
    return float(desc[min(k, scores.size - 1)])


def _first_crossing(points: np.ndarray, tests: np.ndarray, untested: float,
                    threshold: float) -> int:
    """First checkpoint at which the prefix score exceeds ``threshold``, or -1.

    ``tests[i]`` is the detector's test score at request ``points[i]`` (increasing); the
    prefix score is ``untested`` before the first test and the running maximum of the tests
    from then on, so it first exceeds the threshold at the first test that does (or at
    request 0 when even an untested account would be flagged).
    """
    if untested > threshold:
        return 0
    hit = np.flatnonzero(tests > threshold)
    return int(points[hit[0]]) if hit.size else -1


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32, unit-norm rows (zero rows stay zero) so distances are comparable everywhere."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)  # inputs may be read-only views
    if x.ndim != 2:
        raise ValueError(f"embedder must return a 2-d array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _pairwise_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows (``sqrt(2 - 2 cos)`` for unit rows; zero rows of
    empty prompts are handled exactly, two empty prompts being at distance 0)."""
    return np.sqrt(_sq_dists(a, b))


class _BaseDetector(BaseEstimator):
    """Common fit / decision_function / predict for account-level detectors.

    Subclasses implement ``_fit(grouped) -> calibration scores`` (learning their state) and
    ``_score(grouped) -> dict of per-account columns`` including ``score``.
    """

    _needs_text = True

    # -- public API ---------------------------------------------------------------------------

    def fit(self, requests: pl.DataFrame, y: None = None) -> _BaseDetector:
        """Learn from benign traffic and calibrate ``threshold_`` to the FP budget.

        Parameters
        ----------
        requests : polars.DataFrame
            Benign traffic only (``account_id``, ``ts``, ``prompt``).
        y : None
            Ignored; present for scikit-learn API compatibility.

        Returns
        -------
        self
        """
        if not 0.0 < float(self.contamination) <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination}")
        self._check_params()
        grouped = _group(requests, self._required(requests))
        with threadpool_limits(limits=1, user_api="blas"):
            scores = np.asarray(self._fit(grouped), dtype=np.float64)
        self.decision_scores_ = scores
        self.threshold_ = _budget_threshold(scores, float(self.contamination))
        self.labels_ = scores > self.threshold_
        self.n_accounts_fit_ = int(scores.size)
        return self

    def decision_function(self, requests: pl.DataFrame) -> pl.DataFrame:
        """Score every account in ``requests``; higher = more suspicious.

        Parameters
        ----------
        requests : polars.DataFrame
            Traffic to score (``account_id``, ``ts``, ``prompt``).

        Returns
        -------
        polars.DataFrame
            One row per account: ``account_id``, ``score`` (float), ``n_queries`` and any
            detector-specific diagnostics, sorted by ``account_id``.
        """
        self._check_fitted()
        grouped = _group(requests, self._required(requests))
        with threadpool_limits(limits=1, user_api="blas"):
            cols = self._score(grouped)
        return pl.DataFrame(
            {"account_id": grouped.account_ids, **cols,
             "n_queries": grouped.counts().astype(np.int64)}
        ).with_columns(pl.col("score").cast(pl.Float64))

    def predict(self, requests: pl.DataFrame) -> pl.DataFrame:
        """Score accounts and flag those above ``threshold_``.

        Returns
        -------
        polars.DataFrame
            ``decision_function`` output plus ``flagged`` (bool, ``score > threshold_``).
        """
        out = self.decision_function(requests)
        return out.with_columns((pl.col("score") > self.threshold_).alias("flagged"))

    def first_alerts(self, requests: pl.DataFrame) -> pl.DataFrame:
        """Stream each account's requests in time order; find its first alert.

        The streaming detector is the batch detector evaluated on every request *prefix* of
        the account at its checkpoints: an account alerts at the first checkpoint where
        ``decision_function`` of the prefix ending there would exceed ``threshold_`` (the
        threshold fitted on benign traffic; nothing is re-calibrated). Checkpoints are the
        points where the detector runs a test, so the prefix score there is the running
        maximum of the tests so far and can only grow:

        * :class:`VolumeBaseline` (``per="total"``) and :class:`StatefulKNN`: every request
          (both are per-query detectors; exact at every request);
        * :class:`PRADA`: every ``check_every``-th request, as its batch score tests;
        * :class:`MMDWindow`: the end of every window (every ``stride`` requests);

        and, for every detector, the account's last request, so the verdict at the end of
        the stream is exactly ``predict``'s (except ``VolumeBaseline(per="active_day")``,
        whose rate can fall). Testing at every request instead would run more tests than
        the benign calibration saw, so the budget would no longer hold. Cost of the spacing:
        if the test statistic, once over the threshold, stays over it, the alert comes at
        most ``spacing - 1`` requests of that account later than a test after every request
        would give (PRADA: ``check_every - 1`` = 9, MMD: ``stride - 1`` = 49 by default; 0
        for the per-request detectors); an excursion that starts and ends between two
        checkpoints is not seen, as the detector itself would not see it. Before the first
        test a prefix scores what ``decision_function`` gives an untested account.

        Parameters
        ----------
        requests : polars.DataFrame
            Traffic to replay (``account_id``, ``ts``, ``prompt`` or ``embedding``).

        Returns
        -------
        polars.DataFrame
            One row per account, sorted by ``account_id``: ``account_id``, ``n_queries``,
            ``alert_index`` (0-based position of the first alerting request in the account's
            time order, null if it never alerts) and ``alert_ts`` (its ``ts``, or null).
        """
        self._check_fitted()
        grouped = _group(requests, self._required(requests))
        with threadpool_limits(limits=1, user_api="blas"):
            local = np.asarray(self._first_alert(grouped), dtype=np.int64)
        hit = local >= 0
        rows = np.where(hit, grouped.offsets[:-1] + local, 0)
        ts = grouped.frame["ts"].gather(rows) if grouped.frame.height else grouped.frame["ts"]
        return pl.DataFrame({
            "account_id": grouped.account_ids,
            "n_queries": grouped.counts().astype(np.int64),
            "alert_index": pl.Series(np.where(hit, local, 0), dtype=pl.Int64),
            "alert_ts": ts,
            "_hit": hit,
        }).with_columns(
            pl.when("_hit").then(pl.col("alert_index")).alias("alert_index"),
            pl.when("_hit").then(pl.col("alert_ts")).alias("alert_ts"),
        ).drop("_hit")

    def benign_rank(self, scores: Any) -> np.ndarray:
        """Share of benign training accounts scoring strictly below each score.

        Lets a report say "above 99.2% of legitimate accounts" instead of a raw score.

        Parameters
        ----------
        scores : array-like of shape (n,)

        Returns
        -------
        numpy.ndarray of shape (n,), values in [0, 1]
        """
        self._check_fitted()
        ref = np.sort(self.decision_scores_)
        return np.searchsorted(ref, np.asarray(scores, dtype=float), side="left") / ref.size

    # -- hooks --------------------------------------------------------------------------------

    def _required(self, requests: pl.DataFrame) -> set[str]:
        """Columns needed: text detectors need ``prompt`` unless ``embedding`` is given."""
        if self._needs_text and "embedding" not in requests.columns:
            return {"account_id", "ts", "prompt"}
        return {"account_id", "ts"}

    def _check_params(self) -> None:
        """Validate subclass parameters (in fit, never in __init__)."""

    def _fit(self, grouped: _Grouped) -> np.ndarray:
        """Learn state from benign traffic; return benign account scores for calibration."""
        return self._score(grouped)["score"]

    def _score(self, grouped: _Grouped) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _first_alert(self, grouped: _Grouped) -> np.ndarray:
        """Per account, the index (within the account) of the first alert, or -1."""
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; "
                "call fit(benign_requests) first."
            )

    def _embeddings(self, grouped: _Grouped) -> np.ndarray:
        """Embeddings of the sorted prompts: the ``embedding`` column, else the embedder."""
        frame = grouped.frame
        if "embedding" in frame.columns:
            col = frame["embedding"]
            if isinstance(col.dtype, pl.List):
                col = col.list.to_array(int(col.list.len().max() or 0))
            return _unit_rows(col.to_numpy())
        embedder = self.embedder if self.embedder is not None else _default_embed
        texts = frame["prompt"].fill_null("").to_list()
        x = np.asarray(embedder(texts)) if texts else np.zeros((0, 1), np.float32)
        if x.shape[0] != len(texts):
            raise ValueError(f"embedder returned {x.shape[0]} rows for {len(texts)} texts")
        return _unit_rows(x)


# --------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------


class VolumeBaseline(_BaseDetector):
    """Flag accounts whose request volume exceeds that of (almost) every benign account.

    The rate-limit baseline every API already has: distillation needs many outputs, so volume
    is the first thing to look at — and the easiest to evade by spreading over accounts.

    Parameters
    ----------
    per : {"total", "active_day"}, default "total"
        ``"total"``: requests per account. ``"active_day"``: requests divided by the number of
        distinct UTC days with at least one request (does not punish long-lived accounts).
    contamination : float, default 0.001
        False-positive budget: share of benign accounts allowed above ``threshold_``.

    Attributes
    ----------
    threshold_ : float
        Cut-off; ``flagged = score > threshold_``.
    decision_scores_ : numpy.ndarray of shape (n_benign_accounts,)
        Benign training scores (for ``benign_rank``).
    labels_ : numpy.ndarray of bool
        Training flags (at most ``floor(contamination * n)`` are True).

    Examples
    --------
    >>> import datetime as dt
    >>> t = dt.datetime(2025, 1, 1)
    >>> benign = pl.DataFrame({"account_id": ["a", "b", "b"], "ts": [t, t, t]})
    >>> VolumeBaseline().fit(benign).threshold_
    2.0
    """

    _needs_text = False

    def __init__(self, per: Literal["total", "active_day"] = "total",
                 contamination: float = 0.001) -> None:
        self.per = per
        self.contamination = contamination

    def _check_params(self) -> None:
        if self.per not in ("total", "active_day"):
            raise ValueError(f"per must be 'total' or 'active_day', got {self.per!r}")

    def _score(self, grouped: _Grouped) -> dict[str, np.ndarray]:
        counts = grouped.counts().astype(np.float64)
        if self.per == "active_day":
            days = (
                grouped.frame.group_by("account_id", maintain_order=True)
                .agg(pl.col("ts").dt.date().n_unique().alias("days"))["days"]
                .to_numpy()
            )
            counts = counts / np.maximum(days, 1)
        return {"score": counts}

    def _first_alert(self, grouped: _Grouped) -> np.ndarray:
        """Exact at every request: the running count (``"total"``), or the running count over
        the distinct days seen so far (``"active_day"``; that rate can fall again, so the
        stream may alert on an account that ``predict`` does not flag at the end)."""
        thr = float(self.threshold_)
        n = grouped.counts()
        if self.per == "total":
            j = max(0, math.floor(thr - 1.0) + 1)  # the prefix ending at request j holds j + 1
            return np.where(n > j, j, -1).astype(np.int64)
        out = np.full(n.size, -1, dtype=np.int64)
        if not n.sum():
            return out
        day = grouped.frame["ts"].dt.date().to_physical().to_numpy()
        start = np.zeros(day.size, dtype=bool)
        start[grouped.offsets[:-1][n > 0]] = True
        new_day = start.copy()
        new_day[1:] |= day[1:] != day[:-1]
        cum = np.cumsum(new_day)
        first_row = np.repeat(grouped.offsets[:-1], n)
        j = np.arange(day.size) - first_row  # position within the account
        days = cum - cum[first_row] + 1
        hit = np.flatnonzero((j + 1) / days > thr)
        acct = np.repeat(np.arange(n.size), n)
        a, first = np.unique(acct[hit], return_index=True)
        out[a] = j[hit[first]]
        return out


# --------------------------------------------------------------------------------------------
# PRADA
# --------------------------------------------------------------------------------------------


class PRADA(_BaseDetector):
    """PRADA: Shapiro–Wilk test on the stream of minimum query distances.

    Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing Attacks",
    IEEE EuroS&P 2019. Natural queries are spread so that the distance of a new query to its
    nearest earlier query is roughly normally distributed; synthetic extraction queries
    (perturbations of seeds, systematic sweeps) are not. Per account, as in the paper's
    Algorithm 1 and the authors' reference code:

    1. the first query starts the *growing set* G (the paper keeps one G per predicted class;
       prompts have no class, so there is one G per account);
    2. each later query x gets ``d = min_{g in G} ||x - g||``, appended to the distance set D;
       x joins G only if ``d > T``, and then ``T <- max(T, mean(D_G) - std(D_G))`` over the
       distances recorded when members joined (starting from ``D_G = [0]``, ``T = 0``);
    3. every ``check_every`` queries, D is stripped of values beyond 3 standard deviations of
       its mean; if more than ``min_distances`` remain, the Shapiro–Wilk statistic W is
       computed and the account is an attack when ``W < delta``.

    Score = ``1 - min W`` over all checks (the paper alarms at the first check below
    ``delta``, so the most non-normal check is what matters); ``threshold_ = 1 - delta`` with
    ``delta`` calibrated on benign accounts to the false-positive budget instead of the
    paper's hand-set 0.9–0.96. Accounts never reaching a test score 0 (W = 1): with fewer than
    ``min_distances + 1`` queries (default 101) PRADA cannot judge, as in the paper.

    Deviations (for bounded cost; documented so results are read correctly): G keeps its
    ``max_history`` most recent members and the test uses the last ``max_history`` distances
    (the paper lets both grow without bound; Shapiro–Wilk p-values are not even defined beyond
    5000 points). When all remaining distances are identical (an account repeating one prompt
    verbatim) W is undefined; we use W = 0, since a point mass is as non-normal as it gets.

    Parameters
    ----------
    contamination : float, default 0.001
        False-positive budget (share of benign accounts flagged).
    min_distances : int, default 100
        A test needs more than this many distances after outlier removal (paper: 100).
    check_every : int, default 10
        Test every this many queries (the authors' code tests every 10).
    max_history : int, default 1000
        Cap on growing-set members and on the distances tested.
    embedder : callable or None, default None
        ``list[str] -> (n, d) array``; None uses ``distillguard.bench.embed.embed``.

    Attributes
    ----------
    threshold_ : float
        ``1 - delta``; ``flagged = score > threshold_``.
    delta_ : float
        Calibrated Shapiro–Wilk cut-off (``W < delta_`` flags).
    decision_scores_, labels_ : numpy.ndarray
        Benign training scores and flags.
    """

    def __init__(self, contamination: float = 0.001, min_distances: int = 100,
                 check_every: int = 10, max_history: int = 1000,
                 embedder: Embedder | None = None) -> None:
        self.contamination = contamination
        self.min_distances = min_distances
        self.check_every = check_every
        self.max_history = max_history
        self.embedder = embedder

    def _check_params(self) -> None:
        if self.min_distances < 3:
            raise ValueError("min_distances must be >= 3 (Shapiro–Wilk needs 3 points)")
        if self.check_every < 1 or self.max_history <= self.min_distances:
            raise ValueError("need check_every >= 1 and max_history > min_distances")

    def _fit(self, grouped: _Grouped) -> np.ndarray:
        cols = self._score(grouped)
        if not cols["n_tests"].any():
            raise ValueError(f"no benign account has more than min_distances + 1 = "
                             f"{self.min_distances + 1} queries; cannot calibrate delta")
        scores = cols["score"]
        self.delta_ = 1.0 - _budget_threshold(scores, float(self.contamination))
        return scores

    def _score(self, grouped: _Grouped) -> dict[str, np.ndarray]:
        x = self._embeddings(grouped)
        n_acc = len(grouped.account_ids)
        w_min = np.ones(n_acc)
        n_tests = np.zeros(n_acc, dtype=np.int64)
        for a in range(n_acc):
            lo, hi = grouped.offsets[a], grouped.offsets[a + 1]
            w_min[a], n_tests[a] = self._account(x[lo:hi])
        return {"score": 1.0 - w_min, "w_min": w_min, "n_tests": n_tests}

    def _first_alert(self, grouped: _Grouped) -> np.ndarray:
        """Replay PRADA per account and stop at the first test with ``1 - W > threshold_``.

        Checkpoints are PRADA's own tests (every ``check_every`` requests and the last one):
        a Shapiro–Wilk test costs ~0.15 ms, and testing after every request would also test
        far more often than the benign calibration did, breaking the false-positive budget.
        Replaying stops at the first alert, so detected accounts cost less than scoring.
        """
        x = self._embeddings(grouped)
        thr = float(self.threshold_)
        out = np.full(len(grouped.account_ids), -1, dtype=np.int64)
        if 0.0 > thr:  # an untested account scores 1 - 1 = 0
            return np.zeros_like(out)
        for a in range(out.size):
            for i, w in self._tests(x[grouped.offsets[a]:grouped.offsets[a + 1]]):
                if 1.0 - w > thr:
                    out[a] = i
                    break
        return out

    def _account(self, x: np.ndarray) -> tuple[float, int]:
        """Run PRADA over one account's time-ordered embeddings; return (min W, n tests)."""
        w_min, n_tests = 1.0, 0
        for _, w in self._tests(x):
            n_tests += 1
            w_min = min(w_min, w)
        return w_min, n_tests

    def _tests(self, x: np.ndarray) -> Iterator[tuple[int, float]]:
        """PRADA over one account's time-ordered embeddings, in order: yields ``(i, W)`` for
        every test run (at query ``i``); stopping early skips the rest of the account."""
        n = x.shape[0]
        cap = int(self.max_history)
        if n <= self.min_distances:
            return
        members: deque[int] = deque([0])  # global indices of growing-set members
        g_sum, g_sq, g_n = 0.0, 0.0, 1  # running stats of D_G, which starts as [0]
        thr = 0.0
        dists = np.empty(n, dtype=np.float64)  # dists[i] = min distance of query i (i >= 1)
        for s in range(1, n, _BLOCK):
            e = min(n, s + _BLOCK)
            old = np.fromiter(members, dtype=np.int64, count=len(members))
            cols = np.concatenate([old, np.arange(s, e)])
            block = _pairwise_dist(x[s:e], x[cols]).astype(np.float64)
            is_member = np.zeros(cols.size, dtype=bool)
            is_member[: old.size] = True
            order: deque[int] = deque(range(old.size))  # member columns, oldest first
            for r in range(e - s):
                i = s + r
                d = float(block[r, is_member].min())
                dists[i] = d
                if d > thr:
                    col = old.size + r
                    is_member[col] = True
                    order.append(col)
                    members.append(i)
                    if len(order) > cap:
                        is_member[order.popleft()] = False
                        members.popleft()
                    g_sum, g_sq, g_n = g_sum + d, g_sq + d * d, g_n + 1
                    mean = g_sum / g_n
                    std = math.sqrt(max(g_sq / g_n - mean * mean, 0.0))
                    thr = max(thr, mean - std)
                if i % self.check_every == 0 or i == n - 1:
                    w = self._shapiro(dists[max(1, i + 1 - cap): i + 1])
                    if w is not None:
                        yield i, w

    def _shapiro(self, d: np.ndarray) -> float | None:
        """W after 3-sigma outlier removal, or None if too few distances remain."""
        sd = d.std()
        if sd > 0:
            d = d[np.abs(d - d.mean()) < 3.0 * sd]
        if d.size <= self.min_distances:
            return None
        if np.ptp(d) == 0:
            return 0.0  # point mass: maximally non-normal (scipy would return W = 1)
        return float(stats.shapiro(d).statistic)


# --------------------------------------------------------------------------------------------
# Stateful k-NN detection
# --------------------------------------------------------------------------------------------


class StatefulKNN(_BaseDetector):
    """Stateful detection: mean distance to the k nearest earlier queries of the account.

    Chen, Carlini, Wagner, "Stateful Detection of Black-Box Adversarial Attacks", ACM SPAI
    2020. Query-based attacks send many queries close to each other; the detector keeps each
    user's query history and, for every new query (once the buffer holds ``k`` queries),
    computes the mean distance to its ``k`` nearest neighbours in the buffer. A query is a
    *detection* when that mean is below ``query_threshold_``, set (as in the paper) at a low
    percentile — ``query_percentile``, default 0.1% — of the same statistic on benign traffic;
    after a detection the buffer is cleared (as in the authors' code), so ``n_detections``
    counts separate detections rather than one long run.

    Account score = ``-(min over the account's queries of the mean k-NN distance)``: higher
    means the account at some point sent a query unusually close to ``k`` earlier ones. The
    account-level ``threshold_`` is calibrated on benign accounts to the false-positive budget
    (a per-query 0.1% rate would flag far more than 0.1% of accounts). Accounts with at most
    ``k`` queries are never scored and get -2.0, the largest possible distance between unit
    vectors (least suspicious).

    Deviations: the paper encodes images with a contrastively trained similarity encoder; we
    use the text embedding. The paper's buffer is unbounded; we keep the last ``max_history``
    queries (default 1000). Benign per-query statistics come from each benign account's own
    stream (the streaming analogue of the paper's within-training-set k-NN distances).

    Parameters
    ----------
    k : int, default 50
        Neighbours (paper: 50).
    query_percentile : float, default 0.001
        Quantile of benign per-query mean k-NN distances used as the detection cut-off.
    contamination : float, default 0.001
        False-positive budget (share of benign accounts flagged).
    max_history : int, default 1000
        Buffer cap per account (must exceed ``k``).
    embedder : callable or None, default None
        ``list[str] -> (n, d) array``; None uses ``distillguard.bench.embed.embed``.

    Attributes
    ----------
    query_threshold_ : float
        Per-query detection cut-off on the mean k-NN distance.
    threshold_ : float
        Account cut-off on ``score``; ``flagged = score > threshold_``.
    decision_scores_, labels_ : numpy.ndarray
        Benign training scores and flags.
    """

    def __init__(self, k: int = 50, query_percentile: float = 0.001,
                 contamination: float = 0.001, max_history: int = 1000,
                 embedder: Embedder | None = None) -> None:
        self.k = k
        self.query_percentile = query_percentile
        self.contamination = contamination
        self.max_history = max_history
        self.embedder = embedder

    def _check_params(self) -> None:
        if self.k < 1 or self.max_history <= self.k:
            raise ValueError("need k >= 1 and max_history > k")
        if not 0.0 < self.query_percentile < 1.0:
            raise ValueError("query_percentile must be in (0, 1)")

    def _fit(self, grouped: _Grouped) -> np.ndarray:
        x = self._embeddings(grouped)
        n_acc = len(grouped.account_ids)
        # pass 1: plain streaming statistic (no resets) gives the per-query benign distribution
        per_query = [self._means(x[grouped.offsets[a]:grouped.offsets[a + 1]], None)[0]
                     for a in range(n_acc)]
        pooled = np.concatenate(per_query) if per_query else np.empty(0)
        pooled = pooled[np.isfinite(pooled)]
        if pooled.size == 0:
            raise ValueError(f"no benign account has more than k={self.k} queries; "
                             "cannot set the per-query threshold")
        self.query_threshold_ = float(np.quantile(pooled, self.query_percentile))
        # pass 2: only accounts with a detection change once resets apply
        scores = np.empty(n_acc)
        for a, m in enumerate(per_query):
            if np.nanmin(m, initial=np.inf) < self.query_threshold_:
                m = self._means(x[grouped.offsets[a]:grouped.offsets[a + 1]],
                                self.query_threshold_)[0]
            scores[a] = self._account_score(m)
        return scores

    def _score(self, grouped: _Grouped) -> dict[str, np.ndarray]:
        x = self._embeddings(grouped)
        n_acc = len(grouped.account_ids)
        scores = np.empty(n_acc)
        n_det = np.zeros(n_acc, dtype=np.int64)
        for a in range(n_acc):
            m, n_det[a] = self._means(x[grouped.offsets[a]:grouped.offsets[a + 1]],
                                      self.query_threshold_)
            scores[a] = self._account_score(m)
        return {"score": scores, "n_detections": n_det}

    def _first_alert(self, grouped: _Grouped) -> np.ndarray:
        """Per-query, exact: the first query whose mean k-NN distance is below
        ``-threshold_`` (the prefix score is minus the running minimum of those means).

        The detector's state evolves exactly as in scoring (buffer reset after each
        per-query detection at ``query_threshold_``); only the alert uses the account-level
        threshold calibrated on benign accounts.
        """
        x = self._embeddings(grouped)
        thr = float(self.threshold_)
        out = np.empty(len(grouped.account_ids), dtype=np.int64)
        for a in range(out.size):
            m = self._means(x[grouped.offsets[a]:grouped.offsets[a + 1]],
                            self.query_threshold_)[0]
            ok = np.isfinite(m)
            out[a] = _first_crossing(np.flatnonzero(ok), -m[ok], -2.0, thr)
        return out

    @staticmethod
    def _account_score(means: np.ndarray) -> float:
        finite = means[np.isfinite(means)]
        return -float(finite.min()) if finite.size else -2.0

    def _means(self, x: np.ndarray, delta: float | None) -> tuple[np.ndarray, int]:
        """Mean k-NN distance of each query to its buffer (NaN while the buffer has < k).

        With ``delta`` set, a query with mean < delta is a detection and the buffer restarts
        after it: the block is recomputed from the next query, whose history starts there.
        Right after a reset the candidate set is tiny, so this stays cheap.
        """
        n, k, cap = x.shape[0], int(self.k), int(self.max_history)
        means = np.full(n, np.nan)
        n_det = 0
        start = 0  # first query in the current buffer (after the last reset)
        s = start + k  # queries before start + k cannot have k neighbours
        while s < n:
            e = min(n, s + _BLOCK)
            lo = max(start, s - cap)
            d = _pairwise_dist(x[s:e], x[lo:e])
            rows = np.arange(s, e)[:, None]
            cand = np.arange(lo, e)[None, :]
            valid = (cand < rows) & (cand >= rows - cap)
            d[~valid] = np.inf
            part = np.partition(d, k - 1, axis=1)[:, :k]
            m = part.mean(axis=1, dtype=np.float64)
            hits = np.flatnonzero(m < delta) if delta is not None else np.empty(0, np.int64)
            if hits.size:
                r = int(hits[0])
                means[s: s + r + 1] = m[: r + 1]
                n_det += 1
                start = s + r + 1
                s = start + k
            else:
                means[s:e] = m
                s = e
        return means, n_det


# --------------------------------------------------------------------------------------------
# MMD window test
# --------------------------------------------------------------------------------------------


class MMDWindow(_BaseDetector):
    """Windowed maximum-mean-discrepancy test of an account's queries against benign traffic.

    After Liu, Guo, Dong (2026), who test an account's query embeddings against benign history
    with MMD. We could not consult the paper's text, so this is the standard kernel two-sample
    test (Gretton et al., JMLR 2012) applied to sliding windows, as the brief describes it:

    * at ``fit``, benign accounts are split at random into a *reference* part, from which
      ``n_reference`` query embeddings Y are sampled, and a *calibration* part, whose account
      scores set ``threshold_`` (scoring the accounts that supplied Y against Y would
      understate their MMD and the threshold);
    * RBF kernel ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))`` with ``sigma`` the median
      pairwise distance within Y (median heuristic) unless ``bandwidth`` is given;
    * per account, windows of ``window`` consecutive queries every ``stride`` queries (plus
      one ending at the last query); each gets the unbiased estimate

      ``MMD^2_u = mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean_{i,j} k(x_i,y_j)``;

    * score = max over windows, so one burst of off-distribution traffic is enough. Accounts
      with fewer than ``window`` queries score 0 (the expected MMD^2_u under the null: no
      evidence either way), because short windows would be all noise.

    The threshold comes from benign *account* scores (max over each account's windows), so
    the false-positive budget holds per account. No permutation test: the calibrated
    threshold replaces the p-value.

    Parameters
    ----------
    window : int, default 50
        Queries per window.
    stride : int or None, default None
        Step between windows; None = ``window`` (non-overlapping).
    n_reference : int, default 1000
        Size of the benign reference sample Y.
    reference_fraction : float, default 0.5
        Share of benign accounts used for Y (the rest calibrate the threshold).
    bandwidth : float or None, default None
        RBF ``sigma``; None = median heuristic on Y.
    contamination : float, default 0.001
        False-positive budget (share of benign accounts flagged).
    random_state : int, default 0
        Seed for the account split and the reference sample.
    embedder : callable or None, default None
        ``list[str] -> (n, d) array``; None uses ``distillguard.bench.embed.embed``.

    Attributes
    ----------
    reference_ : numpy.ndarray of shape (m, d)
        Benign reference embeddings Y.
    bandwidth_ : float
        Kernel ``sigma`` in use.
    yy_term_ : float
        ``mean_{i!=j} k(y_i, y_j)``, precomputed.
    reference_accounts_ : list of str
        Benign accounts that supplied Y (not used for calibration).
    threshold_, decision_scores_, labels_
        As in every baseline (scores of the calibration accounts).
    """

    def __init__(self, window: int = 50, stride: int | None = None, n_reference: int = 1000,
                 reference_fraction: float = 0.5, bandwidth: float | None = None,
                 contamination: float = 0.001, random_state: int = 0,
                 embedder: Embedder | None = None) -> None:
        self.window = window
        self.stride = stride
        self.n_reference = n_reference
        self.reference_fraction = reference_fraction
        self.bandwidth = bandwidth
        self.contamination = contamination
        self.random_state = random_state
        self.embedder = embedder

    def _check_params(self) -> None:
        if self.window < 2:
            raise ValueError("window must be >= 2 (unbiased MMD needs pairs)")
        if self.stride is not None and self.stride < 1:
            raise ValueError("stride must be >= 1")
        if self.n_reference < 2 or not 0.0 < self.reference_fraction < 1.0:
            raise ValueError("need n_reference >= 2 and 0 < reference_fraction < 1")

    def _fit(self, grouped: _Grouped) -> np.ndarray:
        n_acc = len(grouped.account_ids)
        if n_acc < 2:
            raise ValueError("MMDWindow.fit needs at least 2 benign accounts "
                             "(one part for the reference sample, one for calibration)")
        x = self._embeddings(grouped)
        rng = np.random.default_rng(self.random_state)
        perm = rng.permutation(n_acc)
        n_ref = min(max(1, round(self.reference_fraction * n_acc)), n_acc - 1)
        ref_acc, cal_acc = np.sort(perm[:n_ref]), np.sort(perm[n_ref:])
        ref_rows = np.concatenate(
            [np.arange(grouped.offsets[a], grouped.offsets[a + 1]) for a in ref_acc])
        if ref_rows.size < 2:
            raise ValueError("reference accounts hold fewer than 2 queries")
        take = rng.choice(ref_rows, size=min(int(self.n_reference), ref_rows.size),
                          replace=False)
        y = x[np.sort(take)]
        sq_y = _sq_dists(y, y)
        if self.bandwidth is not None:
            sigma = float(self.bandwidth)
        else:
            iu = np.triu_indices(y.shape[0], k=1)
            sigma = float(np.sqrt(np.median(sq_y[iu])))
        if not sigma > 0:
            raise ValueError("bandwidth is 0 (identical reference queries); set bandwidth")
        self.reference_ = y
        self.bandwidth_ = sigma
        self.gamma_ = 1.0 / (2.0 * sigma * sigma)
        k_yy = np.exp(-self.gamma_ * sq_y)
        m = y.shape[0]
        self.yy_term_ = float((k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)))
        self.reference_accounts_ = [grouped.account_ids[a] for a in ref_acc]
        cal = [self._account(x[grouped.offsets[a]:grouped.offsets[a + 1]]) for a in cal_acc]
        if not any(n_win for _, n_win in cal):
            raise ValueError(f"no calibration account has window={self.window} queries; "
                             "cannot calibrate the threshold")
        return np.array([score for score, _ in cal])

    def _score(self, grouped: _Grouped) -> dict[str, np.ndarray]:
        x = self._embeddings(grouped)
        n_acc = len(grouped.account_ids)
        scores = np.zeros(n_acc)
        n_windows = np.zeros(n_acc, dtype=np.int64)
        for a in range(n_acc):
            scores[a], n_windows[a] = self._account(x[grouped.offsets[a]:grouped.offsets[a + 1]])
        return {"score": scores, "n_windows": n_windows}

    def _first_alert(self, grouped: _Grouped) -> np.ndarray:
        """The end of the first window whose MMD^2 exceeds ``threshold_``.

        Checkpoints are the window ends the score is made of (every ``stride`` requests, and
        the last request): a window test is only run once a window is complete, and testing
        a window ending at every request would run ``stride`` times as many tests as the
        benign calibration did. Accounts (and prefixes) shorter than ``window`` score 0.
        """
        x = self._embeddings(grouped)
        thr = float(self.threshold_)
        out = np.empty(len(grouped.account_ids), dtype=np.int64)
        for a in range(out.size):
            ends, mmd2 = self._windows(x[grouped.offsets[a]:grouped.offsets[a + 1]])
            out[a] = _first_crossing(ends, mmd2, 0.0, thr)
        return out

    def _account(self, x: np.ndarray) -> tuple[float, int]:
        """Max unbiased MMD^2 over the account's windows, and the number of windows."""
        ends, mmd2 = self._windows(x)
        if not ends.size:
            return 0.0, 0
        return float(mmd2.max()), int(ends.size)

    def _windows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unbiased MMD^2 of each window of the account, with the window's last query index
        (increasing); empty arrays when the account has fewer than ``window`` queries."""
        n, w = x.shape[0], int(self.window)
        if n < w:
            return np.empty(0, dtype=np.int64), np.empty(0)
        stride = int(self.stride or w)
        starts = np.arange(0, n - w + 1, stride)
        if starts[-1] != n - w:
            starts = np.append(starts, n - w)
        # cross term: per-query mean kernel to Y, then window sums by cumulative sums
        kxy = np.concatenate([  # row chunks bound memory to ~8192 x n_reference floats
            np.exp(-self.gamma_ * _sq_dists(x[c: c + 8192], self.reference_))
            .mean(axis=1, dtype=np.float64)
            for c in range(0, n, 8192)
        ])
        csum = np.concatenate([[0.0], np.cumsum(kxy)])
        cross = (csum[starts + w] - csum[starts]) / w
        # within-window term, batched over windows (chunks bound memory to ~64 x w x w)
        within = np.empty(starts.size)
        offs = np.arange(w)
        for c in range(0, starts.size, 64):
            st = starts[c: c + 64]
            win = x[st[:, None] + offs[None, :]]  # (b, w, d)
            gram = np.einsum("bid,bjd->bij", win, win)
            sqn = np.einsum("bii->bi", gram)
            sq = np.maximum(sqn[:, :, None] + sqn[:, None, :] - 2.0 * gram, 0.0)
            kxx = np.exp(-self.gamma_ * sq)
            within[c: c + st.size] = (kxx.sum(axis=(1, 2)) - np.einsum("bii->b", kxx)) / (w * (w - 1))
        mmd2 = within + self.yy_term_ - 2.0 * cross
        return starts + (w - 1), mmd2


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (general rows: empty prompts embed to zero vectors)."""
    sq = (np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
          - 2.0 * (a @ b.T))
    return np.maximum(sq, 0.0)
