"""Account-level and campaign-level detection metrics for the benchmark.

Distillation detection is judged at two levels:

* **accounts** — is each harvesting account flagged, at what cost in legitimate accounts?
  Operators act on accounts and can afford very few false positives, so beside PR-AUC we report
  recall at a fixed, small false-positive rate (``recall_at_fpr``) and the false-positive rate
  per *kind* of legitimate account (hard negatives such as eval harnesses look like
  distillation on purpose; one aggregate FPR would hide that they are all flagged).
* **campaigns** — distillation runs as coordinated campaigns over many accounts; a report is
  useful when a campaign comes back as one coherent group (``campaign_recovery``).

All functions are pure: numpy arrays / polars frames in, numbers or frames out. Labels may be
given as strings (``"distill"`` is positive, anything else negative) or booleans/0-1 ints.
Undefined ratios (e.g. precision with nothing flagged) are ``nan``, never a silent 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from sklearn.metrics import adjusted_rand_score, average_precision_score

__all__ = [
    "pr_auc",
    "recall_at_fpr",
    "precision_recall_flagged",
    "campaign_recovery",
    "CampaignRecovery",
    "fpr_by_kind",
    "evaluate",
]

#: Positive label value in ``labels.csv``.
POSITIVE = "distill"

#: Default false-positive budgets reported by ``evaluate`` (0.1% and 1% of legitimate accounts).
DEFAULT_FPRS: tuple[float, ...] = (0.001, 0.01)


def _as_bool(y: Any) -> np.ndarray:
    """Coerce labels to a boolean positive mask (``"distill"``/True/1 are positive)."""
    arr = np.asarray(y)
    if arr.dtype.kind in ("U", "S", "O"):
        return np.array([str(v) == POSITIVE or v is True for v in arr.tolist()], dtype=bool)
    return arr.astype(bool)


def _as_ids(x: Any) -> np.ndarray:
    """Coerce campaign ids to an object array where None/NaN/"" all mean 'no campaign'."""
    out = []
    for v in np.asarray(x, dtype=object).tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "":
            out.append(None)
        else:
            out.append(str(v))
    return np.array(out, dtype=object)


def pr_auc(y_true: Any, scores: Any) -> float:
    """Area under the precision–recall curve (average precision).

    PR-AUC, not ROC-AUC: distillers are a small minority of accounts, and ROC-AUC is dominated
    by the easy bulk of legitimate accounts.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels (``"distill"``/True/1 positive).
    scores : array-like of shape (n,)
        Higher = more suspicious.

    Returns
    -------
    float
        ``sklearn.metrics.average_precision_score``; ``nan`` when there is no positive.

    Examples
    --------
    >>> pr_auc([0, 1, 1], [0.1, 0.9, 0.8])
    1.0
    """
    y = _as_bool(y_true)
    if not y.any():
        return float("nan")
    return float(average_precision_score(y, np.asarray(scores, dtype=float)))


def recall_at_fpr(y_true: Any, scores: Any, fpr: float) -> tuple[float, float]:
    """Best recall whose false-positive rate on negatives stays within ``fpr``.

    An account is flagged when ``score >= t``, so tied scores at the threshold are all flagged
    (conservative: a detector cannot earn recall by breaking ties in its favour). The chosen
    ``t`` is the smallest score such that the number of negatives with ``score >= t`` is at
    most ``floor(fpr * n_neg)`` (with a 1e-9 guard against float error in the product).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels (``"distill"``/True/1 positive).
    scores : array-like of shape (n,)
        Higher = more suspicious.
    fpr : float
        False-positive budget in [0, 1], e.g. 0.001 for 0.1% of legitimate accounts.

    Returns
    -------
    recall : float
        Share of positives with ``score >= t``; ``nan`` when there is no positive.
    threshold : float
        ``t``; ``inf`` when even the top score would exceed the budget (nothing flagged).

    Examples
    --------
    >>> recall_at_fpr([1, 1, 0, 0], [0.9, 0.5, 0.7, 0.1], fpr=0.5)
    (1.0, 0.5)
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    y = _as_bool(y_true)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError("y_true and scores must have the same length")
    n_pos = int(y.sum())
    neg_desc = np.sort(s[~y])[::-1]
    allowed = int(math.floor(fpr * neg_desc.size + 1e-9))
    if allowed >= neg_desc.size:
        threshold = float(s.min()) if s.size else float("inf")
    else:
        above = s[s > neg_desc[allowed]]  # t must exceed the (allowed+1)-th largest negative
        threshold = float(above.min()) if above.size else float("inf")
    recall = float((s[y] >= threshold).sum() / n_pos) if n_pos else float("nan")
    return recall, threshold


