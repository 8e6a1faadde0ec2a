"""Signals: per-request evidence computed from the ``requests`` table into ``signals``."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from distillguard.config import Config
from distillguard.signals._workers import MinHashWorkers
from distillguard.signals.rules import FLAG_NAMES, load_rules
from distillguard.signals.sql import signals_sql
from distillguard.signals.templates import (
    exact_keys,
    signature_band_keys,
    skeleton_frame,
    template_ids,
)
from distillguard.store import scalar

__all__ = ["FLAG_NAMES", "compute_signals", "load_rules", "signals_sql"]


def compute_signals(con: duckdb.DuckDBPyConnection, cfg: Config,
                    on_progress: Callable[[int], None] | None = None,
                    batch_rows: int = 100_000, parallel_min_rows: int = 400_000) -> int:
    """Build the ``signals`` table; returns the number of requests processed."""
    con.execute(f"CREATE OR REPLACE TABLE _signals_base AS {signals_sql(cfg)}")
    n = scalar(con, "SELECT count(*) FROM _signals_base")
    perms = int(cfg["signals"]["minhash_perms"])
    bands = int(cfg["signals"]["lsh_bands"])
    k = int(cfg["signals"]["skeleton_words"])
    ids, keys, skels = [], [], []
    reader = con.sql("SELECT request_id, prompt_ends FROM _signals_base"
                     ).to_arrow_reader(batch_rows)
    # MinHash holds the GIL (rensa, then its digest rows as Python ints): on big inputs it
    # runs in worker processes while this one reads batches and builds skeletons.
    workers = min(2, os.cpu_count() or 1) if n >= parallel_min_rows else 0
    pool = MinHashWorkers(workers) if workers else None
    pending: deque = deque()
    bkeys: list[np.ndarray] = []
    done = 0

    def drain(limit: int) -> None:
        while len(pending) > limit:
            bkeys.append(pending.popleft().result())

    try:
        for batch in reader:
            sk = skeleton_frame(pl.from_arrow(batch.column("prompt_ends")), k)
            skel_list = sk["skeleton"].to_list()
            if pool is not None:
                pending.append(pool.submit(skel_list, perms, bands))
                drain(2 * workers)
            else:
                bkeys.append(signature_band_keys(skel_list, perms, bands))
            keys.append(np.column_stack([exact_keys(sk["head_key"].to_list(), 1, done),
                                         exact_keys(sk["tail_key"].to_list(), 2, done)]))
            done += batch.num_rows
            ids.append(batch.column("request_id"))
            skels.append(sk["skeleton"].to_arrow())
            if on_progress:
                on_progress(batch.num_rows)
        drain(0)
    finally:
        if pool is not None:
            pool.close()
    if keys:
        all_keys = np.concatenate([np.column_stack([b, e]) for b, e in zip(bkeys, keys,
                                                                            strict=True)])
        del bkeys, keys
        tkey, tsize = template_ids(all_keys)
        tpl = pa.table({
            "request_id": pa.concat_arrays(ids),
            "template_key": pa.array(tkey.view(np.int64)),
            "template_size": pa.array(tsize),
            "skeleton": pa.concat_arrays([a.cast(pa.string()) for a in skels]),
        })
    else:
        tpl = pa.table({"request_id": pa.array([], pa.string()),
                        "template_key": pa.array([], pa.int64()),
                        "template_size": pa.array([], pa.int64()),
                        "skeleton": pa.array([], pa.string())})
    con.register("_tpl", tpl)
    con.execute("""
        CREATE OR REPLACE TABLE signals AS
        SELECT s.* EXCLUDE (prompt_ends), t.skeleton,
               't' || lower(hex(t.template_key)) AS template_id, t.template_size
        FROM _signals_base s JOIN _tpl t USING (request_id)
    """)
    con.unregister("_tpl")
    con.execute("DROP TABLE _signals_base")
    return n
