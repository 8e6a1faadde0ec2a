"""Prompt-signal rules: load the reviewable YAML and compile it to SQL expressions.

One definition serves every engine: the rules compile to RE2 regular expressions with the
``(?i)`` flag, which DuckDB's ``regexp_matches`` and Spark's ``rlike`` both accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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
