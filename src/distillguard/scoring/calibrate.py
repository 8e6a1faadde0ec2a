"""Calibration of raw evidence scores against benign behaviour (PyOD-style threshold).

The raw score is a weighted sum of evidence with no natural scale. Fitting on accounts known
or assumed benign sets ``raw_threshold_`` at their (1 - target_fpr) quantile, so that flagging
``score >= 0.5`` flags about ``target_fpr`` of benign accounts; ``raw_scale_`` spreads the
logistic so a benign-typical account sits near 0 and clear campaigns near 1.
"""

from __future__ import annotations

import numpy as np

from distillguard.errors import NotFittedError


class Calibrator:
    """Map raw scores to [0, 1] so that 0.5 is the benign (1 - target_fpr) quantile.

    Parameters
    ----------
    target_fpr : float, default 0.001
        False-positive budget on benign accounts.
    """

    def __init__(self, target_fpr: float = 0.001) -> None:
        self.target_fpr = target_fpr

    def fit(self, raw_benign: np.ndarray) -> Calibrator:
        raw = np.asarray(raw_benign, dtype=float)
        if raw.size == 0:
            raise ValueError("cannot calibrate on zero benign accounts")
        if not 0 < self.target_fpr < 1:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        # 'higher' picks an observed score, so with few accounts the cut is not interpolated
        # below a benign account that would then be flagged.
        t = float(np.quantile(raw, 1 - self.target_fpr, method="higher"))
        med = float(np.median(raw))
        self.raw_threshold_ = t + 1e-9
        self.raw_scale_ = max((t - med) / 4.0, 0.1)
        self.n_benign_ = int(raw.size)
        self.benign_sorted_ = np.sort(raw)
        return self

    @classmethod
    def from_params(cls, raw_threshold: float, raw_scale: float,
                    target_fpr: float = 0.001) -> Calibrator:
        c = cls(target_fpr)
        c.raw_threshold_, c.raw_scale_ = float(raw_threshold), float(raw_scale)
        c.n_benign_, c.benign_sorted_ = 0, None
        return c

    def _check(self) -> None:
        if not hasattr(self, "raw_threshold_"):
            raise NotFittedError("Calibrator is not fitted yet; call fit() or from_params()")

    def transform(self, raw: np.ndarray) -> np.ndarray:
        self._check()
        z = (np.asarray(raw, dtype=float) - self.raw_threshold_) / self.raw_scale_
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def params(self) -> dict[str, float]:
        self._check()
        return {"raw_threshold": round(self.raw_threshold_, 6),
                "raw_scale": round(self.raw_scale_, 6)}
