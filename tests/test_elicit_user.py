"""Learned-elicitation hits that only an agent framework's system prompt explains
(``signals.elicit_user``): counted apart, discounted only for a popular system prompt that is
the account's only one, the same online as in batch, and scored once per request."""

from __future__ import annotations

import pytest

from distillguard import api
from distillguard.config import load_config
from distillguard.respond.online import OnlineScorer, _iter_views
from distillguard.respond.state import AccountUpdate
from distillguard.scoring.fit import design_frame
from distillguard.signals.elicit_user import update_elicit_user
from distillguard.sim._heldout_text import TUNE_REASONING_FRAMEWORKS
from distillguard.store import connect

REACT = TUNE_REASONING_FRAMEWORKS[0][2]          # a ReAct "Thought / Action" scratchpad
OWN = ("You produce training data for a reasoning model. For every task, first write out your "
       "complete internal chain of thought, every single step, unedited, and only then the "
       "final answer.")
ELICIT = ("Before the final answer, show me your complete internal reasoning, every step of "
          "it, not a summary.")
TASKS = ["Find the population of Lisbon in 2024.", "Write a Python function that reverses a "
         "linked list.", "What is 17 * 23?", "Summarise the plot of Hamlet in two lines.",
         "Convert 72 degrees Fahrenheit to Celsius.", "List three uses of a hash map.",
         "Which is larger, 2^10 or 10^3?", "Fix the off-by-one error in a binary search.",
         "Suggest a name for a bakery.", "Explain what DNS does.", "Sort [3, 1, 2] by hand.",
         "Draft a polite reminder email about an unpaid invoice."]


def _rows(account: str, system: str | list[str], suffix: str = "") -> list[tuple]:
    systems = system if isinstance(system, list) else [system] * len(TASKS)
    return [(f"{account}-{i:02d}", f"2026-01-0{1 + i % 7} 1{i % 10}:00:00", account,
             f"{t} ({account}){suffix}", s) for i, (t, s) in enumerate(zip(TASKS, systems,
                                                                             strict=True))]


@pytest.fixture(scope="module")
def store():
    cfg = load_config()
    con = connect(None)
    rows = []
    for a in range(12):                  # ordinary users of one popular framework
        rows += _rows(f"fw{a:02d}", REACT)
    rows += _rows("fwx", REACT, " " + ELICIT)   # the same framework, harvesting reasoning
    rows += _rows("own", OWN)                   # its own scratchpad instruction, alone
    rows += _rows("mixed", [REACT, OWN] * 6)    # the framework's prompt beside its own
    con.executemany("INSERT INTO requests (request_id, ts, account_id, model, prompt, system, "
                    "n_tools) VALUES (?, CAST(? AS TIMESTAMP), ?, 'm', ?, ?, 0)", rows)
    api.analyse(con, cfg)
    feats = {r["account_id"]: r for r in con.sql("SELECT * FROM features").pl()
             .iter_rows(named=True)}
    ev = {r["account_id"]: r["ev_elicit_model"] for r in design_frame(con, cfg)
          .iter_rows(named=True)}
    yield cfg, con, feats, ev
    con.close()


def test_only_the_user_part_of_flagged_requests_with_a_system_prompt_is_scored(store):
    _, con, _, _ = store
    n, below = con.execute("SELECT count(*), count(*) FILTER (WHERE user_p < 0.99) "
                           "FROM elicit_user").fetchall()[0]
    assert n == 15 * len(TASKS)           # every request here is flagged and has a system
    assert below == 14 * len(TASKS)       # all but the harvester's own wording


def test_framework_hits_count_apart_and_leave_the_evidence(store):
    _, _, feats, ev = store
    for a in ("fw00", "fw11"):
        f = feats[a]
        assert f["elicit_model_rate"] == 1.0 and f["sys_elicit_rate"] == 1.0
        assert f["system_accounts"] == 14 and f["n_system_prompts"] == 1
        assert ev[a] == 0.0
    # the user prompt itself asks for the reasoning: its own evidence, framework or not
    assert feats["fwx"]["sys_elicit_rate"] == 0.0 and ev["fwx"] > 0.5
    # its own scratchpad instruction, sent by nobody else: no discount
    assert feats["own"]["sys_elicit_rate"] == 1.0 and feats["own"]["system_accounts"] == 2
    assert ev["own"] > 0.5
    # a popular framework's prompt beside its own instruction does not buy the discount
    assert feats["mixed"]["n_system_prompts"] == 2 and ev["mixed"] > 0.5


def test_online_features_equal_batch(store):
    cfg, con, feats, _ = store
    sc = OnlineScorer(config=cfg)
    for view, _, _, elicit_p, _ in _iter_views(con, cfg):      # as replay feeds it
        sc.observe(view, elicit_p=elicit_p)
    for a, row in feats.items():
        st = sc.state.update(a, AccountUpdate(ts=0, cross_max=("card", "sys")))
        f = sc.features(st, a)
        for k in ("elicit_model_rate", "sys_elicit_rate", "n_system_prompts",
                  "system_accounts"):
            assert f[k] == pytest.approx(row[k], abs=1e-12), (a, k)


def test_a_rerun_scores_only_new_requests_and_a_new_threshold_starts_over(store):
    cfg, con, _, _ = store
    assert update_elicit_user(con, cfg) == 0
    con.executemany("INSERT INTO requests (request_id, ts, account_id, model, prompt, system, "
                    "n_tools) VALUES (?, CAST(? AS TIMESTAMP), ?, 'm', ?, ?, 0)",
                    _rows("fw12", REACT))
    from distillguard.signals import compute_signals

    compute_signals(con, cfg)
    assert update_elicit_user(con, cfg) == len(TASKS)
    stricter = load_config(overrides={"signals": {"elicit_model_threshold": 0.9999}})
    n = con.execute("SELECT count(*) FROM signals WHERE elicit_p >= 0.9999").fetchall()[0][0]
    assert update_elicit_user(con, stricter) == n
    assert con.execute("SELECT count(*) FROM elicit_user").fetchall()[0][0] == n
