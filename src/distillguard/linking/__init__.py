"""Linking: account-to-account edges (``edges`` table) and their communities."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl

from distillguard.config import Config
from distillguard.linking.graph import build_edges, communities

__all__ = ["build_edges", "communities", "compute_links"]


def compute_links(con: duckdb.DuckDBPyConnection, cfg: Config) -> pl.DataFrame:
    """Write ``edges`` (a, b account ids) and ``communities`` (account_id, community)."""
    edges, accounts = build_edges(con, cfg)
    member = communities(edges, len(accounts), cfg)
    names = np.asarray(accounts, dtype=object)
    out = edges.with_columns(
        pl.Series("a", names[edges["a"].to_numpy()] if edges.height else [], dtype=pl.Utf8),
        pl.Series("b", names[edges["b"].to_numpy()] if edges.height else [], dtype=pl.Utf8),
    ).select("a", "b", "weight", "kinds", "evidence")
    comm = pl.DataFrame({"account_id": accounts, "community": member})
    con.register("_edges", out.to_arrow())
    con.execute("CREATE OR REPLACE TABLE edges AS SELECT * FROM _edges")
    con.unregister("_edges")
    con.register("_comm", comm.to_arrow())
    con.execute("CREATE OR REPLACE TABLE communities AS SELECT * FROM _comm")
    con.unregister("_comm")
    return out