def precision_recall_flagged(y_true: Any, flagged: Any) -> tuple[float, float]:
    """Precision and recall of a hard flagged/not-flagged decision.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels (``"distill"``/True/1 positive).
    flagged : array-like of bool, shape (n,)
        The detector's decision.

    Returns
    -------
    precision : float
        ``tp / n_flagged``; ``nan`` when nothing is flagged.
    recall : float
        ``tp / n_positive``; ``nan`` when there is no positive.

    Examples
    --------
    >>> precision_recall_flagged([1, 1, 0, 0], [True, False, True, False])
    (0.5, 0.5)
    """
    y = _as_bool(y_true)
    f = np.asarray(flagged, dtype=bool)
    tp = int((y & f).sum())
    precision = tp / int(f.sum()) if f.any() else float("nan")
    recall = tp / int(y.sum()) if y.any() else float("nan")
    return float(precision), float(recall)


class CampaignRecovery(NamedTuple):
    """Result of ``campaign_recovery``.

    Attributes
    ----------
    per_campaign : polars.DataFrame
        One row per true campaign, see ``campaign_recovery``.
    ari : float
        Adjusted Rand index of predicted vs true campaigns over all distill accounts.
    """

    per_campaign: pl.DataFrame
    ari: float


def _singletonise(pred: np.ndarray, prefix: str = "\x00unassigned-") -> np.ndarray:
    """Give every unassigned account its own cluster id.

    Treating all unassigned accounts as *one* cluster would reward a detector that assigns
    nothing (they would all "agree"); as singletons they count as split apart.
    """
    return np.array(
        [p if p is not None else f"{prefix}{i}" for i, p in enumerate(pred.tolist())],
        dtype=object,
    )


