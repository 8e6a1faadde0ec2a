"""Signals: per-request evidence computed from the ``requests`` table into ``signals``."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from distillguard.config import Config
from distillguard.retention import overlay_retained_signals
from distillguard.signals import template_counts
from distillguard.signals._workers import TemplateKeyWorkers, batch_work, signal_work
from distillguard.signals.elicit_model import scan_probs
from distillguard.signals.rules import FLAG_NAMES, load_rules, rule_set
from distillguard.signals.sql import signals_base_sql, signals_sql
from distillguard.signals.templates import template_ids_sql
from distillguard.store import scalar, table_exists

__all__ = ["FLAG_NAMES", "compute_signals", "enable_incremental", "load_rules",
           "signals_sql"]


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
    # Sub-stage wall times for the scaling benchmark: ``signals.setup`` (rules loaded, rows
    # counted), ``signals.keys`` (scan texts read and every batch's rules, template keys
    # and elicit_p), ``signals.templates`` (the template choice). Before 2026-12-07 the scan
    # texts were written to a table first, timed as ``signals.rules``.
    timings = timings if timings is not None else {}
    if table_exists(con, _CACHE):
        n = _compute_incremental(con, cfg, on_progress, batch_rows, timings,
                                 parallel_min_rows)
        overlay_retained_signals(con)     # pruned requests keep their signals
        return n
    t0 = time.perf_counter()
    flags, caps = load_rules(cfg)
    rules = (flags, caps)
    # The scan texts and prompt ends stream from ``requests`` to the batch step, computed as
    # the reader pulls them (beside the workers), instead of being written to a table first.
    base = signals_base_sql(cfg)
    n = scalar(con, "SELECT count(*) FROM requests")
    perms = int(cfg["signals"]["minhash_perms"])
    bands = int(cfg["signals"]["lsh_bands"])
    k = int(cfg["signals"]["skeleton_words"])
    kcols = [f"k{b}" for b in range(bands + 2)]      # MinHash bands, then head and tail keys
    rcols = [*(r.name for r in flags), "capability"]
    # A temporary table: no WAL write per batch; DuckDB spills it past its memory limit.
    con.execute("CREATE OR REPLACE TEMP TABLE _tkeys (request_id VARCHAR, skeleton VARCHAR, "
                + ", ".join(f"{c} BIGINT" for c in kcols) + ", elicit_p DOUBLE, "
                + ", ".join(f"{r.name} BOOLEAN" for r in flags) + ", capability VARCHAR)")

    def write(ids: pa.Array, skel: pa.Array, keys: np.ndarray, p: np.ndarray,
              rule_cols: dict[str, pa.Array]) -> None:
        kt = np.ascontiguousarray(keys.T).view(np.int64)    # one copy, then zero-copy rows
        cols = {c: pa.array(kt[i]) for i, c in enumerate(kcols)}
        con.register("_tkeys_in", pa.table({"request_id": ids, "skeleton": skel, **cols,
                                            "elicit_p": pa.array(p, pa.float64()),
                                            **{c: rule_cols[c] for c in rcols}}))
        try:
            con.execute("INSERT INTO _tkeys SELECT * FROM _tkeys_in")
        finally:
            con.unregister("_tkeys_in")

    timings["signals.setup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # The text work (skeletons in Polars, MinHash in rensa, which holds the GIL, the rule
    # set) runs in worker processes on big inputs, while this one reads batches and
    # inserts results.
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
            skel, keys, _, p, rule_cols = res.result() if pool is not None else res
            write(ids, skel, keys, p.result() if isinstance(p, Future) else p, rule_cols)

    # The read streams on its own cursor: this connection inserts while it is open.
    cur = con.cursor()
    try:
        reader = cur.sql(f"SELECT request_id, prompt_ends, scan, n_tools FROM ({base})"
                         ).to_arrow_reader(batch_rows)
        for batch in reader:
            scan, n_tools = batch.column("scan"), batch.column("n_tools")
            args = (batch.column("prompt_ends"), done, k, perms, bands)
            if pool is not None:
                res = pool.submit_call("signal_work", *args, scan, n_tools, rules)
            else:
                fut = side.submit(scan_probs, scan)
                res = (*batch_work(*args)[:3], fut, rule_set(*rules).evaluate(
                    scan, n_tools.to_numpy(zero_copy_only=False)))
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
        SELECT s.request_id, s.account_id, s.ts, s.model, {", ".join(f"t.{c}" for c in rcols)},
               t.skeleton, 't' || lower(hex(t.template_key)) AS template_id, t.template_size,
               t.elicit_p
        FROM requests s
        JOIN ({template_ids_sql("_tkeys", len(kcols), [*rcols, "elicit_p"])}) t
        USING (request_id)
    """)
    con.execute("DROP TABLE _tkeys")
    overlay_retained_signals(con)         # pruned requests keep their signals
    timings["signals.templates"] = time.perf_counter() - t0
    return n


