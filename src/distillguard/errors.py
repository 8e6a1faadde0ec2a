"""One exception tree for the whole package.

DistillguardError
 ├── IngestError        a file cannot be read at all (missing, unknown format)
 │    └── BadRowError   one row is invalid (raised only in --strict mode)
 ├── ConfigError        the detection config is invalid
 ├── NotFittedError     an estimator was used before fit()
 └── StoreError         the DuckDB store failed (wraps duckdb.Error)
"""

from __future__ import annotations


class DistillguardError(Exception):
    """Base class of every error distillguard raises on purpose."""


class IngestError(DistillguardError):
    """A log file cannot be read."""


class BadRowError(IngestError):
    """A row of a log file is invalid; carries where and why."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        super().__init__(f"{source}:{line}: {reason}")


class ConfigError(DistillguardError):
    """The detection config is invalid."""


class NotFittedError(DistillguardError, ValueError):
    """An estimator was used before fit()."""


class StoreError(DistillguardError):
    """The embedded store failed."""
