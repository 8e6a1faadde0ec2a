"""Columnar fast path for canonical Parquet and JSONL: validate and flatten in DuckDB, not per
row.

The row path (``reader`` → ``normalize``) costs ~50-100 µs per request in Python. Here one
SQL statement per file reads the Parquet columns, flattens ``messages`` (last user turn →
prompt, first system/developer turn → system, counts, context size), parses timestamps,
applies the bounds, and marks each row *fast* when it is certainly valid and its store row
is certainly what :func:`~distillguard.ingest.normalize.normalize` would produce.

Every other row — a bad row, or merely an unusual one (a numeric-string timestamp, an
over-long prompt to reject, a ``messages`` list with a null role) — is handed to the row
path, so quarantine reasons and edge cases stay defined in one place (``normalize.py``).
The fast path only has to *recognise* the common case exactly, never to re-implement the
rules for the rest.

A file whose schema the fast path does not cover (unknown columns, which go to ``extra``;
float or boolean fields; ``messages`` as JSON text or with content-part lists) returns
``None`` and is ingested by the row path unchanged. Duplicates: the first occurrence of a
``request_id`` in file order wins, and ids already stored are skipped (as in the row path).

Canonical JSONL(.gz) is parsed by Arrow's JSON reader against an explicit schema (the known
fields, ``messages`` as a list of role/content objects) and the file is left to the row
path on anything else: an unknown top-level field, a value of another type (content parts,
a float token count), a duplicate key, a lone surrogate, invalid UTF-8. Ids, timestamps and
the string-or-integer fields are integers when the first block has them so. Before Arrow
sees a block of whole lines, numpy checks it: every line is one object (``{`` first, ``}``
last), none is longer than ``max_line_bytes``, and the rows read equal the lines, so row
*i* is line *i*. A file that fails any of this is read by the row path, whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from distillguard.ingest.normalize import RowError, normalize
from distillguard.ingest.reader import (
    _BOM,
    _CHUNK,
    LineError,
    _bounded_lines,
    _decode_nested,
    _gunzip_chunks,
    _open_bytes,
    _parse_lines,
    file_kind,
)
from distillguard.schema import KNOWN_FIELDS, STORE_COLUMNS
from distillguard.store import scalar

_STR_OR_INT = ("org_id", "api_key_id", "ip", "user_agent", "payment_fingerprint",
               "signup_channel", "country", "reasoning_effort", "status")
_ID = ("request_id", "account_id", "model")
_MIN_US, _MAX_US = 946_684_800_000_000, 4_102_444_800_000_000   # 2000-01-01, 2100-01-01
# RFC 3339 as datetime.fromisoformat reads it, narrowed to what the SQL below parses exactly.
_TS_RE = (r"^\d{4}-\d{2}-\d{2}[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
          r"([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)?$")


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _messages_ok(t: pa.DataType) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    item = t.value_type
    if not pa.types.is_struct(item):
        return False
    fields = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    return ("role" in fields and _is_str(fields["role"])
            and (fields.get("content") is None or _is_str(fields["content"])
                 or pa.types.is_null(fields["content"])))


def eligible(schema: pa.Schema) -> bool:
    """Can the fast path read a Parquet file with this schema (else: the row path)?"""
    names = set(schema.names)
    if not names <= KNOWN_FIELDS or not {*_ID, "ts"} <= names:
        return False
    for f in schema:
        t = f.type
        if pa.types.is_null(t):
            continue
        name = f.name
        if name in _ID or name in _STR_OR_INT or name in ("ts", "account_created"):
            ok = _is_str(t) or _is_int(t)
        elif name in ("prompt", "system", "response"):
            ok = _is_str(t)
        elif name in ("input_tokens", "output_tokens"):
            ok = _is_int(t)
        elif name == "messages":
            ok = _messages_ok(t)
        elif name == "tools":
            ok = pa.types.is_list(t) or pa.types.is_large_list(t)
        else:
            ok = False
        if not ok:
            return False
    return True


def _ts_sql(col: str, typ: pa.DataType) -> str:
    """UTC TIMESTAMP expression for an input column: NULL where the value does not parse
    exactly (see :func:`_in_range` for the bounds)."""
    if pa.types.is_null(typ):
        return "NULL::TIMESTAMP"
    if _is_int(typ):
        v = f"CAST({col} AS HUGEINT)"
        us = (f"(CASE WHEN abs({v}) >= 100000000000000 THEN {v} "
              f"WHEN abs({v}) >= 100000000000 THEN {v} * 1000 ELSE {v} * 1000000 END)")
        # out of range: NULL (make_timestamp would fail on it)
        return (f"(CASE WHEN {us} >= {_MIN_US} AND {us} < {_MAX_US} THEN "
                f"make_timestamp(CAST({us} AS BIGINT)) END)")
    s = col
    frac = (f"CASE WHEN substr({s}, 20, 1) = '.' THEN CAST(rpad(regexp_extract({s}, "
            f"'\\.(\\d+)', 1), 6, '0') AS BIGINT) ELSE 0 END")
    off = (f"CASE WHEN regexp_matches({s}, '[+-]\\d{{2}}:\\d{{2}}$') THEN "
           f"(CASE WHEN substr({s}, -6, 1) = '-' THEN -1 ELSE 1 END) * "
           f"(CAST(substr({s}, -5, 2) AS BIGINT) * 60 + CAST(substr({s}, -2, 2) AS BIGINT)) "
           f"ELSE 0 END")
    naive = f"TRY_CAST(substr({s}, 1, 19) AS TIMESTAMP)"
    return (f"(CASE WHEN regexp_matches({s}, '{_TS_RE}') THEN {naive} "
            f"+ to_microseconds({frac}) - to_minutes({off}) END)")


def _in_range(ts: str) -> str:
    """Parsed (not NULL) and within the years the store accepts, 2000 to 2099."""
    return f"({ts} >= TIMESTAMP '2000-01-01' AND {ts} < TIMESTAMP '2100-01-01')"


def build_sql(path: Path, schema: pa.Schema, limits: dict[str, int],
              source: str | None = None, empty_is_slow: bool = False) -> str:
    """SELECT over the file: every store column, ``line`` (1-based) and ``fast``.

    ``source``: a relation with the file's columns and a 0-based ``file_row_number``
    (default: ``read_parquet`` of ``path``). ``empty_is_slow``: a row with an empty string
    in a top-level field is left to the row path (JSONL: the Parquet row reader drops empty
    fields before ``normalize``, the JSONL one hands them on, and ``normalize`` keeps some
    and rejects others)."""
    types = {f.name: f.type for f in schema}
    max_id, short = int(limits["max_id_chars"]), int(limits["max_field_chars"])
    max_prompt, reject = int(limits["max_prompt_chars"]), int(limits["max_prompt_chars_reject"])

    def col(name: str) -> str:
        return f'"{name}"' if name in types and not pa.types.is_null(types[name]) else "NULL"

    def as_str(name: str) -> str:
        c = col(name)
        if c == "NULL":
            return "NULL::VARCHAR"
        return f"CAST({c} AS VARCHAR)" if _is_int(types[name]) else c

    conds = []
    for k in _ID:
        c = col(k)
        if _is_int(types[k]):
            conds.append(f"{c} IS NOT NULL AND length(CAST({c} AS VARCHAR)) <= {max_id}")
        else:
            # A printable ASCII character: certainly not blank to str.strip().
            conds.append(f"{c} IS NOT NULL AND regexp_matches({c}, '[!-~]') "
                         f"AND length({c}) <= {max_id}")
    # Timestamps are parsed once, in the inner SELECT (_ts, _created); the conditions read
    # the parsed values: a value is NULL exactly where its text does not parse, so "parsed
    # and in range" is the range test on it.
    ts_val = _ts_sql(col("ts"), types["ts"])
    conds.append(_in_range("_ts"))
    if col("account_created") == "NULL":
        created = "NULL::TIMESTAMP"
    else:
        c = col("account_created")
        cv = _ts_sql(c, types["account_created"])
        absent = f"{c} IS NULL" + (f" OR {c} = ''" if _is_str(types["account_created"]) else "")
        created = f"(CASE WHEN {absent} THEN NULL ELSE {cv} END)"
        conds.append(f"({absent} OR {_in_range('_created')})")

    # messages → prompt, counts, system; else the prompt field.
    m = col("messages")
    p = col("prompt")
    p_present = f"({p} IS NOT NULL AND {p} <> '')" if p != "NULL" else "false"
    has_content = m != "NULL" and "content" in {
        f.name for f in types["messages"].value_type}
    content = "coalesce(x.content, '')" if has_content else "''"
    if m != "NULL":
        msg_ok = (f"(len({m}) > 0 AND len(list_filter({m}, lambda x: x.role IS NOT NULL)) "
                  f"= len({m}))")
        last = (f"coalesce(len({m}) + 1 - list_position(list_reverse(list_transform({m}, "
                f"lambda x: x.role = 'user')), true), len({m}))")
        # One element picked, not a list of every content built to index it; out of range
        # (and content NULL) gives ''.
        pick = f"{m}[{last}].content" if has_content else "NULL"
        m_prompt = f"coalesce({pick}, '')"
        m_user = f"len(list_filter({m}, lambda x: x.role = 'user'))"
        m_chars = f"list_sum(list_transform({m}, lambda x: length({content})))"
        sys_list = f"list_filter({m}, lambda x: x.role IN ('system', 'developer'))"
        # The first system turn's content ('' when NULL); no system turn: NULL (the first
        # element of an empty list).
        m_system = f"list_transform({sys_list}, lambda x: {content})[1]"
        conds.append(f"(({m} IS NOT NULL AND {msg_ok}) OR ({m} IS NULL AND {p_present}))")
        prompt_full = f"(CASE WHEN {m} IS NOT NULL THEN {m_prompt} ELSE {p} END)"
        n_messages = f"(CASE WHEN {m} IS NOT NULL THEN len({m}) ELSE 1 END)"
        n_user = f"(CASE WHEN {m} IS NOT NULL THEN {m_user} ELSE 1 END)"
        # _prompt is the last user turn's text wherever messages is given
        ctx = f"(CASE WHEN {m} IS NOT NULL THEN {m_chars} - length(_prompt) ELSE 0 END)"
    else:
        m_system = "NULL::VARCHAR"
        conds.append(p_present)
        prompt_full, n_messages, n_user, ctx = p, "1", "1", "0"
    s_col = col("system")
    top_system = f"nullif({s_col}, '')" if s_col != "NULL" else "NULL::VARCHAR"

    t = col("tools")
    n_tools = f"coalesce(len({t}), 0)" if t != "NULL" else "0"

    def opt_str(name: str, limit: int) -> str:
        c = col(name)
        if c == "NULL":
            return "NULL::VARCHAR"
        if _is_int(types[name]):
            return f"CAST({c} AS VARCHAR)"
        return f"(CASE WHEN {c} = '' THEN NULL ELSE left({c}, {limit}) END)"

    def opt_int(name: str) -> str:
        c = col(name)
        if c == "NULL":
            return "NULL::BIGINT"
        conds.append(f"({c} IS NULL OR {c} >= 0)")
        return f"CAST({c} AS BIGINT)"

    r = col("response")
    response = (f"(CASE WHEN {r} = '' THEN NULL ELSE left({r}, {max_prompt}) END)"
                if r != "NULL" else "NULL::VARCHAR")
    store = {
        "request_id": as_str("request_id"),
        "ts": "_ts",
        "account_id": as_str("account_id"),
        "model": f"left({as_str('model')}, {short})",
        "prompt": f"left(_prompt, {max_prompt})",
        "system": f"left(coalesce({top_system}, {m_system}), {max_prompt})",
        "n_messages": f"CAST({n_messages} AS INTEGER)",
        "n_user_turns": f"CAST({n_user} AS INTEGER)",
        "context_chars": f"CAST({ctx} AS BIGINT)",
        "n_tools": f"CAST({n_tools} AS INTEGER)",
        "org_id": opt_str("org_id", short),
        "api_key_id": opt_str("api_key_id", short),
        "ip": opt_str("ip", 64),
        "user_agent": opt_str("user_agent", short),
        "payment_fingerprint": opt_str("payment_fingerprint", short),
        "signup_channel": opt_str("signup_channel", short),
        "account_created": "_created",
        "country": opt_str("country", 16),
        "reasoning_effort": opt_str("reasoning_effort", 32),
        "input_tokens": opt_int("input_tokens"),
        "output_tokens": opt_int("output_tokens"),
        "response": response,
        "status": opt_str("status", 64),
        "extra": (f"(CASE WHEN length(_prompt) > {max_prompt} THEN "
                  "'{\"_prompt_chars\":' || length(_prompt) || '}' END)"),
        "source": f"{_lit(path.name + ':')} || CAST(_line AS VARCHAR)",
    }
    assert tuple(store) == STORE_COLUMNS
    conds.append(f"length(_prompt) <= {reject}")
    if empty_is_slow:
        conds += [f'("{f.name}" IS NULL OR "{f.name}" <> \'\')' for f in schema
                  if _is_str(f.type)]
    fast = " AND ".join(f"coalesce({c}, false)" for c in conds)
    cols = ",\n  ".join(f"{v} AS {k}" for k, v in store.items())
    return f"""
