"""Features: one row per account in the ``features`` table, from ``requests`` + ``signals``."""

from __future__ import annotations

import duckdb

from distillguard.config import Config
from distillguard.features.defs import ALL_FEATURES, FEATURES, enriched_sql, features_sql
from distillguard.store import scalar

__all__ = ["ALL_FEATURES", "FEATURES", "compute_features", "enriched_sql", "features_sql"]


def compute_features(con: duckdb.DuckDBPyConnection, cfg: Config) -> int:
    """Build ``_req`` and ``features``; returns the number of accounts."""
    con.execute(f"CREATE OR REPLACE TABLE _req AS {enriched_sql(cfg)}")
    con.execute(f"CREATE OR REPLACE TABLE features AS {features_sql(cfg)}")
    return scalar(con, "SELECT count(*) FROM features")
