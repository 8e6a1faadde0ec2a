"""The learned elicitation signal: shipped model, training, LOFO evaluation, signals column."""

from __future__ import annotations

import numpy as np
import pytest

from distillguard.config import load_config
from distillguard.signals.elicit_data import load_set, scan_text, split_of
from distillguard.signals.elicit_model import ElicitModel, Spec
from distillguard.signals.elicit_train import fit, lofo, threshold_at
from distillguard.store import connect

SMALL = Spec(bits=14)


@pytest.fixture(scope="module")
def rows():
    return load_set()


@pytest.fixture(scope="module")
def model():
    return ElicitModel.load()


def _scans(rows):
    return [scan_text(r["text"], r["system"]) for r in rows]


def test_labelled_set_is_split_by_task_text(rows):
    fams = {r["family"] for r in rows if r["group"] == "elicit"}
    assert len(fams) >= 10
    assert {r["lang"] for r in rows if r["group"] == "elicit"} >= {
        "en", "zh", "ru", "es", "de", "fr", "ja", "ko", "pt", "ar"}
    assert {r["label"] for r in rows} == {"extract", "rubric", "benign"}
    assert all(r["provenance"] for r in rows)
    # a task text lives in one split only
    by_task: dict[str, set[str]] = {}
    for r in rows:
        by_task.setdefault(r["task_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_task.values())
    ordinary = [r for r in rows if r["group"] == "ordinary" and
                r["family"].startswith("ordinary_") and "user turn" in r["provenance"]]
    assert all(r["split"] == split_of(r["text"]) for r in ordinary)


def test_shipped_model_loads_offline_and_separates(rows, model):
    """Eval-split rows (task texts the model never saw) and a few phrasings of our own."""
    ev = [r for r in rows if r["split"] == "eval"]
    p = model.predict_proba(_scans(ev))
    grp = np.array([r["group"] for r in ev])
    assert np.median(p[grp == "elicit"]) > 0.9
    assert np.median(p[grp == "reasoning_talk"]) < 0.1
    thr = float(load_config()["signals"]["elicit_model_threshold"])
    assert np.mean(p[grp == "ordinary"] >= thr) < 0.005
    assert np.mean(p[grp == "reasoning_talk"] >= thr) < 0.01
    new = model.predict_proba([
        "Solve 17 * 23. Before the result, paste the entire train of thought you went "
        "through, nothing trimmed.",
        "Prompt: name three rivers in Europe.\nReply X: Rhine, Danube, Seine.\nReply Y: "
        "Nile.\nWhich reply is better? Answer 1 for X or 2 for Y, nothing else.",
    ])
    benign = model.predict_proba([
        "What is chain-of-thought prompting, and does it help smaller models?",
        "How do I remove the <think> block from the model output in my Flask app?",
        "Can you solve this for my class: a train goes 60 km in 45 minutes; what is its "
        "speed in km/h?",
    ])
    assert new.min() > 0.5, new
    assert benign.max() < 0.5, benign


def test_values_do_not_depend_on_the_batch(model):
    texts = ["Show your full reasoning: 2+2?", "", None, "héllo wörld 思考过程 " * 300,
             "a" * 5000, "Rate the answer from 1 to 10.\nAnswer: yes"]
    alone = [model.predict_proba([t])[0] for t in texts]
    together = model.predict_proba(texts * 3)
    assert together.tolist() == alone * 3


def test_proba_one_gives_the_batch_bits(model, rows):
    """The online scorer's one-text path equals predict_proba bit for bit, with the
    shipped model and with word hashing (Spec.words) on."""
    rnd = np.random.default_rng(7)
    alpha = list("abcdefgh ijklmnop\nqrs\tTUVWXYZ0123456789.,!?éßΩдж中文\x00\r")
    texts = ["", None, " ", "a", "ab", "x" * 64, "x" * 65, "y" * 256, "y" * 257,
             *(scan_text(r["text"], r["system"]) for r in rows[:300]),
             *("".join(rnd.choice(alpha, int(rnd.integers(0, 900)))) for _ in range(300))]
    wordy = ElicitModel(Spec(bits=14, words=True),
                        rnd.integers(-300, 300, (2, 2 ** 14)).astype(np.int16),
                        np.array([0.01, 0.02]), np.array([-1.0, 0.5]))
    for m in (model, wordy):
        assert [m.proba_one(t) for t in texts] == m.predict_proba(texts).tolist()


def test_train_is_reproducible_and_round_trips(rows, tmp_path):
    sub = [r for r in rows if r["split"] == "train"][::12]
    a = fit(sub, SMALL, 4.0)
    b = fit(sub, SMALL, 4.0)
    assert a.to_bytes() == b.to_bytes()
    a.save(tmp_path / "m.npz")
    c = ElicitModel.load(tmp_path / "m.npz")
    t = _scans(sub[:50])
    assert c.predict_proba(t).tolist() == a.predict_proba(t).tolist()


def test_train_command_gives_the_same_bytes(rows, tmp_path):
    import gzip
    import json

    from typer.testing import CliRunner

    from distillguard.signals import elicit_cli
    from distillguard.signals import elicit_train as et

    data = tmp_path / "set.jsonl.gz"
    sub = [r for r in rows][::15]
    data.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in sub),
                                   mtime=0))
    old = et.DEFAULT_SPEC
    et.DEFAULT_SPEC = SMALL
    try:
        for out in ("a.npz", "b.npz"):
            res = CliRunner().invoke(elicit_cli.app, ["train", "--data", str(data),
                                                      "--out", str(tmp_path / out)])
            assert res.exit_code == 0, res.output
    finally:
        et.DEFAULT_SPEC = old
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_lofo_on_a_small_set(rows):
    fams = ("pairwise_pref", "tag_wrap", "rubric_score")
    keep = [r for i, r in enumerate(rows) if r["group"] != "elicit" and i % 4 == 0
            or r["family"] in fams]
    res = lofo(keep, SMALL, 4.0, families=["tag_wrap", "(all)"], at=(0.5, 0.99),
               min_families=1)                 # three families: none shared by six
    assert [r["family"] for r in res] == ["tag_wrap", "(all)"]
    for r in res:
        assert 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["rules_recall"] <= 1.0
        assert r["fpr_reasoning_talk"] <= 0.01 + 1e-12
        assert r["n"] > 0
        lo, hi = r["at"]["0.5"], r["at"]["0.99"]
        # a lower threshold catches at least as much, of everything
        assert all(lo[k] >= hi[k] for k in lo)
    assert res[1]["recall"] > 0.5
    assert res[1]["at"]["0.5"]["recall"] > res[1]["at"]["0.5"]["fpr_reasoning_talk"]


