"""Prompt-signal rules: load the reviewable YAML and compile it to SQL expressions.

One definition serves every engine: the rules compile to RE2 regular expressions with the
``(?i)`` flag, which DuckDB's ``regexp_matches`` and Spark's ``rlike`` both accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from distillguard.config import Config
from distillguard.errors import ConfigError

FLAG_NAMES = ("cot_elicit", "rubric_grading", "censorship_safe")


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: str            # one combined RE2 pattern, case-insensitive
    meta: dict[str, Any]


def _combine(patterns: list[str], where: str) -> str:
    for p in patterns:
        try:
            re.compile(p)  # RE2 is stricter than re; both reject the common mistakes
        except re.error as exc:
            raise ConfigError(f"rule {where}: bad pattern {p!r}: {exc}") from exc
    return "(?i)" + "|".join(f"(?:{p})" for p in patterns)


def load_rules(cfg: Config) -> tuple[list[Rule], list[Rule]]:
    """Return (flag rules, capability rules in priority order)."""
    ref = cfg["signals"]["rules"]
    path = Path(ref)
    if path.exists():
        text = path.read_text("utf-8")
    else:
        text = resources.files("distillguard").joinpath("data", ref).read_text("utf-8")
    doc = yaml.safe_load(text)
    flags = [Rule(r["name"], _combine(r["patterns"], r["name"]),
                  {k: v for k, v in r.items() if k != "patterns"}) for r in doc["flags"]]
    names = {r.name for r in flags}
    if names != set(FLAG_NAMES):
        raise ConfigError(f"signal rules must define exactly {FLAG_NAMES}, got {sorted(names)}")
    caps = [Rule(r["name"], _combine(r["patterns"], r["name"]), {}) for r in doc["capabilities"]]
    return flags, caps


def sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class RuleSet:
    """Every flag and capability rule as one RE2 set: the batch signals' rule pass.

    DuckDB ran one ``regexp_matches`` per rule, nine scans of every text, and its RE2 DFA
    caches contended between threads (1M perf requests: ~17 s of 84 s). One ``re2.Set``
    pass per *distinct* text finds every rule that matches anywhere, with the same RE2
    semantics (default options, as ``regexp_matches`` uses them; ``max_mem`` raised because
    a set whose DFA runs out of memory reports no match). ``tests/test_signals.py`` checks
    it against :func:`~distillguard.signals.sql.signals_sql`.
    """

    def __init__(self, flags: list[Rule], caps: list[Rule]) -> None:
        import re2

        self.flag_names = [r.name for r in flags]
        self.cap_names = [r.name for r in caps]
        opts = re2.Options()
        opts.max_mem = 256 << 20
        opts.never_capture = True      # only whether a rule matches is asked
        self._set = re2.Set.SearchSet(opts)
        for r in (*flags, *caps):
            self._set.Add(r.pattern)
        self._set.Compile()
        self._match = self._set._set.Match     # the C++ call on UTF-8 bytes, no str wrapper

    def matrix(self, texts: pa.Array) -> np.ndarray:
        """(n, rules) bool: which rules match each text, each distinct text matched once."""
        n_rules = len(self.flag_names) + len(self.cap_names)
        enc = texts.dictionary_encode()
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        uniq = enc.dictionary.cast(pa.binary()).to_pylist()
        match = self._match
        hits = [match(u or b"") or () for u in uniq]
        lens = np.fromiter(map(len, hits), dtype=np.int64, count=len(hits))
        cols = np.fromiter(chain.from_iterable(hits), dtype=np.int64, count=int(lens.sum()))
        m = np.zeros((len(uniq), n_rules), dtype=bool)
        m[np.repeat(np.arange(len(uniq)), lens), cols] = True
        idx = enc.indices.to_numpy(zero_copy_only=False)
        return m[idx]

    def evaluate(self, scan: pa.Array, n_tools: np.ndarray) -> dict[str, pa.Array]:
        """The flag columns and ``capability``, as ``signals_sql`` defines them."""
        m = self.matrix(scan)
        nf = len(self.flag_names)
        out = {name: pa.array(m[:, i]) for i, name in enumerate(self.flag_names)}
        caps = m[:, nf:]
        if "agentic" in self.cap_names:            # a request with tools is agentic first
            caps[:, self.cap_names.index("agentic")] |= np.asarray(n_tools) > 0
        # The first capability in priority order that matches, else chat.
        first = np.where(caps.any(axis=1), caps.argmax(axis=1), len(self.cap_names))
        names = pa.array([*self.cap_names, "chat"], pa.string())
        out["capability"] = names.take(pa.array(first))
        return out


_SETS: dict[tuple[str, ...], RuleSet] = {}


def rule_set(flags: list[Rule], caps: list[Rule]) -> RuleSet:
    """The compiled :class:`RuleSet` of these rules, once per process."""
    key = tuple(r.name + "\0" + r.pattern for r in (*flags, *caps))
    rs = _SETS.get(key)
    if rs is None:
        rs = _SETS[key] = RuleSet(flags, caps)
    return rs
