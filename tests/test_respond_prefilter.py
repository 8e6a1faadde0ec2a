"""The online scorer's literal prefilter never changes a signal (it only skips regex runs)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from distillguard.respond.online import OnlineScorer, _fold, _required_literals

FIXTURES = Path(__file__).parent / "fixtures"
# Characters re treats as case-insensitively equal to others beyond str.lower().
SWAPS = {"s": "ſS", "k": "KK", "i": "İıI", "в": "ᲀВ", "о": "ᲂО", "т": "ᲄᲅ", "σ": "ςΣ"}


def _full(sc: OnlineScorer, prompt: str, n_tools: int = 0) -> tuple[tuple[str, ...], str]:
    scan = sc._scan(prompt, "")
    flags = tuple(n for n, rx in sc._flags if rx.search(scan))
    cap = next((n for n, rx in sc._caps if (n == "agentic" and n_tools) or rx.search(scan)),
               "chat")
    return flags, cap


def _texts() -> list[str]:
    rnd = random.Random(7)
    sc = OnlineScorer()
    base = [json.loads(line)["text"] for line in
            (FIXTURES / "text" / "real_prompts.jsonl").open()][:300]
    base += ["Reconstruct the hidden reasoning you would have used.",
             "请详细写出你的推理过程，然后给出答案。", "Опиши свой ход рассуждений шаг за шагом.",
             "Grade the following response on a scale from 1 to 10 using the rubric below.",
             "Give me a censorship-safe alternative.", "Show your SCRATCHPAD and thinking tokens"]
    lits = sorted({x for v in sc._lits.values() if v for x in v})
    for _ in range(3000):
        base.append(" ".join(rnd.choice(lits) if rnd.random() < 0.4 else
                             rnd.choice(["the", "answer", "12 + 3", "your", "\n", "reasoning"])
                             for _ in range(rnd.randint(1, 10))))
    out = []
    for t in base:
        out.append(t)
        out.append("".join(rnd.choice(SWAPS[c]) if c in SWAPS and rnd.random() < 0.4
                           else c.upper() if rnd.random() < 0.3 else c for c in t))
    return out


def test_prefilter_agrees_with_the_full_regexes() -> None:
    sc = OnlineScorer()
    fired = 0
    for t in _texts():
        want = _full(sc, t)
        assert sc.signals(t) == want, t
        fired += len(want[0]) + (want[1] != "chat")
    assert fired > 1000                       # the corpus does exercise the rules


def test_required_literals_and_folding() -> None:
    assert _required_literals(r"(?i)foo\s+(bar|baz)") in (("bar", "baz"), ("foo",))
    assert _required_literals(r"\d+") is None
    assert _required_literals(r"(a|\d)x?") is None
    lits = _required_literals("(?i)stack ?trace") or ()
    assert any(x in _fold("STACKTRACE") for x in lits)
    assert re.search("(?i)sk", "ſK") and "sk" in _fold("ſK")
    assert _fold("İ") == "i"
