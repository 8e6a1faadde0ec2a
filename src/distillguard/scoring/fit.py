"""Fit the evidence weights on labelled traffic (the tune worlds of the benchmark).

The evidence items of ``scoring.evidence`` stay as written: each is a readable expression
with a ramp and a reason. What is fitted is only each item's weight, by a logistic
regression on the items' ramps with

* the sign of every weight fixed to the sign in the config (a suspicious item can only add
  suspicion, a legitimate shape can only remove it), items with ``fit: false`` fixed;
* an L2 pull towards the config's weights (the prior), so an item the tune data hardly
  exercises keeps its written weight instead of drifting;
* sample weights that give every legitimate *kind* and every campaign of a world a total
  weight growing with the square root of its size, legitimate traffic ``negative_weight``
  times the campaigns': a score must hold against the rare hard negatives (three
  evaluation harnesses) as much as against a thousand ordinary users.

The intercept is fitted but not used: the flag threshold comes from the calibration on the
legitimate accounts afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl
from scipy.optimize import minimize

from distillguard.config import Config
from distillguard.scoring.calibrate import Calibrator
from distillguard.scoring.evidence import evidence_frame, scoring_input_sql

__all__ = ["FittedWeights", "design_frame", "fit_detector", "fit_weights", "online_margin_for",
           "overlay", "raw_scores", "with_overlay"]


def design_frame(con: duckdb.DuckDBPyConnection, cfg: Config) -> pl.DataFrame:
    """account_id and one ``ev_<item>`` column per evidence item at weight 1 (the damped
    ramp), from a store the pipeline has run on up to linking."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _score_in AS {scoring_input_sql(cfg)}")
    unit = {it["name"]: 1.0 for it in cfg["scoring"]["evidence"]}
    return evidence_frame(con, cfg, "_score_in", weights=unit).drop("raw", "final_raw")


@dataclass(frozen=True)
class FittedWeights:
    """Result of :func:`fit_weights`."""

    weights: dict[str, float]
    intercept: float
    n_accounts: int
    n_positive: int
    loss: float


def sample_weights(labels: pl.DataFrame, negative_weight: float) -> np.ndarray:
    """Per account: each legitimate kind and each campaign of a world weighs sqrt(size) in
    total; legitimate weight is scaled to ``negative_weight`` times the campaigns' total."""
    grp = pl.when(pl.col("label") == "distill").then(pl.col("campaign_id")).otherwise(
        pl.col("kind"))
    df = labels.with_columns((pl.col("world") + "/" + grp).alias("_g"))
    n = df.group_by("_g").len()
    df = df.join(n, on="_g")
    w = (df["len"].cast(pl.Float64).sqrt() / df["len"]).to_numpy().copy()
    pos = (df["label"] == "distill").to_numpy()
    if pos.any() and (~pos).any():
        w[~pos] *= negative_weight * w[pos].sum() / w[~pos].sum()
    return w / w.mean()


def fit_weights(designs: Sequence[pl.DataFrame], labels: Sequence[pl.DataFrame], cfg: Config,
                *, l2: float = 0.03, negative_weight: float = 3.0,
                max_ratio: float = 2.0) -> FittedWeights:
    """Fit the evidence weights on several labelled worlds.

    ``designs[i]`` is :func:`design_frame` of world i and ``labels[i]`` its labels
    (account_id, label, campaign_id, kind). A weight stays between 0 and ``max_ratio``
    times its written value: the simulator that made the tune worlds may over-reward an
    item (a campaign trait it happens to plant everywhere); the cap bounds how much.
    """
    items = cfg["scoring"]["evidence"]
    names = [it["name"] for it in items]
    prior = np.array([float(it["weight"]) for it in items])
    free = np.array([it.get("fit", True) is not False for it in items])
    frames = []
    for i, (d, lab) in enumerate(zip(designs, labels, strict=True)):
        frames.append(d.join(lab.select("account_id", "label", "campaign_id", "kind"),
                             on="account_id").with_columns(pl.lit(str(i)).alias("world")))
    df = pl.concat(frames, how="vertical_relaxed")
    x = df.select([f"ev_{n}" for n in names]).to_numpy().astype(float)
    y = (df["label"] == "distill").to_numpy().astype(float)
    sw = sample_weights(df.select("world", "label", "campaign_id", "kind"), negative_weight)
    fixed_part = x[:, ~free] @ prior[~free]
    xf = x[:, free]
    p0 = prior[free]
    bounds = [(0.0, max_ratio * w) if w >= 0 else (max_ratio * w, 0.0) for w in p0]
    bounds.append((None, None))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = xf @ w + fixed_part + b
        # log(1 + exp(-s z)) with s = +1 / -1, computed stably
        s = 2 * y - 1
        m = -s * z
        ll = np.logaddexp(0.0, m)
        sig = 0.5 * (1 + np.tanh(0.5 * m))     # d/dm log(1+e^m), stable
        g = -(sw * sig * s)
        f = float((sw * ll).sum() / sw.sum() + l2 * ((w - p0) ** 2).sum() / len(w))
        gw = xf.T @ g / sw.sum() + 2 * l2 * (w - p0) / len(w)
        gb = g.sum() / sw.sum()
        return f, np.concatenate([gw, [gb]])

    res = minimize(loss, np.concatenate([p0, [0.0]]), jac=True, method="L-BFGS-B",
                   bounds=bounds, options={"maxiter": 2000})
    w = prior.copy()
    w[free] = res.x[:-1]
    return FittedWeights({n: round(float(v), 4) for n, v in zip(names, w, strict=True)},
                         float(res.x[-1]), int(len(y)), int(y.sum()), float(res.fun))