# ------------------------------------------------------------------ incremental path
#: Per-request results kept between runs of a store with incremental signals on.
_CACHE, _CACHE_META = "_signals_cache", "_signals_cache_meta"
#: Optional elicit_p values a caller already has (see enable_incremental).
_HINT = "_signals_elicit_hint"


def enable_incremental(con: duckdb.DuckDBPyConnection) -> None:
    """Keep per-request signals in the store between runs of :func:`compute_signals`.

    Once on, each run computes the rules, template keys and ``elicit_p`` only for requests
    it has not seen (by ``request_id``) and rebuilds ``signals`` from the kept rows: the
    template ids (largest bucket over all requests) are recomputed in SQL. The result
    equals a full run (``tests/test_online_batch.py``). Made for stores that grow and are
    re-analysed on a schedule (``respond.online.BatchRefresh``); a change of the signal
    config (rules, skeleton, MinHash) clears the kept rows.

    A caller that already scored requests with the elicitation model (the online replay)
    may leave their values in a table ``_signals_elicit_hint (request_id, elicit_p)``: the
    next run takes ``elicit_p`` from it for those requests (same model, same scan text, so
    the same values) and empties it.
    """
    con.execute(f"CREATE TABLE IF NOT EXISTS {_CACHE_META} (fingerprint VARCHAR, "
                "next_offset BIGINT)")
    con.execute(f"CREATE TABLE IF NOT EXISTS {_CACHE} (request_id VARCHAR)")


def _fingerprint(cfg: Config) -> str:
    import hashlib

    from distillguard.signals.elicit_model import shipped_model_bytes

    s = cfg["signals"]
    text = "\n".join([signals_sql(cfg), str(s["minhash_perms"]), str(s["lsh_bands"]),
                      str(s["skeleton_words"])])
    # The cached elicit_p is the shipped model's: a retrained model invalidates it here
    # too, not only through the detect run's fingerprint (incremental.fingerprint).
    return hashlib.sha256(text.encode() + shipped_model_bytes()).hexdigest()[:16]