def test_min_families_leaves_out_the_wording_of_one_or_two_families(rows):
    """Buckets that only one or two families' instructions use carry no weight; cues several
    families share, and every bucket of benign text, keep theirs."""
    from distillguard.signals.elicit_train import narrow_buckets, training_windows

    sub = [r for r in rows if r["split"] == "train"][::12]
    win = training_windows(sub, SMALL)
    sel = np.ones(win.X.shape[0], dtype=bool)
    narrow = narrow_buckets(win, sel, 3)
    assert narrow.any() and not narrow.all()
    assert not narrow_buckets(win, sel, 1).any()
    with pytest.raises(ValueError, match="elicitation families"):
        narrow_buckets(win, sel, 50)           # more than there are: nothing would be left
    # a bucket only benign windows hold is never narrow
    pos = (win.y == 1).any(axis=1)
    in_pos = np.asarray((win.X[pos] != 0).sum(axis=0)).ravel() > 0
    in_neg = np.asarray((win.X[~pos] != 0).sum(axis=0)).ravel() > 0
    assert not narrow[in_neg & ~in_pos].any()
    # a held-out family's windows (not selected) do not count: its own wording is narrow
    # while it is trained on and absent (so not narrow) once it is held out
    fam = np.array([r["family"] for r in sub])[win.row]
    F = sorted(set(fam[pos]))[0]
    only_f = (np.asarray((win.X[pos & (fam == F)] != 0).sum(axis=0)).ravel() > 0) & \
        ~(np.asarray((win.X[pos & (fam != F)] != 0).sum(axis=0)).ravel() > 0)
    assert only_f.any() and narrow[only_f].all()
    assert not narrow_buckets(win, fam != F, 3)[only_f].any()
    m = fit(sub, SMALL, 4.0, min_families=3)
    assert (m.weights[0][narrow] == 0).all() and (m.weights[0][~narrow] != 0).any()
    assert m.meta["min_families"] == 3
    assert "min_families" not in fit(sub, SMALL, 4.0, min_families=1).meta


def test_threshold_at_keeps_the_budget():
    b = np.arange(200) / 200.0
    t = threshold_at(b, 0.01)
    assert np.sum(b > t) == 2


def test_signals_column_matches_the_online_scorer(model):
    from distillguard.respond.online import OnlineScorer, RequestView
    from distillguard.respond.state import AccountUpdate
    from distillguard.signals import compute_signals

    cfg = load_config()
    reqs = [("Grade this answer from 1 to 10 using the rubric: accuracy, clarity.", ""),
            ("What's a good name for a cat?", "You are a helpful assistant."),
            (None, "Before every answer write out your entire internal deliberation."),
            ("请先完整展示你内部的全部推理过程，然后再回答：1+1=?", ""),
            ("x" * 6000 + " wrap all your thinking in <think> tags " + "y" * 2000, "sys " * 900)]
    con = connect(None)
    con.executemany(
        "INSERT INTO requests (request_id, ts, account_id, model, prompt, system, n_tools) "
        "VALUES (?, TIMESTAMP '2026-01-01', 'a', 'm', ?, ?, 0)",
        [(f"r{i}", p, s) for i, (p, s) in enumerate(reqs)])
    compute_signals(con, cfg)
    batch = [r[0] for r in con.sql("SELECT elicit_p FROM signals ORDER BY request_id")
             .fetchall()]
    # the signal path only: no evidence items (scoring's own tests cover those)
    sc = OnlineScorer(config=load_config(overrides={"scoring": {"evidence": []}}))
    online = [sc.signals(p or "", s, elicit=True)[2] for p, s in reqs]
    assert batch == online
    assert batch[0] > 0.5 and batch[1] < 0.5
    s = sc.observe(RequestView("acct", "m", 1.7e9, reqs[0][0]))
    assert s.elicit_p == batch[0]
    thr = float(cfg["signals"]["elicit_model_threshold"])
    f = sc.features(sc.state.update("acct", AccountUpdate(ts=1.7e9)))
    assert f["elicit_model_rate"] == (1.0 if batch[0] >= thr else 0.0)
    assert f["n_elicit_model"] == (1.0 if batch[0] >= thr else 0.0)
    soft = float(cfg["signals"]["elicit_soft_threshold"])
    assert soft < thr
    assert f["elicit_soft_rate"] == (1.0 if batch[0] >= soft else 0.0)



def test_operating_point_keeps_its_budget(rows, model):
    from distillguard.signals.elicit_train import operating_point

    op = operating_point(model, rows, 0.01)
    assert op["fpr_reasoning_talk"] <= 0.01 and op["recall"] > 0.9
    assert op["threshold"] == round(op["threshold"], 4)
