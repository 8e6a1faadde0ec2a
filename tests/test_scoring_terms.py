"""Named terms of the scoring config."""

from __future__ import annotations

from distillguard.config import _expand_terms


def test_expansion_keeps_backslashes_and_chains() -> None:
    raw = {"scoring": {"terms": {"a_t": "regexp_matches(p, '\\d+')", "b_t": "a_t * 2"},
                       "evidence": [{"name": "x", "expr": "b_t + a_t_not + a_t"}]}}
    got = _expand_terms(raw)["scoring"]["evidence"][0]["expr"]
    assert got == "((regexp_matches(p, '\\d+')) * 2) + a_t_not + (regexp_matches(p, '\\d+'))"
    assert raw["scoring"]["evidence"][0]["expr"] == "b_t + a_t_not + a_t"   # not mutated
