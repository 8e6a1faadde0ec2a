"""The embedded store: one DuckDB file holding every stage's tables.

Only this module opens connections, so DuckDB errors surface as ``StoreError`` with a cause a
user can act on instead of a raw traceback.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from distillguard.errors import StoreError

_DDL = """
CREATE TABLE IF NOT EXISTS requests (
    request_id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, account_id VARCHAR NOT NULL,
    model VARCHAR NOT NULL, prompt VARCHAR, system VARCHAR, n_messages INTEGER,
    n_user_turns INTEGER, context_chars BIGINT, n_tools INTEGER, org_id VARCHAR,
    api_key_id VARCHAR, ip VARCHAR, user_agent VARCHAR, payment_fingerprint VARCHAR,
    signup_channel VARCHAR, account_created TIMESTAMP, country VARCHAR,
    reasoning_effort VARCHAR, input_tokens BIGINT, output_tokens BIGINT, response VARCHAR,
    status VARCHAR, extra VARCHAR, source VARCHAR
);
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR, line BIGINT, reason VARCHAR, raw VARCHAR, added_at TIMESTAMP DEFAULT now()
);
CREATE TABLE IF NOT EXISTS ingested_files (
    path VARCHAR, size BIGINT, mtime DOUBLE, format VARCHAR, rows_ok BIGINT,
    rows_bad BIGINT, rows_dup BIGINT, added_at TIMESTAMP DEFAULT now()
);
"""


def connect(path: str | Path | None = None, *, threads: int | None = None,
            memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the store; ``None`` or ``":memory:"`` gives an in-memory one."""
    target = ":memory:" if path in (None, ":memory:") else str(path)
    # Resource knobs for big runs (out-of-core): DuckDB spills past memory_limit.
    threads = threads or int(os.environ.get("DISTILLGUARD_THREADS", 0) or 0) or None
    memory_limit = memory_limit or os.environ.get("DISTILLGUARD_MEMORY_LIMIT") or None
    temp_dir = os.environ.get("DISTILLGUARD_TEMP_DIR")
    try:
        con = duckdb.connect(target)
        if temp_dir:
            con.execute("SET temp_directory = ?", [temp_dir])
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            con.execute("SET memory_limit = ?", [memory_limit])
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_progress_bar = false")  # we draw our own
        con.execute(_DDL)
    except duckdb.Error as exc:
        raise StoreError(f"cannot open store {target}: {exc}") from exc
    return con


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(scalar(
        con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))


def table_columns(con: duckdb.DuckDBPyConnection, name: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]
    ).fetchall()
    return {r[0] for r in rows}


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """First column of the first row; fetches everything so the connection is free again."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, table: pa.Table) -> Iterator[str]:
    """Register an Arrow table on ``con`` under a fresh name; unregister on exit."""
    name = f"_dg_tmp_{uuid.uuid4().hex[:12]}"
    con.register(name, table)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            con.unregister(name)


#: ``query(sql, tables)``: run an aggregate text over the per-request tables (``requests``,
#: ``signals``) with its ``{name}`` placeholders bound to the small helper Arrow tables in
#: ``tables``; the result as Arrow. Readers that only need aggregates take one of these, so
#: the Spark engine can run the same text on its executors (``engines.spark``) and only the
#: small result reaches the driver.
Query = Callable[[str, dict[str, pa.Table]], pa.Table]


def duckdb_query(con: duckdb.DuckDBPyConnection) -> Query:
    """:data:`Query` over a DuckDB store that holds ``requests`` and ``signals``."""

    def run(sql: str, tables: dict[str, pa.Table]) -> pa.Table:
        with contextlib.ExitStack() as stack:
            names = {k: stack.enter_context(registered(con, t)) for k, t in tables.items()}
            return con.sql(sql.format(**names)).to_arrow_table()

    return run