SELECT {cols},
  _line AS line,
  {fast} AS fast
FROM (
  SELECT *, file_row_number + 1 AS _line, {ts_val} AS _ts, {created} AS _created,
         {prompt_full} AS _prompt
  FROM {source or f"read_parquet({_lit(str(path))}, file_row_number = true)"}
)
"""


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def ingest_parquet_fast(
    path: Path, con: duckdb.DuckDBPyConnection, limits: dict[str, int],
    bad: Callable[[int, str, Any], None],
    insert_rows: Callable[[list[dict[str, Any]]], tuple[int, int]],
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, int] | None:
    """Ingest one canonical Parquet or JSONL file; (inserted, duplicates), or None if the
    fast path does not take it (the caller then reads it row by row).

    ``bad(line, reason, raw)`` quarantines a row; ``insert_rows`` inserts row-path store rows
    (for the rows the SQL left to ``normalize``).
    """
    kind = file_kind(path)
    if kind == "jsonl":
        return ingest_jsonl_fast(path, con, limits, bad, insert_rows, on_progress)
    if kind != "parquet":
        return None
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid):
        return None
    if not eligible(schema):
        return None
    sql = build_sql(path, schema, limits)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _fast AS {sql}")
    return _store_fast(path, con, limits, bad, insert_rows, on_progress, _row_path)


def _store_fast(path: Path, con: duckdb.DuckDBPyConnection, limits: dict[str, int],
                bad: Callable[[int, str, Any], None],
                insert_rows: Callable[[list[dict[str, Any]]], tuple[int, int]],
                on_progress: Callable[[int], None] | None, row_path: Callable[..., tuple[int, int]]
                ) -> tuple[int, int]:
    """Insert the fast rows of the temp table ``_fast``; the rest go through ``row_path``."""
    try:
        cols = ", ".join(STORE_COLUMNS)
        con.execute("BEGIN TRANSACTION")
        try:
            n_fast = scalar(con, "SELECT count(*) FROM _fast WHERE fast")
            # First occurrence (file order) of each request_id not already stored; the
            # INSERT reports how many rows it added.
            inserted = scalar(con, f"""
                INSERT INTO requests
                SELECT {cols} FROM _fast f
                WHERE f.fast
                  AND f.line IN (SELECT min(line) FROM _fast WHERE fast GROUP BY request_id)
                  AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.request_id = f.request_id)
            """)
            from distillguard.ingest.core import differs_sql

            # Every fast row inserted: each id was new and once in the file, so the stored
            # row of each is the row itself (the join over a fresh file cost 7% of ingest).
            conflicts = [] if inserted == n_fast else con.execute(f"""
                SELECT f.line, r.source, {", ".join(f"f.{c}" for c in STORE_COLUMNS)}
                FROM _fast f
                JOIN requests r USING (request_id) WHERE f.fast AND {differs_sql("r", "f")}
                ORDER BY f.line""").fetchall()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        from distillguard.ingest.core import conflict_reason

        for line, stored, *row in conflicts:
            rec = dict(zip(STORE_COLUMNS, row, strict=True))
            bad(int(line), conflict_reason(rec["request_id"], stored), rec)
        dup = n_fast - inserted - len(conflicts)
        if on_progress:
            on_progress(n_fast)
        slow = [r[0] for r in con.execute(
            "SELECT line FROM _fast WHERE NOT fast ORDER BY line").fetchall()]
    finally:
        con.execute("DROP TABLE IF EXISTS _fast")
    if slow:
        ok, d = row_path(path, con, slow, limits, bad, insert_rows)
        inserted += ok
        dup += d
    return inserted, dup


def _normalise_insert(path: Path, items: Iterator[tuple[int, Any]], limits: dict[str, int],
                      bad: Callable[[int, str, Any], None],
                      insert_rows: Callable[[list[dict[str, Any]]], tuple[int, int]],
                      batch: int) -> tuple[int, int]:
    """(line, record or LineError) through ``normalize`` as the row path does: bad ones to
    ``bad``, good ones inserted ``batch`` at a time; (inserted, duplicates)."""
    ok = dup = 0
    rows: list[dict[str, Any]] = []
    for line, obj in items:
        if isinstance(obj, LineError):
            bad(line, obj.reason, obj.raw)
            continue
        try:
            rows.append(normalize(obj, f"{path.name}:{line}", limits))
        except RowError as exc:
            bad(line, str(exc), obj)
        if len(rows) >= batch:
            i, d = insert_rows(rows)
            ok, dup, rows = ok + i, dup + d, []
    if rows:
        i, d = insert_rows(rows)
        ok, dup = ok + i, dup + d
    return ok, dup


def _row_path(path: Path, con: duckdb.DuckDBPyConnection, lines: list[int],
              limits: dict[str, int], bad: Callable[[int, str, Any], None],
              insert_rows: Callable[[list[dict[str, Any]]], tuple[int, int]],
              batch: int = 50_000) -> tuple[int, int]:
    """The rows the SQL did not take, through ``normalize`` exactly as the row path does."""
    want = pa.array(sorted(lines), pa.int64())

    def picked() -> Iterator[tuple[int, Any]]:
        # Walk the file in batches and pick the wanted rows (line = 1-based row number).
        start = 0
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch):
            end = start + rb.num_rows
            sel = pc.filter(want, pc.and_(pc.greater(want, start), pc.less_equal(want, end)))
            if len(sel):
                rows = rb.take(pc.subtract(sel, start + 1)).to_pylist()
                for line, row in zip(sel.to_pylist(), rows, strict=True):
                    yield line, _decode_nested(row)
            start = end

    return _normalise_insert(path, picked(), limits, bad, insert_rows, batch)


# --------------------------------------------------------------------------- JSONL

_MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_INT_FIELDS = ("input_tokens", "output_tokens")
#: The canonical fields as the JSONL fast path reads them: strings, two integers and
#: ``messages`` (``tools``, any JSON, is inferred; ids, timestamps and the string-or-integer
#: fields may turn integer, see ``_jsonl_schema``).
JSONL_SCHEMA = pa.schema(
    [(f, _MSG if f == "messages" else pa.int64() if f in _INT_FIELDS else pa.string())
     for f in sorted(KNOWN_FIELDS - {"tools"})])


class _NotClean(Exception):
    """The file holds a line the JSONL fast path does not vouch for."""


_BLOCK = 8 << 20        # bytes of whole lines handed to Arrow's JSON parser at a time


def _raw_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        if path.suffix.lower() == ".gz":
            yield from _gunzip_chunks(fh)
        else:
            while chunk := fh.read(_CHUNK):
                yield chunk


def _check_lines(block: bytes, max_line_bytes: int) -> int:
    """Number of lines in ``block`` (whole lines, the last one's newline optional) after
    checking in numpy that each is one object (``{`` first, ``}`` last before an optional
    CR) of at most ``max_line_bytes`` bytes with its newline, as the row path measures."""
    a = np.frombuffer(block, dtype=np.uint8)
    if a.size == 0:
        return 0
    nl = np.flatnonzero(a == 10)
    if nl.size == 0 or nl[-1] != a.size - 1:
        nl = np.append(nl, a.size)          # the file's last line, without a newline
    starts = np.concatenate([[0], nl[:-1] + 1])
    if (a[starts] != 123).any() or int(np.diff(np.concatenate([[-1], nl])).max()) > \
            max_line_bytes:
        raise _NotClean("a line that is not one object, or too long")
    # Every line starts with '{', so its newline is at least one byte further on.
    b1 = a[nl - 1]
    cr = np.flatnonzero(b1 == 13)
    if ((b1 != 125) & (b1 != 13)).any() or (cr.size and (a[nl[cr] - 2] != 125).any()):
        raise _NotClean("a line that is not one object")
    return int(nl.size)


def _line_blocks(path: Path, max_line_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(block of whole lines, its line count), about ``_BLOCK`` bytes each, checked.

    The open line's length is counted chunk by chunk and nothing is joined until a chunk
    brings a newline, so a line over the limit is refused after reading about the limit,
    holding one copy of it (the row path then reads the file)."""
    parts: list[bytes] = []
    size = 0
    open_line = 0               # bytes since the last newline read
    for chunk in _raw_chunks(path):
        if not parts and size == 0 and chunk[:3] == _BOM[:len(chunk[:3])]:
            raise _NotClean("byte-order mark")     # the row path strips it: it reads it
        nl = chunk.rfind(b"\n")
        open_line = open_line + len(chunk) if nl < 0 else len(chunk) - nl - 1
        if open_line > max_line_bytes:
            raise _NotClean("a line over max_line_bytes")
        parts.append(chunk)
        size += len(chunk)
        if size < _BLOCK or nl < 0:
            continue
        buf = b"".join(parts)
        cut = len(buf) - open_line
        rest = buf[cut:]
        parts, size = [rest], len(rest)
        yield buf[:cut], _check_lines(buf[:cut], max_line_bytes)
    if parts and (buf := b"".join(parts)):
        yield buf, _check_lines(buf, max_line_bytes)


def _prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``it`` run on a thread ``depth`` items ahead: decompression (zlib releases the GIL)
    overlaps Arrow's parse and DuckDB's transform of the previous block."""
    from queue import Queue
    from threading import Event, Thread

    q: Queue = Queue(depth)
    stop = Event()
    done = object()

    def run() -> None:
        try:
            for x in it:
                if stop.is_set():
                    return
                q.put((True, x))
            q.put((True, done))
        except BaseException as exc:  # handed to the consumer
            q.put((False, exc))

    th = Thread(target=run, daemon=True)
    th.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                # The traceback holds this frame, whose ``x`` holds the exception: a cycle
                # that kept the producer's buffers (up to a line's limit) alive until GC.
                try:
                    raise x
                finally:
                    x = None
            if x is done:
                return
            yield x
    finally:
        stop.set()
        while th.is_alive():        # unblock a producer waiting on a full queue
            while not q.empty():
                q.get_nowait()
            th.join(0.05)


def _jsonl_schema(block: bytes) -> pa.Schema:
    """:data:`JSONL_SCHEMA`, with integer columns where the first block's ids, timestamps
    and string-or-integer fields are integers (as the Parquet path takes them)."""
    seen = pj.read_json(pa.py_buffer(block)).schema
    flexible = {*_ID, *_STR_OR_INT, "ts", "account_created"}
    return pa.schema([pa.field(f.name, pa.int64()) if f.name in flexible and
                      f.name in seen.names and pa.types.is_integer(seen.field(f.name).type)
                      else f for f in JSONL_SCHEMA])


_TOOLS = pa.list_(pa.null())      # only the length of ``tools`` is read (``n_tools``)


def _jsonl_batches(path: Path, max_line_bytes: int, out_schema: list[pa.Schema]
                   ) -> Iterator[pa.RecordBatch]:
    """Record batches of a clean JSONL file with its 0-based row number (= line - 1).

    Arrow parses whole-line blocks synchronously (its threads never call back into Python);
    a block that yields other than one row per line is not clean. Fields it was not told
    of are inferred, then: a top-level one not in the canonical schema makes the file not
    clean (the row path keeps it in ``extra``); ``tools`` becomes a list of nulls of the
    same lengths and ``messages`` keeps role and content (what the SQL reads, as for
    Parquet).
    """
    row = 0
    parse: pj.ParseOptions | None = None
    schema: pa.Schema | None = None
    for block, n in _prefetch(_line_blocks(path, max_line_bytes)):
        if parse is None:
            parse = pj.ParseOptions(explicit_schema=_jsonl_schema(block),
                                    unexpected_field_behavior="infer")
            schema = parse.explicit_schema.append(pa.field("tools", _TOOLS))
            out_schema.append(schema)
        t = pj.read_json(pa.py_buffer(block), read_options=pj.ReadOptions(block_size=1 << 20),
                         parse_options=parse)
        if t.num_rows != n:
            raise _NotClean("rows and lines differ")
        if not set(t.schema.names) <= KNOWN_FIELDS:
            raise _NotClean("unknown fields")
        cols = {c: t.column(c) for c in schema.names if c in t.schema.names}
        cols["messages"] = cols["messages"].cast(_MSG)     # extra message keys dropped
        tools = t.column("tools").combine_chunks() if "tools" in cols else None
        if tools is None:
            cols["tools"] = pa.nulls(n, _TOOLS)
        elif pa.types.is_list(tools.type):
            off = tools.offsets
            off = pc.subtract(off, off[0])
            cols["tools"] = pa.ListArray.from_arrays(off, pa.nulls(int(off[-1].as_py())),
                                                     mask=tools.is_null())
        elif pa.types.is_null(tools.type):
            cols["tools"] = pa.nulls(n, _TOOLS)
        else:
            raise _NotClean("tools is not a list")
        t = pa.table([cols[c] for c in schema.names], schema=schema)
        t = t.append_column("file_row_number",
                            pa.array(np.arange(row, row + n, dtype=np.int64)))
        row += n
        yield from t.to_batches()


def ingest_jsonl_fast(
    path: Path, con: duckdb.DuckDBPyConnection, limits: dict[str, int],
    bad: Callable[[int, str, Any], None],
    insert_rows: Callable[[list[dict[str, Any]]], tuple[int, int]],
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, int] | None:
    """:func:`ingest_parquet_fast` for canonical JSONL(.gz); None when the file is not clean
    (see the module docstring), so the row path reads it."""
    max_line = int(limits["max_line_bytes"])
    try:
        got: list[pa.Schema] = []
        batches = _jsonl_batches(path, max_line, got)
        first = next(batches, None)
        if first is None:
            return None                        # empty: the row path has nothing to say
        schema = got[0].append(pa.field("file_row_number", pa.int64()))
        con.register("_jsonl_in", pa.RecordBatchReader.from_batches(
            schema, chain([first], batches)))
        try:
            sql = build_sql(path, schema, limits, source="_jsonl_in", empty_is_slow=True)
            con.execute(f"CREATE OR REPLACE TEMP TABLE _fast AS {sql}")
        finally:
            con.unregister("_jsonl_in")
    except Exception:   # noqa: BLE001 - not clean (_NotClean, Arrow's parse errors, as
        # DuckDB reports them mid-scan, damaged gzip): the row path reads the file and says
        # what is wrong with which line.
        con.execute("DROP TABLE IF EXISTS _fast")
        return None
    return _store_fast(path, con, limits, bad, insert_rows, on_progress, _jsonl_row_path)


def _jsonl_row_path(path: Path, con: duckdb.DuckDBPyConnection, lines: list[int],
                    limits: dict[str, int], bad: Callable[[int, str, Any], None],
                    insert_rows: Callable[[list[dict[str, Any]]], tuple[int, int]],
                    batch: int = 50_000) -> tuple[int, int]:
    """The lines the SQL did not take, parsed and normalised exactly as the row path does."""
    want = set(lines)
    with _open_bytes(path) as fh:
        picked = ((n, line) for n, line in _bounded_lines(fh, int(limits["max_line_bytes"]))
                  if n in want)
        return _normalise_insert(path, _parse_lines(picked), limits, bad, insert_rows, batch)
