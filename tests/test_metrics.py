"""Detection metrics on small, hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from distillguard.bench.metrics import (
    campaign_recovery,
    evaluate,
    fpr_by_kind,
    pr_auc,
    precision_recall_flagged,
    recall_at_fpr,
)

# --- pr_auc ----------------------------------------------------------------------------------


def test_pr_auc_hand_computed() -> None:
    # ranking: P N P N -> precision at each positive: 1/1, 2/3; AP = (1 + 2/3) / 2
    assert pr_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)


def test_pr_auc_string_labels_and_no_positive() -> None:
    assert pr_auc(["distill", "benign"], [1.0, 0.0]) == 1.0
    assert math.isnan(pr_auc(["benign", "benign"], [1.0, 0.0]))


# --- recall_at_fpr ---------------------------------------------------------------------------

NEG = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0, 0.0, 0.0]  # 10 legitimate accounts
POS = [0.95, 0.9, 0.45]  # 3 distillers
Y = [0] * len(NEG) + [1] * len(POS)
S = NEG + POS


@pytest.mark.parametrize(
    ("fpr", "recall", "threshold"),
    [
        (0.0, 1 / 3, 0.95),  # no negative may reach t: t above 0.9
        (0.1, 2 / 3, 0.9),  # one negative allowed: the tie at 0.9 is flagged on both sides
        (0.15, 2 / 3, 0.9),  # floor(1.5) = 1, same as 0.1
        (0.2, 1.0, 0.45),  # two negatives allowed (0.9, 0.5)
        (1.0, 1.0, 0.0),  # everything may be flagged
    ],
)
def test_recall_at_fpr_hand_computed(fpr: float, recall: float, threshold: float) -> None:
    r, t = recall_at_fpr(Y, S, fpr)
    assert r == pytest.approx(recall)
    assert t == pytest.approx(threshold)
    s, y = np.array(S), np.array(Y, bool)
    assert ((s >= t) & ~y).sum() <= math.floor(fpr * (~y).sum())


def test_recall_at_fpr_ties_are_conservative() -> None:
    # both negatives tie with the positive; only one negative may be flagged -> flag nothing
    r, t = recall_at_fpr([0, 0, 1], [0.5, 0.5, 0.5], 0.5)
    assert r == 0.0 and math.isinf(t)


def test_recall_at_fpr_float_guard() -> None:
    # 0.29 * 100 = 28.999999999999996 in floating point; the budget is 29 negatives
    neg = list(np.arange(100) / 100)
    r, t = recall_at_fpr([0] * 100 + [1], neg + [0.705], 0.29)
    assert (r, t) == (1.0, 0.705)


def test_recall_at_fpr_rejects_bad_budget() -> None:
    with pytest.raises(ValueError):
        recall_at_fpr([0, 1], [0.1, 0.2], 1.5)


# --- precision_recall_flagged ----------------------------------------------------------------


def test_precision_recall_flagged() -> None:
    p, r = precision_recall_flagged([1, 1, 1, 0, 0], [True, True, False, True, False])
    assert p == pytest.approx(2 / 3) and r == pytest.approx(2 / 3)
    p, r = precision_recall_flagged([1, 0], [False, False])
    assert math.isnan(p) and r == 0.0


# --- campaign_recovery -----------------------------------------------------------------------


def _toy_campaigns() -> tuple[list, list, list]:
    true = ["c1"] * 4 + ["c2"] * 2 + ["c3"] * 2 + [None, ""]
    pred = ["P", "P", "P", None, "Q", "R", "S", "S", "S", None]
    flagged = [True, True, True, False, True, True, True, True, False, False]
    return true, pred, flagged


def test_campaign_recovery_per_campaign() -> None:
    res = campaign_recovery(*_toy_campaigns())
    rows = {r["campaign_id"]: r for r in res.per_campaign.to_dicts()}
    assert list(rows) == ["c1", "c2", "c3"]
    c1, c2, c3 = rows["c1"], rows["c2"], rows["c3"]
    # c1: 3 of 4 flagged, 3 of 4 under P, P holds only c1 -> recovered as one
    assert (c1["n_accounts"], c1["n_flagged"]) == (4, 3)
    assert c1["flagged_share"] == 0.75 and c1["purity"] == 0.75 and c1["top_pred"] == "P"
    assert c1["recovered_as_one"] is True
    # one true cluster vs {P, unassigned singleton}: ARI 0
    assert c1["ari"] == pytest.approx(0.0)
    # c2 split over Q and R: half under the best id
    assert c2["purity"] == 0.5 and c2["recovered_as_one"] is False
    # c3 is pure, but S also holds a legitimate account: 1/3 foreign > 10%
    assert c3["purity"] == 1.0 and c3["recovered_as_one"] is False


def test_campaign_recovery_overall_ari_hand_computed() -> None:
    # contingency over the 8 distill accounts (unassigned = singleton u):
    # c1: P=3 u=1; c2: Q=1 R=1; c3: S=2.  sum C(n_ij,2) = 3 + 1 = 4
    # rows: C(4,2)+C(2,2)+C(2,2) = 8; cols: C(3,2)+C(2,2) = 4; C(8,2) = 28
    # ARI = (4 - 8*4/28) / ((8+4)/2 - 8*4/28) = 10/17
    res = campaign_recovery(*_toy_campaigns())
    assert res.ari == pytest.approx(10 / 17)


def test_campaign_recovery_boundaries() -> None:
    # 9 of 10 flagged accounts under one id is exactly the 0.9 share -> recovered
    true = ["c"] * 10
    pred = ["P"] * 9 + ["Q"]
    res = campaign_recovery(true, pred, [True] * 10)
    assert res.per_campaign["recovered_as_one"][0] is True
    # nothing flagged -> not recovered, even if perfectly grouped
    res = campaign_recovery(["c", "c"], ["P", "P"], [False, False])
    assert res.per_campaign["recovered_as_one"][0] is False
    assert res.ari == 1.0
    # nothing assigned: purity 0, everything a singleton
    res = campaign_recovery(["c", "c"], [None, None], [True, True])
    assert res.per_campaign["purity"][0] == 0.0 and res.ari == 0.0


def test_campaign_recovery_no_campaigns() -> None:
    res = campaign_recovery([None, None], ["P", None], [True, False])
    assert res.per_campaign.height == 0 and math.isnan(res.ari)


# --- fpr_by_kind -----------------------------------------------------------------------------


def test_fpr_by_kind() -> None:
    kind = ["casual", "casual", "eval", "eval", "eval", "x"]
    label = ["benign"] * 5 + ["distill"]
    flagged = [False, True, True, True, False, True]
    out = fpr_by_kind(kind, label, flagged)
    assert out["kind"].to_list() == ["casual", "eval"]  # distill kinds are not negatives
    assert out["n"].to_list() == [2, 3]
    assert out["n_flagged"].to_list() == [1, 2]
    assert out["fpr"].to_list() == pytest.approx([0.5, 2 / 3])


# --- evaluate --------------------------------------------------------------------------------


def test_evaluate_end_to_end() -> None:
    labels = pl.DataFrame({
        "account_id": ["d1", "d2", "d3", "b1", "b2", "b3", "b4"],
        "label": ["distill"] * 3 + ["benign"] * 4,
        "campaign_id": ["c1", "c1", "c2", "", "", "", None],
        "kind": ["distill", "distill", "distill", "casual", "casual", "eval", "eval"],
    })
    accounts = pl.DataFrame({  # d3 missing -> score 0, not flagged; zz is unlabelled
        "account_id": ["d1", "d2", "b1", "b2", "b3", "b4", "zz"],
        "score": [0.9, 0.8, 0.1, 0.2, 0.85, None, 1.0],
        "flagged": [True, True, False, False, True, None, True],
        "campaign_id": ["K", "K", None, None, None, None, "K"],
    })
    out = evaluate(labels, accounts)
    assert (out["n_accounts"], out["n_distill"], out["n_benign"]) == (7, 3, 4)
    assert out["n_unlabelled"] == 1
    # ranking d1 .9, b3 .85, d2 .8, b2 .2, b1 .1, d3 0, b4 0 -> AP = (1 + 2/3 + 3/7) / 3
    assert out["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 7) / 3)
    # no legitimate account may be flagged: t must exceed b3 (0.85) -> t = 0.9, only d1
    assert out["recall_at_fpr"]["0.001"] == {"recall": pytest.approx(1 / 3), "threshold": 0.9}
    assert out["recall_at_fpr"]["0.01"]["threshold"] == 0.9
    assert out["flagged"]["precision"] == pytest.approx(2 / 3)
    assert out["flagged"]["recall"] == pytest.approx(2 / 3)
    assert out["flagged"]["fpr"] == 0.25
    kinds = {r["kind"]: r["fpr"] for r in out["fpr_by_kind"]}
    assert kinds == {"casual": 0.0, "eval": 0.5}
    camps = {c["campaign_id"]: c for c in out["campaigns"]}
    assert camps["c1"]["recovered_as_one"] is True and camps["c2"]["recovered_as_one"] is False
    assert out["n_campaigns"] == 2 and out["n_campaigns_recovered"] == 1
    json.dumps(out, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_evaluate_without_campaign_column_and_missing_columns() -> None:
    labels = pl.DataFrame({"account_id": ["a", "b"], "label": ["distill", "benign"],
                           "campaign_id": ["c", None], "kind": ["x", "y"]})
    out = evaluate(labels, pl.DataFrame({"account_id": ["a"], "score": [1.0],
                                         "flagged": [True]}))
    assert out["flagged"]["recall"] == 1.0 and out["campaigns"][0]["purity"] == 0.0
    with pytest.raises(ValueError, match="score"):
        evaluate(labels, pl.DataFrame({"account_id": ["a"], "flagged": [True]}))
