"""Signals: per-request evidence computed from the ``requests`` table into ``signals``."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa

from distillguard.config import Config
from distillguard.signals._workers import TemplateKeyWorkers, batch_work
from distillguard.signals.elicit_model import scan_probs
from distillguard.signals.rules import FLAG_NAMES, load_rules
from distillguard.signals.sql import signals_sql
from distillguard.signals.templates import template_ids_sql
from distillguard.store import scalar

__all__ = ["FLAG_NAMES", "compute_signals", "load_rules", "signals_sql"]


def compute_signals(con: duckdb.DuckDBPyConnection, cfg: Config,
                    on_progress: Callable[[int], None] | None = None,
                    batch_rows: int = 100_000, parallel_min_rows: int = 400_000,
                    timings: dict[str, float] | None = None) -> int:
    """Build the ``signals`` table; returns the number of requests processed.

    Each batch's skeletons and template keys go straight into a store table (``_tkeys``) and
    the template of each request is picked in SQL (``template_ids_sql``), so this process
    holds a few batches at a time, not every request's keys and skeleton. The same batches
    give ``elicit_p``, the learned elicitation model's probability over the scan text
    (``signals.elicit_model``), stored beside the keys.
    """
    # Sub-stage wall times (``signals.rules``, ``signals.keys``, ``signals.templates``) for
    # the scaling benchmark.
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    con.execute(f"CREATE OR REPLACE TABLE _signals_base AS {signals_sql(cfg)}")
    n = scalar(con, "SELECT count(*) FROM _signals_base")
    perms = int(cfg["signals"]["minhash_perms"])
    bands = int(cfg["signals"]["lsh_bands"])
    k = int(cfg["signals"]["skeleton_words"])
    kcols = [f"k{b}" for b in range(bands + 2)]      # MinHash bands, then head and tail keys
    # A temporary table: no WAL write per batch; DuckDB spills it past its memory limit.
    con.execute("CREATE OR REPLACE TEMP TABLE _tkeys (request_id VARCHAR, skeleton VARCHAR, "
                + ", ".join(f"{c} BIGINT" for c in kcols) + ", elicit_p DOUBLE)")

    def write(ids: pa.Array, skel: pa.Array, keys: np.ndarray, p: np.ndarray) -> None:
        cols = {c: pa.array(np.ascontiguousarray(keys[:, i]).view(np.int64))
                for i, c in enumerate(kcols)}
        con.register("_tkeys_in", pa.table({"request_id": ids, "skeleton": skel, **cols,
                                            "elicit_p": pa.array(p, pa.float64())}))
        try:
            con.execute("INSERT INTO _tkeys SELECT * FROM _tkeys_in")
        finally:
            con.unregister("_tkeys_in")

    timings["signals.rules"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # The text work (skeletons in Polars, MinHash in rensa, which holds the GIL) runs in
    # worker processes on big inputs, while this one reads batches and inserts results.
    workers = min(2, os.cpu_count() or 1) if n >= parallel_min_rows else 0
    pool = TemplateKeyWorkers(workers) if workers else None
    # Inline, elicit_p runs on a thread beside the template keys: its numpy passes release
    # the GIL while Polars and rensa work on the same batch.
    side = ThreadPoolExecutor(1) if pool is None else None
    pending: deque = deque()      # (request ids, result or its future), in input order
    done = 0

    def drain(limit: int) -> None:
        while len(pending) > limit:
            ids, res = pending.popleft()
            skel, keys, _, p = res.result() if pool is not None else res
            write(ids, skel, keys, p.result() if isinstance(p, Future) else p)

    # The read streams on its own cursor: this connection inserts while it is open.
    cur = con.cursor()
    try:
        reader = cur.sql("SELECT request_id, prompt_ends, scan FROM _signals_base"
                         ).to_arrow_reader(batch_rows)
        for batch in reader:
            args = (batch.column("prompt_ends"), done, k, perms, bands, batch.column("scan"))
            if pool is not None:
                res = pool.submit(*args)
            else:
                fut = side.submit(scan_probs, args[-1])
                res = (*batch_work(*args[:-1])[:3], fut)
            pending.append((batch.column("request_id"), res))
            drain(2 * workers)
            done += batch.num_rows
            if on_progress:
                on_progress(batch.num_rows)
        drain(0)
    finally:
        cur.close()
        if pool is not None:
            pool.close()
        if side is not None:
            side.shutdown(wait=True, cancel_futures=True)
    timings["signals.keys"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    con.execute(f"""
        CREATE OR REPLACE TABLE signals AS
        SELECT s.* EXCLUDE (prompt_ends, scan), t.skeleton,
               't' || lower(hex(t.template_key)) AS template_id, t.template_size,
               e.elicit_p
        FROM _signals_base s JOIN ({template_ids_sql("_tkeys", len(kcols))}) t
        USING (request_id) JOIN (SELECT request_id, elicit_p FROM _tkeys) e USING (request_id)
    """)
    con.execute("DROP TABLE _tkeys")
    con.execute("DROP TABLE _signals_base")
    timings["signals.templates"] = time.perf_counter() - t0
    return n
