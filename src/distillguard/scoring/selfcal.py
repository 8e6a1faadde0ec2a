"""Self-calibration: the flag threshold re-estimated on each run's own traffic.

A threshold fitted on one population's legitimate accounts drifts on another: a provider
whose customers are mostly API developers scores higher across the board than one serving
chat users. Each run therefore estimates the legitimate score distribution from the traffic
itself, with the shipped calibration as the prior:

* the legitimate component keeps the *shape* of the benign score distribution the shipped
  calibration was fitted on (``calibration.benign_quantiles``) and moves by a shift
  ``delta``;
* campaign accounts (10-30% of accounts in a bad week) form a second, free component, so
  they do not drag the estimate: expectation-maximisation over the two, with a Gaussian
  prior on ``delta`` (``prior_sd``), bounded by ``max_shift``;
* the threshold is the prior threshold plus ``delta``, and the report shows the promised
  false-positive rate next to the one the fitted legitimate component implies at the
  threshold actually used.

``distillguard calibrate`` on known-good accounts (or ``distillguard fit`` on labelled
traffic) still overrides: an explicit calibrator is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillguard.scoring.calibrate import Calibrator

__all__ = ["SelfCalibration", "benign_sketch", "self_calibrate"]


@dataclass(frozen=True)
class SelfCalibration:
    """The outcome of :func:`self_calibrate`."""

    calibrator: Calibrator
    delta: float                 # shift of the legitimate component against the prior
    legit_share: float           # estimated share of legitimate accounts
    promised_fpr: float
    estimated_fpr: float         # legitimate mass above the threshold used
    prior_threshold: float
    n_accounts: int
    method: str                  # "self" | "prior" (too few accounts or no prior shape)

    def to_json(self) -> dict[str, float | int | str]:
        return {"method": self.method, "raw_threshold": round(self.calibrator.raw_threshold_, 6),
                "raw_scale": round(self.calibrator.raw_scale_, 6),
                "prior_threshold": round(self.prior_threshold, 6),
                "delta": round(self.delta, 4), "legit_share": round(self.legit_share, 4),
                "promised_fpr": self.promised_fpr,
                "estimated_fpr": round(self.estimated_fpr, 6), "n_accounts": self.n_accounts}


def benign_sketch(raw_benign: np.ndarray) -> dict[str, list[float]]:
    """Quantile sketch of legitimate raw scores, finer in the upper tail, for the config."""
    levels = np.concatenate([np.linspace(0, 0.98, 50), np.linspace(0.99, 0.999, 10), [1.0]])
    vals = np.quantile(np.asarray(raw_benign, dtype=float), levels)
    return {"levels": [round(float(v), 4) for v in levels],
            "values": [round(float(v), 4) for v in vals]}


def self_calibrate(raw: np.ndarray, prior: Calibrator, sketch: dict | None, *,
                   use: Calibrator | None = None, prior_sd: float = 0.5,
                   max_shift: float = 2.0, min_accounts: int = 200,
                   iters: int = 40) -> SelfCalibration:
    """Fit the shift of the legitimate component on ``raw`` (every account's final raw
    score). Without ``use`` the threshold moves with the shift; with ``use`` (an explicit
    calibration) that calibrator is kept and only the estimated FPR is computed for it."""
    x = np.asarray(raw, dtype=float)
    fpr = prior.target_fpr
    t0 = prior.raw_threshold_
    if not sketch or len(sketch.get("values", ())) < 5 or x.size < min_accounts:
        cal = use or prior
        return SelfCalibration(cal, 0.0, float("nan"), fpr, float("nan"), t0, int(x.size),
                               "given" if use is not None else "prior")
    levels = np.asarray(sketch["levels"], dtype=float)
    q = np.maximum.accumulate(np.asarray(sketch["values"], dtype=float))
    lo = min(q[0], x.min()) - max_shift - 1.0
    hi = max(q[-1], x.max()) + max_shift + 1.0
    grid = np.linspace(lo, hi, 2000)
    step = grid[1] - grid[0]
    cdf = np.interp(grid, q, levels, left=0.0, right=1.0)
    f_legit = np.gradient(cdf, grid)
    k = np.exp(-0.5 * (np.arange(-10, 11) / 4.0) ** 2)
    f_legit = np.convolve(f_legit, k / k.sum(), mode="same") + 1e-6
    f_legit /= np.trapezoid(f_legit, grid)

    def at(dens: np.ndarray, v: np.ndarray) -> np.ndarray:
        return dens[np.clip(((v - lo) / step).astype(int), 0, len(dens) - 1)]

    shifts = np.linspace(-max_shift, max_shift, 161)
    delta, pi = 0.0, 0.9
    f_other = np.full_like(grid, 1.0 / (hi - lo))
    for _ in range(iters):
        a = pi * at(f_legit, x - delta)
        b = (1 - pi) * at(f_other, x)
        r = a / (a + b)
        pi = float(np.clip(r.mean(), 0.5, 0.999))
        ll = np.array([(r * np.log(at(f_legit, x - d))).sum() for d in shifts])
        new = float(shifts[int(np.argmax(ll - shifts ** 2 / (2 * prior_sd ** 2)))])
        hist, _ = np.histogram(x, bins=len(grid), range=(lo, hi), weights=1 - r)
        f_other = np.convolve(hist, np.ones(31) / 31, mode="same") + 1e-3
        f_other /= np.trapezoid(f_other, grid)
        if abs(new - delta) < 1e-9:
            break
        delta = new
    cal = use or Calibrator.from_params(t0 + delta, prior.raw_scale_, fpr)
    t = cal.raw_threshold_
    est = float(1.0 - np.interp(t - delta, q, levels, left=0.0, right=1.0))
    return SelfCalibration(cal, delta, pi, fpr, est, t0, int(x.size),
                           "given" if use is not None else "self")
