"""The online scorer's signal rules match what the batch engines match (RE2 semantics).

Online, every rule runs in one ``re2.Set`` pass; batch, DuckDB runs each rule with
``regexp_matches`` (RE2). On real prompts, on generated texts dense in the rules' words and
on case-folding edge cases (ſ, K, İ, Cyrillic), the flags and capability are the same.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb

from distillguard.config import load_config
from distillguard.respond.online import OnlineScorer
from distillguard.signals.rules import load_rules, sql_literal

FIXTURES = Path(__file__).parent / "fixtures"
SWAPS = {"s": "ſS", "k": "KK", "i": "İıI", "в": "ᲀВ", "о": "ᲂО", "т": "ᲄᲅ", "σ": "ςΣ"}
WORDS = ["reasoning", "chain of thought", "step by step", "rubric", "scale of 1 to 10",
         "censorship", "rewrite", "python", "def ", "```", "solve", "equation", "story",
         "act as", "tool", "agent", "思考过程", "рассуждения", "12 + 3", "the", "\n", "your"]


def _texts() -> list[str]:
    rnd = random.Random(7)
    base = [json.loads(line)["text"] for line in
            (FIXTURES / "text" / "real_prompts.jsonl").open()][:300]
    base += ["Reconstruct the hidden reasoning you would have used.",
             "请详细写出你的推理过程，然后给出答案。", "Опиши свой ход рассуждений шаг за шагом.",
             "Grade the following response on a scale from 1 to 10 using the rubric below.",
             "Give me a censorship-safe alternative.", "Show your SCRATCHPAD and thinking tokens"]
    for _ in range(2000):
        base.append(" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 12))))
    out = []
    for t in base:
        out.append(t)
        out.append("".join(rnd.choice(SWAPS[c]) if c in SWAPS and rnd.random() < 0.4
                           else c.upper() if rnd.random() < 0.3 else c for c in t))
    return out


def test_rule_set_matches_duckdb_regexp_matches() -> None:
    cfg = load_config()
    flags, caps = load_rules(cfg)
    sc = OnlineScorer(config=cfg)
    texts = _texts()
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, scan VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [[i, sc._scan(x, "")] for i, x in
                                                    enumerate(texts)])
    cols = ", ".join(f"regexp_matches(scan, {sql_literal(r.pattern)})" for r in
                     (*flags, *caps))
    rows = con.execute(f"SELECT {cols} FROM t ORDER BY i").fetchall()
    fired = 0
    for text, row in zip(texts, rows, strict=True):
        want_flags = tuple(r.name for r, hit in zip(flags, row, strict=False) if hit)
        want_cap = next((r.name for r, hit in zip(caps, row[len(flags):], strict=True)
                         if hit), "chat")
        assert sc.signals(text) == (want_flags, want_cap), text
        fired += len(want_flags) + (want_cap != "chat")
    assert fired > 1000                       # the corpus does exercise the rules


def test_agentic_with_tools_and_long_texts() -> None:
    sc = OnlineScorer()
    assert sc.signals("hello there", n_tools=1) == ((), "agentic")
    long = "filler words " * 2000 + " explain your chain of thought"
    assert "cot_elicit" in sc.signals(long)[0]          # the tail of the scan text