def _compute_incremental(con: duckdb.DuckDBPyConnection, cfg: Config,
                         on_progress: Callable[[int], None] | None, batch_rows: int,
                         timings: dict[str, float], parallel_min_rows: int = 400_000) -> int:
    """:func:`compute_signals` for requests not yet in the cache, then ``signals`` from it."""
    t0 = time.perf_counter()
    perms = int(cfg["signals"]["minhash_perms"])
    bands = int(cfg["signals"]["lsh_bands"])
    k = int(cfg["signals"]["skeleton_words"])
    kcols = [f"k{b}" for b in range(bands + 2)]
    fp = _fingerprint(cfg)
    meta = con.execute(f"SELECT fingerprint, next_offset FROM {_CACHE_META}").fetchall()
    if not meta or meta[0][0] != fp:
        con.execute(f"DELETE FROM {_CACHE_META}")
        con.execute(f"INSERT INTO {_CACHE_META} VALUES (?, 0)", [fp])
        con.execute(f"DROP TABLE IF EXISTS {_CACHE}")
        meta = [(fp, 0)]
    offset = int(meta[0][1])
    fresh = not scalar(con, "SELECT count(*) FROM information_schema.columns "
                            f"WHERE table_name = '{_CACHE}' AND column_name = 'elicit_p'")
    # The signal query over the requests the cache does not hold (a CTE named ``requests``
    # shadows the table inside signals_sql). Only their ids are kept, since the cache grows
    # while the batches stream (in a table: the reading cursor would not see a temporary
    # one); scan texts and prompt ends are computed as the reader pulls them.
    if fresh:
        new = "SELECT * FROM main.requests"
    else:
        con.execute("CREATE OR REPLACE TABLE _sig_todo AS SELECT request_id FROM "
                    f"main.requests ANTI JOIN {_CACHE} USING (request_id)")
        new = "SELECT * FROM main.requests SEMI JOIN _sig_todo USING (request_id)"
    base = f"WITH requests AS ({new}) {signals_base_sql(cfg)}"
    n = scalar(con, "SELECT count(*) FROM " + ("main.requests" if fresh else "_sig_todo"))
    flags, caps = load_rules(cfg)
    rules = rule_set(flags, caps)
    if fresh:
        # The columns signals_sql gives (rules after model), then the batch step's.
        con.execute(f"DROP TABLE IF EXISTS {_CACHE}")
        con.execute(f"CREATE TABLE {_CACHE} AS SELECT request_id, account_id, ts, model, "
                    + "".join(f"NULL::BOOLEAN AS {r.name}, " for r in flags)
                    + "NULL::VARCHAR AS capability, ''::VARCHAR AS skeleton, "
                    + ", ".join(f"0::BIGINT AS {c}" for c in kcols)
                    + ", 0.0::DOUBLE AS elicit_p FROM main.requests LIMIT 0")
    timings["signals.setup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hinted = table_exists(con, _HINT)
    # A store's first run (or many new requests) uses the worker processes as the full path
    # does; the replay's hinted batches are small and stay inline.
    workers = min(2, os.cpu_count() or 1) if n >= parallel_min_rows and not hinted else 0
    pool = TemplateKeyWorkers(workers) if workers else None
    pending: deque = deque()      # (batch, result or its future), in input order

    def write(batch: pa.RecordBatch, res: tuple) -> None:
        skel, keys, _, p, rule_cols = res
        kt = np.ascontiguousarray(keys.T).view(np.int64)
        tab = pa.table({**{c: batch.column(c) for c in ("request_id", "account_id", "ts",
                                                         "model")},
                        **rule_cols, "skeleton": skel,
                        **{c: pa.array(kt[i]) for i, c in enumerate(kcols)},
                        "elicit_p": pa.array(p, pa.float64())})
        con.register("_sig_new", tab)
        try:
            con.execute(f"INSERT INTO {_CACHE} BY NAME SELECT * FROM _sig_new")
        finally:
            con.unregister("_sig_new")

    def drain(limit: int) -> None:
        while len(pending) > limit:
            batch, res = pending.popleft()
            write(batch, res.result() if isinstance(res, Future) else res)

    cur = con.cursor()
    try:
        q = (f"SELECT b.*, h.elicit_p AS _hint FROM ({base}) b LEFT JOIN {_HINT} h "
             "USING (request_id)" if hinted else f"SELECT * FROM ({base})")
        reader = cur.sql(q).to_arrow_reader(batch_rows)
        for batch in reader:
            if hinted:
                hint = batch.column("_hint")
                batch = batch.drop_columns(["_hint"])
                skel, keys, _, _ = batch_work(batch.column("prompt_ends"), offset, k, perms,
                                              bands)
                p = hint.to_numpy(zero_copy_only=False).astype(np.float64)
                todo = np.flatnonzero(np.isnan(p))
                if todo.size:
                    p[todo] = scan_probs(batch.column("scan").take(pa.array(todo)))
                res: Any = (skel, keys, None, p, rules.evaluate(
                    batch.column("scan"), batch.column("n_tools").to_numpy(
                        zero_copy_only=False)))
            elif pool is not None:
                res = pool.submit_call("signal_work", batch.column("prompt_ends"), offset, k,
                                       perms, bands, batch.column("scan"),
                                       batch.column("n_tools"), (flags, caps))
            else:
                res = signal_work(batch.column("prompt_ends"), offset, k, perms, bands,
                                  batch.column("scan"), batch.column("n_tools"),
                                  (flags, caps))
            pending.append((batch, res))
            drain(2 * workers)
            offset += batch.num_rows
            if on_progress:
                on_progress(batch.num_rows)
        drain(0)
    finally:
        cur.close()
        if pool is not None:
            pool.close()
    con.execute(f"UPDATE {_CACHE_META} SET next_offset = ?", [offset])
    if table_exists(con, _HINT):
        con.execute(f"DELETE FROM {_HINT}")
    con.execute("DROP TABLE IF EXISTS _sig_todo")
    timings["signals.keys"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if fresh:
        template_counts.drop_state(con)
    if template_counts.ready(con, len(kcols)):      # kept buckets: redo what new ones touch
        template_counts.update(con, _CACHE, len(kcols))
        timings["signals.templates"] = time.perf_counter() - t0
        return n
    con.execute(f"CREATE OR REPLACE TEMP VIEW _tkeys_inc AS SELECT request_id, skeleton, "
                f"{', '.join(kcols)} FROM {_CACHE} SEMI JOIN requests USING (request_id)")
    con.execute(f"""
        CREATE OR REPLACE TABLE signals AS
        SELECT c.* EXCLUDE (skeleton, {', '.join(kcols)}, elicit_p), t.skeleton,
               't' || lower(hex(t.template_key)) AS template_id, t.template_size, c.elicit_p
        FROM {_CACHE} c JOIN ({template_ids_sql("_tkeys_inc", len(kcols))}) t
        USING (request_id)
    """)
    if template_counts.enabled(con):
        template_counts.build_state(con, "_tkeys_inc", len(kcols))
    con.execute("DROP VIEW _tkeys_inc")
    timings["signals.templates"] = time.perf_counter() - t0
    return n
