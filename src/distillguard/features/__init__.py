"""Features: one row per account in the ``features`` table, from ``requests`` + ``signals``."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

from distillguard.config import Config
from distillguard.features.defs import ALL_FEATURES, FEATURES, enriched_sql, features_sql
from distillguard.store import scalar, table_exists

__all__ = ["ALL_FEATURES", "FEATURES", "compute_features", "enriched_sql", "features_sql"]


def compute_features(con: duckdb.DuckDBPyConnection, cfg: Config,
                     intel_key: bytes | Sequence[bytes] | None = None, *,
                     incremental: str | None = None, stats: dict | None = None) -> int:
    """Build ``_req`` and ``features``; returns the number of accounts.

    With ``intel_key`` (the sharing group's HMAC key) and imported partner indicators, two
    more features say how many of a partner's indicators an account matches.

    ``incremental``: ``"build"`` computes everything and keeps the state a later run starts
    from, ``"update"`` recomputes only the accounts whose rows changed since
    (``features.incremental``); None computes everything and keeps nothing. ``stats`` gets
    ``features_recomputed``, the number of accounts aggregated.
    """
    from distillguard.features import incremental as inc
    from distillguard.signals.elicit_user import ensure_table

    # _req reads it (elicit_sys); the pipeline fills it first (update_elicit_user), and
    # without that no hit counts as the system prompt's
    ensure_table(con)
    redone = None
    if incremental == "update":
        redone = inc.update(con, cfg)
    elif incremental == "build":
        inc.build(con, cfg)
    else:
        con.execute(f"CREATE OR REPLACE TABLE _req AS {enriched_sql(cfg)}")
    base = inc.BASE if incremental else "features_base"
    if not incremental:
        con.execute(f"CREATE OR REPLACE TABLE features_base AS {features_sql(cfg)}")
    hits = _partner_hits(con, intel_key)
    con.register("_partner", hits.to_arrow())
    con.execute(f"""
        CREATE OR REPLACE TABLE features AS
        SELECT f.*, coalesce(p.partner_hits, 0)::DOUBLE AS partner_hits,
               coalesce(p.max_confidence, 0)::DOUBLE AS partner_confidence,
               p.reasons AS partner_reasons
        FROM {base} f LEFT JOIN _partner p USING (account_id)""")
    con.unregister("_partner")
    if not incremental:
        con.execute("DROP TABLE features_base")
    n = scalar(con, "SELECT count(*) FROM features")
    if stats is not None:
        stats["features_recomputed"] = n if redone is None else redone
    return n


def _partner_hits(con: duckdb.DuckDBPyConnection, key: bytes | Sequence[bytes] | None) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"account_id": pl.Utf8, "partner_hits": pl.Int64,
                                 "max_confidence": pl.Int64, "reasons": pl.Utf8})
    if key is None or not table_exists(con, "partner_indicators"):
        return empty
    from distillguard.intel import match_partner_indicators

    m = match_partner_indicators(con, key)
    return m.filter(pl.col("partner_hits") > 0).select(
        "account_id", pl.col("partner_hits").cast(pl.Int64),
        pl.col("max_confidence").cast(pl.Int64), pl.col("reasons").cast(pl.Utf8))