def campaign_recovery(
    true_campaign: Sequence[Any] | np.ndarray,
    pred_campaign: Sequence[Any] | np.ndarray,
    flagged: Sequence[bool] | np.ndarray,
    *,
    min_share: float = 0.9,
    max_foreign: float = 0.1,
) -> CampaignRecovery:
    """How well each true distillation campaign is recovered as one predicted campaign.

    Parameters
    ----------
    true_campaign : array-like of shape (n,)
        True campaign id per account; None/""/NaN for legitimate accounts.
    pred_campaign : array-like of shape (n,)
        Predicted campaign id per account; None/""/NaN = unassigned. Taken as given (the
        scores contract already sets it to NULL for accounts outside any campaign).
    flagged : array-like of bool, shape (n,)
        Whether each account is flagged.
    min_share : float, default 0.9
        See ``recovered_as_one``.
    max_foreign : float, default 0.1
        See ``recovered_as_one``.

    Returns
    -------
    CampaignRecovery
        ``per_campaign`` has one row per true campaign, sorted by id, with columns

        - ``campaign_id`` (str), ``n_accounts``, ``n_flagged`` (int);
        - ``flagged_share``: ``n_flagged / n_accounts``;
        - ``purity``: largest share of the campaign's accounts carrying one predicted id
          (unassigned accounts never form a group, so a campaign left unassigned has 0);
        - ``top_pred``: that predicted id (None if none);
        - ``ari``: adjusted Rand index computed over the campaign's accounts *plus* every
          account sharing a predicted id with one of them (true label = campaign id or
          "benign"; unassigned = singleton). Restricted to the campaign's own accounts the
          ARI would be degenerate (one true cluster gives 1.0 or 0.0 only), so the
          neighbourhood is included to penalise both splitting and merging with others;
        - ``recovered_as_one`` (bool): at least ``min_share`` of the campaign's *flagged*
          accounts carry one predicted id, and at most ``max_foreign`` of the accounts under
          that id belong to another campaign or are legitimate. False when nothing is
          flagged. It does not require many accounts to be flagged (see ``flagged_share``).

        ``ari`` is the adjusted Rand index over all accounts with a true campaign
        (unassigned predictions as singletons); ``nan`` when there are none.

    Examples
    --------
    >>> res = campaign_recovery(["a", "a", None], ["p", "p", None], [True, True, False])
    >>> res.per_campaign["recovered_as_one"].to_list(), res.ari
    ([True], 1.0)
    """
    true = _as_ids(true_campaign)
    pred = _as_ids(pred_campaign)
    flg = np.asarray(flagged, dtype=bool)
    if not (true.shape == pred.shape == flg.shape):
        raise ValueError("true_campaign, pred_campaign and flagged must have the same length")
    pred_single = _singletonise(pred)
    true_or_benign = np.array([t if t is not None else "\x00benign" for t in true], dtype=object)

    rows: list[dict[str, Any]] = []
    for cid in sorted({t for t in true.tolist() if t is not None}):
        members = true == cid
        n = int(members.sum())
        n_flag = int((members & flg).sum())
        member_pred = [p for p in pred[members].tolist() if p is not None]
        top_pred, purity = None, 0.0
        if member_pred:
            vals, counts = np.unique(np.array(member_pred, dtype=str), return_counts=True)
            top_pred, purity = str(vals[counts.argmax()]), float(counts.max() / n)
        # neighbourhood ARI: the campaign plus everyone sharing a predicted id with it
        member_ids = set(member_pred)
        hood = members | np.array([p in member_ids for p in pred.tolist()], dtype=bool)
        ari = float(adjusted_rand_score(true_or_benign[hood], pred_single[hood]))
        recovered = False
        flag_pred = [p for p in pred[members & flg].tolist() if p is not None]
        if n_flag and flag_pred:
            vals, counts = np.unique(np.array(flag_pred, dtype=str), return_counts=True)
            best = str(vals[counts.argmax()])
            share = counts.max() / n_flag
            under_best = pred == best
            foreign = float((under_best & ~members).sum() / under_best.sum())
            recovered = bool(share >= min_share and foreign <= max_foreign)
        rows.append({
            "campaign_id": cid, "n_accounts": n, "n_flagged": n_flag,
            "flagged_share": n_flag / n, "purity": purity, "top_pred": top_pred,
            "ari": ari, "recovered_as_one": recovered,
        })
    schema = {
        "campaign_id": pl.Utf8, "n_accounts": pl.Int64, "n_flagged": pl.Int64,
        "flagged_share": pl.Float64, "purity": pl.Float64, "top_pred": pl.Utf8,
        "ari": pl.Float64, "recovered_as_one": pl.Boolean,
    }
    per_campaign = pl.DataFrame(rows, schema=schema)
    distill = np.array([t is not None for t in true], dtype=bool)
    overall = (
        float(adjusted_rand_score(true[distill].astype(str), pred_single[distill].astype(str)))
        if distill.any() else float("nan")
    )
    return CampaignRecovery(per_campaign, overall)


def fpr_by_kind(kind: Any, label: Any, flagged: Any) -> pl.DataFrame:
    """False-positive rate per kind of legitimate account.

    Parameters
    ----------
    kind : array-like of str, shape (n,)
        Population kind per account (e.g. ``"casual"``, ``"eval_harness"``).
    label : array-like of shape (n,)
        Labels (``"distill"``/True/1 positive); only negatives are counted.
    flagged : array-like of bool, shape (n,)
        Whether each account is flagged.

    Returns
    -------
    polars.DataFrame
        Columns ``kind`` (str), ``n`` (legitimate accounts of that kind), ``n_flagged``,
        ``fpr`` (= ``n_flagged / n``); one row per kind seen among negatives, sorted by kind.

    Examples
    --------
    >>> fpr_by_kind(["a", "a", "b"], ["benign"] * 3, [True, False, False])["fpr"].to_list()
    [0.5, 0.0]
    """
    neg = ~_as_bool(label)
    k = np.array([str(v) if v is not None else "" for v in np.asarray(kind, dtype=object)])
    f = np.asarray(flagged, dtype=bool)
    frame = pl.DataFrame({"kind": k[neg].tolist(), "flagged": f[neg].tolist()},
                         schema={"kind": pl.Utf8, "flagged": pl.Boolean})
    return (
        frame.group_by("kind")
        .agg(pl.len().cast(pl.Int64).alias("n"),
             pl.col("flagged").sum().cast(pl.Int64).alias("n_flagged"))
        .with_columns((pl.col("n_flagged") / pl.col("n")).alias("fpr"))
        .sort("kind")
    )


def _nan_to_none(x: float) -> float | None:
    """JSON has no NaN; report undefined values as null."""
    return None if isinstance(x, float) and math.isnan(x) else x


