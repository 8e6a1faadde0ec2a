"""Linking: account-to-account edges (``edges`` table) and their communities."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl

from distillguard.config import Config
from distillguard.linking.graph import build_edges, communities
from distillguard.linking.groups import (
    GROUP_COLUMNS,
    group_stats_sql,
    group_sync,
    member_coordination_sql,
)
from distillguard.linking.keys import (
    account_keys_sql,
    content_config,
    content_tokens_sql,
    sync_tokens_sql,
)

__all__ = ["GROUP_COLUMNS", "LINK_KEYS", "build_edges", "communities", "compute_links",
           "write_groups"]

#: The temporary table (the connection's, not the store's) ``api.analyse`` asks
#: ``compute_links`` to leave its account keys in: campaign descriptions read them instead
#: of deriving them from every request a second time.
LINK_KEYS = "_link_keys"


def compute_links(con: duckdb.DuckDBPyConnection, cfg: Config,
                  keys_table: str | None = None) -> pl.DataFrame:
    """Write ``edges`` (a, b account ids), ``communities`` (account_id, community) and
    ``groups`` (what each community does as a whole, ``linking.groups``); with
    ``keys_table``, also leave the account keys in that temporary table."""
    keys = con.sql(account_keys_sql(cfg)).pl()
    if keys_table:
        con.register("_dg_lk", keys.to_arrow())
        con.execute(f"CREATE OR REPLACE TEMP TABLE {keys_table} AS SELECT * FROM _dg_lk")
        con.unregister("_dg_lk")
    tokens = con.sql(sync_tokens_sql(cfg)).pl()
    content = con.sql(content_tokens_sql(cfg)).pl() if content_config(cfg) else None
    edges, accounts = build_edges(con, cfg, keys, tokens, content)
    member = communities(edges, len(accounts), cfg)
    names = np.asarray(accounts, dtype=object)
    out = edges.with_columns(
        pl.Series("a", names[edges["a"].to_numpy()] if edges.height else [], dtype=pl.Utf8),
        pl.Series("b", names[edges["b"].to_numpy()] if edges.height else [], dtype=pl.Utf8),
    ).select("a", "b", "weight", "kinds", "evidence", "channels")
    comm = pl.DataFrame({"account_id": accounts, "community": member})
    con.register("_edges", out.to_arrow())
    con.execute("CREATE OR REPLACE TABLE edges AS SELECT * FROM _edges")
    con.unregister("_edges")
    con.register("_comm", comm.to_arrow())
    con.execute("CREATE OR REPLACE TABLE communities AS SELECT * FROM _comm")
    con.unregister("_comm")
    write_groups(con, keys, cfg, tokens)
    return out


def write_groups(con: duckdb.DuckDBPyConnection, keys: pl.DataFrame, cfg: Config,
                 tokens: pl.DataFrame | None = None) -> None:
    """The ``groups`` table from ``features``, ``communities``, the account keys and the
    activity tokens (``linking.keys.sync_tokens_sql``) for the timing channel."""
    if tokens is None:
        tokens = con.sql(sync_tokens_sql(cfg)).pl()
    comm = con.sql("SELECT account_id, community FROM communities").pl()
    sync = group_sync(tokens, comm, cfg)
    con.register("_dg_keys", keys.select("account_id", "kind", "key").to_arrow())
    con.register("_dg_sync", sync.to_arrow())
    try:
        con.execute("CREATE OR REPLACE TABLE groups AS "
                    f"{group_stats_sql('_dg_keys', cfg, '_dg_sync')}")
        con.execute("CREATE OR REPLACE TABLE group_members AS "
                    f"{member_coordination_sql('_dg_keys', cfg)}")
    finally:
        con.unregister("_dg_keys")
        con.unregister("_dg_sync")
