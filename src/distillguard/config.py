"""Detection configuration: every threshold and weight, named once, in one versioned YAML.

The defaults live in ``data/config.yaml`` (shipped with the package). A user config file is
merged over them key by key, so it only needs the values it changes. ``version`` travels into
every output so a verdict can be traced to the config that produced it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distillguard.errors import ConfigError

_REQUIRED_SECTIONS = ("version", "ingest", "signals", "features", "linking", "scoring")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class Config:
    """A validated detection config (read-only view over the merged YAML)."""

    raw: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.raw["version"])

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]


def default_config_text() -> str:
    return resources.files("distillguard").joinpath("data/config.yaml").read_text("utf-8")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load the packaged defaults, then ``path`` (if any), then ``overrides`` on top."""
    raw = yaml.safe_load(default_config_text())
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text("utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(user, dict):
            raise ConfigError(f"config {path} must be a mapping at top level")
        raw = _merge(raw, user)
    if overrides:
        raw = _merge(raw, overrides)
    missing = [s for s in _REQUIRED_SECTIONS if s not in raw]
    if missing:
        raise ConfigError(f"config lacks sections: {', '.join(missing)}")
    return Config(_expand_terms(raw))


def _expand_terms(raw: dict[str, Any]) -> dict[str, Any]:
    """Replace the names of ``scoring.terms`` in evidence expressions by their text.

    A term is a sub-expression several items share (a gate, a discount): written and
    reviewed once, while every engine (DuckDB, Spark, the online scorer) still reads plain
    SQL. A term may use the terms declared before it.
    """
    terms = (raw.get("scoring") or {}).get("terms") or {}
    if not terms:
        return raw
    if not isinstance(terms, dict):
        raise ConfigError("scoring.terms must map names to SQL expressions")
    out = copy.deepcopy(raw)
    done: list[tuple[re.Pattern[str], str]] = []
    for name, text in terms.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)):
            raise ConfigError(f"scoring.terms: {name!r} is not a lower-case identifier")
        for pat, body in done:
            text = pat.sub(lambda _m, b=body: b, str(text))
        done.append((re.compile(rf"\b{name}\b"), f"({text})"))
    for item in out["scoring"].get("evidence") or []:
        for key in ("expr", "support"):
            if item.get(key):
                for pat, body in done:
                    item[key] = pat.sub(lambda _m, b=body: b, str(item[key]))
    return out