def raw_scores(design: pl.DataFrame, weights: dict[str, float]) -> pl.DataFrame:
    """account_id and final_raw (every item, group items included) at ``weights``."""
    names = [c[3:] for c in design.columns if c.startswith("ev_")]
    x = design.select([f"ev_{n}" for n in names]).to_numpy().astype(float)
    w = np.array([weights[n] for n in names])
    return design.select("account_id").with_columns(pl.Series("final_raw", x @ w))


def fit_detector(designs: Sequence[pl.DataFrame], labels: Sequence[pl.DataFrame], cfg: Config,
                 **kw: float) -> tuple[FittedWeights, Calibrator]:
    """Weights (:func:`fit_weights`), then the calibration at those weights on the
    legitimate accounts of the same worlds (``scoring.target_fpr``)."""
    fw = fit_weights(designs, labels, cfg, **kw)
    benign = [raw_scores(d, fw.weights).join(
        lab.filter(pl.col("label") != "distill").select("account_id"), on="account_id")
        ["final_raw"].to_numpy() for d, lab in zip(designs, labels, strict=True)]
    cal = Calibrator(float(cfg["scoring"]["target_fpr"])).fit(np.concatenate(benign))
    return fw, cal


def overlay(fw: FittedWeights, cal: Calibrator, fitted_on: str) -> dict:
    """The config overlay ``distillguard fit`` writes: fitted weights and calibration."""
    from distillguard.scoring.selfcal import benign_sketch

    return {"scoring": {
        "weights": dict(fw.weights),
        "calibration": {**cal.params(), "n_benign": cal.n_benign_, "fitted_on": fitted_on,
                        "benign_sketch": benign_sketch(cal.benign_sorted_)}}}


def online_margin_for(peak_excess: Sequence[float] | np.ndarray, target_fpr: float) -> float:
    """The smallest online margin at which at most ``target_fpr`` of legitimate accounts
    ever reach the flag threshold during a replay.

    ``peak_excess`` holds, per legitimate account, the largest raw evidence over the flag
    threshold in use at the time that the online scorer saw at any request of a replay
    without margin (``peak_excess`` in the replay's ``online_accounts.csv``). An account
    alerts online iff its peak excess reaches the margin, so the margin is the
    ``floor(target_fpr * n)``-th largest excess, just above it; never below 0.

    >>> online_margin_for([-2.0, -1.0, 0.3, 0.8], 0.25)
    0.31
    """
    ex = np.sort(np.asarray(peak_excess, dtype=float))[::-1]
    ex = ex[np.isfinite(ex)]
    if not ex.size:
        return 0.0
    k = int(np.floor(target_fpr * ex.size))
    if k >= ex.size:
        return 0.0
    # strictly above the k-th largest: accounts tied with it stay quiet (ceil to 0.01)
    return max(0.0, float(np.ceil(ex[k] * 100.0 + 1e-9) / 100.0))


def with_overlay(cfg: Config, over: dict) -> Config:
    """``cfg`` with an overlay merged on top (as a config file given to ``--config``)."""
    from distillguard.config import _merge

    return Config(_merge(cfg.raw, over))
