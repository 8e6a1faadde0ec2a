"""Prompt signals on real text (fixtures) and on elicitation phrasings in several languages."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from distillguard.signals.sql import signals_sql
from distillguard.store import connect

FIXTURES = Path(__file__).parent / "fixtures"

REAL = [json.loads(line) for line in (FIXTURES / "text" / "real_prompts.jsonl").open()]

# Written for these tests from the public descriptions, in the languages campaigns used.
COT = [
    "Imagine and articulate the internal reasoning behind a completed response to this task.",
    "Before the final answer, write out your complete chain of thought.",
    "Reconstruct the hidden reasoning you would have used to produce the answer below.",
    "Translate your reasoning into French, then give the answer.",
    "Show the detailed thought process that led to this solution: x = 4.",
    "请详细写出你的推理过程，然后给出答案。",
    "Опиши свой ход рассуждений шаг за шагом, прежде чем ответить.",
    "Explica tu razonamiento interno antes de responder a la pregunta.",
    "Décris ton raisonnement interne complet avant de répondre.",
    "Beschreibe deinen Gedankengang ausführlich.",
]
RUBRIC = [
    "Grade the following response on a scale from 1 to 10 using the rubric below.",
    "Act as a reward model: which response is better, A or B?",
    "Score each candidate answer against these criteria and output a number out of 10.",
    "请按照评分标准给这个回答打分。",
    "Оцени ответ по шкале от 1 до 10.",
]
CENSOR = [
    "Give me a censorship-safe alternative to this answer.",
    "Rewrite this so it avoids politically sensitive content and passes moderation.",
    "请把这段话改写成不涉及敏感话题的版本。",
]


def run_signals(cfg, texts: list[str], system: str | None = None) -> pl.DataFrame:
    con = connect(None)
    con.executemany(
        "INSERT INTO requests (request_id, ts, account_id, model, prompt, system, n_tools) "
        "VALUES (?, TIMESTAMP '2026-01-01', 'a', 'm', ?, ?, 0)",
        [(f"{i:06d}", t, system) for i, t in enumerate(texts)])
    return con.sql(signals_sql(cfg) + " ORDER BY request_id").pl()


@pytest.mark.parametrize("col,texts", [("cot_elicit", COT), ("rubric_grading", RUBRIC),
                                       ("censorship_safe", CENSOR)])
def test_flags_fire_on_phrasings(cfg, col, texts):
    df = run_signals(cfg, texts)
    missed = [t for t, hit in zip(texts, df[col].to_list(), strict=True) if not hit]
    assert not missed, f"{col} missed: {missed}"


def test_flags_rare_on_real_prompts(cfg):
    df = run_signals(cfg, [r["text"] for r in REAL])
    for col in ("cot_elicit", "rubric_grading", "censorship_safe"):
        # Real users do sometimes ask "how did you arrive at that"; a rate, not a verdict.
        assert df[col].mean() <= 0.03, (col, df[col].mean())


def test_elicitation_in_system_prompt_counts(cfg):
    df = run_signals(cfg, ["What is 17 * 23?"],
                     system="Always articulate your internal reasoning in full.")
    assert df["cot_elicit"][0]


def test_capability_math_on_gsm8k(cfg):
    texts = [r["text"] for r in REAL if r["source"].startswith("gsm8k")]
    df = run_signals(cfg, texts)
    assert (df["capability"] == "math").mean() >= 0.8


def test_capability_coding_and_agentic(cfg):
    df = run_signals(cfg, ["Write a Python function that reverses a linked list.",
                           "Use the available tools to run the tests and fix the failing one."])
    assert df["capability"].to_list() == ["coding", "agentic"]


def test_templates_group_near_duplicates_not_strangers(cfg):
    from distillguard.signals import compute_signals

    frame = "Imagine and articulate the internal reasoning behind a completed response. Task: {}"
    tasks = [r["text"] for r in REAL]
    con = connect(None)
    texts = [frame.format(t) for t in tasks[:40]] + tasks
    con.executemany(
        "INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools) "
        "VALUES (?, TIMESTAMP '2026-01-01', 'a', 'm', ?, 0)",
        [(f"{i:06d}", t) for i, t in enumerate(texts)])
    compute_signals(con, cfg)
    df = con.sql("SELECT template_id, template_size FROM signals ORDER BY request_id").pl()
    tpl = df["template_id"][:40]
    assert tpl.value_counts()["count"].max() == 40      # one template for the wrapped tasks
    assert df["template_size"][40:].max() < 10           # real prompts do not form one


def test_system_prompt_is_scanned_when_the_prompt_is_null(cfg):
    con = connect(None)
    con.execute("INSERT INTO requests (request_id, ts, account_id, model, prompt, system, "
                "n_tools) VALUES ('r', TIMESTAMP '2026-01-01', 'a', 'm', NULL, "
                "'Always articulate your internal reasoning in full.', 0)")
    assert con.sql(signals_sql(cfg)).pl()["cot_elicit"][0]


def test_worker_processes_give_the_same_signals(cfg):
    """Big inputs take the template keys from worker processes, in small batches."""
    from distillguard.signals import compute_signals

    frame = "Imagine and articulate the internal reasoning behind a completed response. Task: {}"
    texts = [frame.format(r["text"]) for r in REAL[:60]] + [r["text"] for r in REAL] + [None]
    out = []
    for kw in ({}, {"batch_rows": 7, "parallel_min_rows": 1}):
        con = connect(None)
        con.executemany(
            "INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools) "
            "VALUES (?, TIMESTAMP '2026-01-01', 'a', 'm', ?, 0)",
            [(f"{i:06d}", t) for i, t in enumerate(texts)])
        assert compute_signals(con, cfg, **kw) == len(texts)
        out.append(con.sql("SELECT * FROM signals ORDER BY request_id").pl())
    assert out[0].equals(out[1])
    assert out[0]["template_size"][:60].min() == 60


def test_rule_set_equals_the_shared_sql_definition(cfg):
    """compute_signals matches the rules with one RE2 set per batch (inline and in worker
    processes); its flags and capability equal signals_sql's regexp_matches column for
    column, on real prompts, every phrasing above, system prompts, tools, NULLs, newlines,
    non-ASCII case folding and texts past the scan window."""
    from distillguard.signals import compute_signals

    texts = ([r["text"] for r in REAL] + COT + RUBRIC + CENSOR
             + ["Use the available tools to run the tests.", "", None, "x\nREASONING\n",
                "ΣΚΈΨΟΥ ΒΉΜΑ ΠΡΟΣ ΒΉΜΑ", "Write a Python function. " * 400 + COT[0],
                COT[1] + " " + "filler " * 2000, "ＣＨＡＩＮ ＯＦ ＴＨＯＵＧＨＴ"])
    rows = [(f"{i:06d}", t, None if i % 5 else COT[i % len(COT)], i % 7 == 3)
            for i, t in enumerate(texts)]
    names = ["cot_elicit", "rubric_grading", "censorship_safe", "capability"]
    want = None
    for kw in ({}, {"batch_rows": 11, "parallel_min_rows": 1}):
        con = connect(None)
        con.executemany(
            "INSERT INTO requests (request_id, ts, account_id, model, prompt, system, "
            "n_tools) VALUES (?, TIMESTAMP '2026-01-01', 'a', 'm', ?, ?, "
            "CASE WHEN ? THEN 2 ELSE 0 END)", rows)
        if want is None:
            want = con.sql(signals_sql(cfg) + " ORDER BY request_id").pl().select(
                "request_id", *names)
        compute_signals(con, cfg, **kw)
        got = con.sql("SELECT request_id, " + ", ".join(names)
                      + " FROM signals ORDER BY request_id").pl()
        assert got.equals(want), kw
    assert want["cot_elicit"].sum() > 10 and want["capability"].n_unique() >= 4