def evaluate(
    labels: pl.DataFrame,
    accounts: pl.DataFrame,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> dict[str, Any]:
    """All metrics for one detector run, as a JSON-ready dict.

    Parameters
    ----------
    labels : polars.DataFrame
        Ground truth with columns ``account_id``, ``label`` (``benign``/``distill``),
        ``campaign_id`` (empty/null for benign), ``kind``.
    accounts : polars.DataFrame
        Detector output with ``account_id``, ``score`` and ``flagged``; ``campaign_id`` is
        optional. Labelled accounts missing here count as score 0 / not flagged / no
        campaign (a detector is judged on every account, not only those it chose to emit);
        rows for unlabelled accounts are ignored and counted in ``n_unlabelled``.
    fprs : sequence of float, default (0.001, 0.01)
        False-positive budgets for ``recall_at_fpr``.

    Returns
    -------
    dict
        ``n_accounts``, ``n_distill``, ``n_benign``, ``n_unlabelled``, ``pr_auc``,
        ``recall_at_fpr`` (``{str(fpr): {"recall", "threshold"}}``), ``flagged`` (``precision``,
        ``recall``, ``fpr``, ``n_flagged``, ``tp``, ``fp``), ``fpr_by_kind`` (list of dicts),
        ``campaigns`` (list of dicts, see ``campaign_recovery``), ``campaign_ari``,
        ``n_campaigns``, ``n_campaigns_recovered``. Undefined values are ``None``.
    """
    missing = {"account_id", "label", "campaign_id", "kind"} - set(labels.columns)
    if missing:
        raise ValueError(f"labels lacks columns {sorted(missing)}")
    missing = {"account_id", "score", "flagged"} - set(accounts.columns)
    if missing:
        raise ValueError(f"accounts lacks columns {sorted(missing)}")
    acc = accounts.select(
        pl.col("account_id").cast(pl.Utf8),
        pl.col("score").cast(pl.Float64),
        pl.col("flagged").cast(pl.Boolean),
        (pl.col("campaign_id").cast(pl.Utf8) if "campaign_id" in accounts.columns
         else pl.lit(None, dtype=pl.Utf8)).alias("pred_campaign"),
    ).unique("account_id", keep="first")
    lab = labels.select(
        pl.col("account_id").cast(pl.Utf8), pl.col("label").cast(pl.Utf8),
        pl.col("campaign_id").cast(pl.Utf8), pl.col("kind").cast(pl.Utf8),
    )
    n_unlabelled = acc.join(lab, on="account_id", how="anti").height
    df = lab.join(acc, on="account_id", how="left").with_columns(
        pl.col("score").fill_null(0.0).fill_nan(0.0),
        pl.col("flagged").fill_null(False),
    )
    y = (df["label"] == POSITIVE).to_numpy()
    scores = df["score"].to_numpy()
    flagged = df["flagged"].to_numpy()
    n_neg = int((~y).sum())

    at_fpr = {}
    for f in fprs:
        rec, thr = recall_at_fpr(y, scores, f)
        at_fpr[str(f)] = {"recall": _nan_to_none(rec),
                          "threshold": None if math.isinf(thr) else thr}
    precision, recall = precision_recall_flagged(y, flagged)
    fp = int((flagged & ~y).sum())
    rec = campaign_recovery(df["campaign_id"].to_numpy(), df["pred_campaign"].to_numpy(),
                            flagged)
    campaigns = [{k: _nan_to_none(v) for k, v in row.items()}
                 for row in rec.per_campaign.to_dicts()]
    return {
        "n_accounts": df.height,
        "n_distill": int(y.sum()),
        "n_benign": n_neg,
        "n_unlabelled": n_unlabelled,
        "pr_auc": _nan_to_none(pr_auc(y, scores)),
        "recall_at_fpr": at_fpr,
        "flagged": {
            "precision": _nan_to_none(precision),
            "recall": _nan_to_none(recall),
            "fpr": fp / n_neg if n_neg else None,
            "n_flagged": int(flagged.sum()),
            "tp": int((flagged & y).sum()),
            "fp": fp,
        },
        "fpr_by_kind": fpr_by_kind(df["kind"].to_numpy(), y, flagged).to_dicts(),
        "campaigns": campaigns,
        "campaign_ari": _nan_to_none(rec.ari),
        "n_campaigns": rec.per_campaign.height,
        "n_campaigns_recovered": int(rec.per_campaign["recovered_as_one"].sum()),
    }
