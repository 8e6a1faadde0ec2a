"""Ingest log files into the store: parse, adapt, validate, quarantine, dedupe, insert.

Every batch goes in inside one transaction and is deduplicated on ``request_id`` against
what is stored, so re-ingesting a file adds nothing and a crash leaves only whole batches.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from distillguard.errors import BadRowError, IngestError
from distillguard.ingest.fast import ingest_parquet_fast
from distillguard.ingest.normalize import RowError, normalize
from distillguard.ingest.reader import LineError, expand_paths, iter_records
from distillguard.retention import PRUNED
from distillguard.schema import STORE_COLUMNS, STORE_SCHEMA
from distillguard.store import scalar


@dataclass
class FileReport:
    path: str
    format: str
    rows_ok: int = 0
    rows_bad: int = 0
    rows_dup: int = 0


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    quarantine_path: str | None = None

    @property
    def rows_ok(self) -> int:
        return sum(f.rows_ok for f in self.files)

    @property
    def rows_bad(self) -> int:
        return sum(f.rows_bad for f in self.files)

    @property
    def rows_dup(self) -> int:
        return sum(f.rows_dup for f in self.files)


class _Quarantine:
    """Bad rows go to a JSONL file (source, line, reason, raw) and to the store's table."""

    def __init__(self, path: Path | None, con: duckdb.DuckDBPyConnection) -> None:
        self.path, self.con, self._fh = path, con, None
        self.rows: list[tuple[str, int, str, str]] = []

    def add(self, source: str, line: int, reason: str, raw: Any) -> None:
        if isinstance(raw, bytes):
            raw = raw[:2000].decode("utf-8", errors="replace")
        elif not isinstance(raw, str):
            try:
                raw = orjson.dumps(raw, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
            except orjson.JSONEncodeError:      # too deep or huge ints: a bounded repr
                raw = reprlib.repr(raw)
        raw = raw[:2000]
        self.rows.append((source, line, reason, raw))
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("ab")
            self._fh.write(orjson.dumps(
                {"source": source, "line": line, "reason": reason, "raw": raw}) + b"\n")

    def flush(self) -> None:
        if self.rows:
            # Once per (source, line, reason): re-ingesting a file (a rerun after a crash)
            # does not quarantine its bad rows twice.
            self.con.executemany(
                "INSERT INTO quarantine (source, line, reason, raw) SELECT $1, $2, $3, $4 "
                "WHERE NOT EXISTS (SELECT 1 FROM quarantine WHERE source = $1 AND line = $2 "
                "AND reason = $3 AND raw = $4)", self.rows)
            self.rows = []
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()


def _sniff_format(path: Path, limits: dict[str, int]) -> str:
    from distillguard.ingest import adapters

    sample = []
    for _, obj in iter_records(path, limits["max_line_bytes"]):
        if isinstance(obj, dict):
            sample.append(obj)
        if len(sample) >= 20:
            break
    if not sample:
        return "canonical"
    return adapters.detect_format(sample)


#: A stored request and a new row with its ``request_id`` differ in content (not in source).
def differs_sql(r: str, b: str) -> str:
    """SQL: stored row ``r`` and new row ``b`` differ in content (not in source). A stored row
    whose text was pruned (``distillguard store prune``) matches its original."""
    cols = " OR ".join(f"{r}.{c} IS DISTINCT FROM {b}.{c}" for c in STORE_COLUMNS
                       if c != "source")
    return f"(coalesce({r}.prompt NOT LIKE '{PRUNED}%', true) AND ({cols}))"


_DIFFERS = differs_sql("r", "b")
_BATCH_SCHEMA = STORE_SCHEMA.append(pa.field("_ord", pa.int64()))


def conflict_reason(request_id: str, stored_source: str) -> str:
    """Quarantine reason of a row whose ``request_id`` is stored with other content."""
    return (f"request_id {request_id[:80]!r} is already stored with different content "
            f"(from {stored_source})")


def _insert_batch(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]
                  ) -> tuple[int, int, list[tuple[int, str]]]:
    """Insert rows not already stored (by request_id; the first of a batch wins).

    Returns (inserted, identical duplicates, conflicts): a conflict is a row whose request_id
    is stored with different content, as ``(index in rows, stored row's source)``; the caller
    quarantines it, so no row is dropped silently.
    """
    cols = {c: [r[c] for r in rows] for c in STORE_COLUMNS}
    cols["_ord"] = list(range(len(rows)))
    table = pa.Table.from_pydict(cols, schema=_BATCH_SCHEMA)
    con.register("_batch", table)
    try:
        con.execute("BEGIN TRANSACTION")
        # The INSERT reports how many rows it added; the rest were duplicates.
        inserted = scalar(con, """
            INSERT INTO requests
            SELECT * EXCLUDE (_ord, _rn) FROM (
                SELECT *, row_number() OVER (PARTITION BY request_id ORDER BY _ord) AS _rn
                FROM _batch
            ) b
            WHERE _rn = 1 AND NOT EXISTS (
                SELECT 1 FROM requests r WHERE r.request_id = b.request_id)
        """)
        conflicts = [(int(i), str(src)) for i, src in con.execute(f"""
            SELECT b._ord, r.source FROM _batch b JOIN requests r USING (request_id)
            WHERE {_DIFFERS} ORDER BY b._ord""").fetchall()]
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_batch")
    return inserted, len(rows) - inserted - len(conflicts), conflicts


def ingest_files(
    paths: Iterable[str | Path],
    con: duckdb.DuckDBPyConnection,
    *,
    limits: dict[str, int],
    quarantine_path: Path | None = None,
    fmt: str | None = None,
    strict: bool = False,
    batch_rows: int = 50_000,
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest each file; bad rows are quarantined (or raise ``BadRowError`` when ``strict``)."""
    from distillguard.ingest import adapters

    report = IngestReport(quarantine_path=str(quarantine_path) if quarantine_path else None)
    quarantine = _Quarantine(quarantine_path, con)
    try:
        for path in expand_paths([Path(p) for p in paths]):
            if not path.exists():
                raise IngestError(f"{path}: no such file")
            file_fmt = fmt or _sniff_format(path, limits)
            if file_fmt not in adapters.FORMATS:
                raise IngestError(f"unknown --format {file_fmt!r}; one of {adapters.FORMATS}")
            fr = FileReport(str(path), file_fmt)
            report.files.append(fr)
            rows: list[dict[str, Any]] = []

            def bad(line: int, reason: str, raw: Any, _path: Path = path,
                    _fr: FileReport = fr) -> None:
                if strict:
                    raise BadRowError(str(_path), line, reason)
                _fr.rows_bad += 1
                quarantine.add(str(_path), line, reason, raw)

            def insert(rows: list[dict[str, Any]]) -> tuple[int, int]:
                ok, dup, conflicts = _insert_batch(con, rows)
                for i, stored in conflicts:
                    src = rows[i]["source"]
                    bad(int(src.rsplit(":", 1)[1]), conflict_reason(rows[i]["request_id"],
                                                                     stored), rows[i])
                return ok, dup

            def flush(_fr: FileReport = fr, rows: list[dict[str, Any]] = rows) -> None:
                if rows:
                    ok, dup = insert(rows)
                    _fr.rows_ok += ok
                    _fr.rows_dup += dup
                    if on_progress:
                        on_progress(len(rows))
                    rows.clear()
                quarantine.flush()

            # Canonical Parquet or clean JSONL: columnar fast path (same rows and reasons);
            # else row by row.
            fast = None if strict or file_fmt != "canonical" else ingest_parquet_fast(
                path, con, limits, bad, insert, on_progress)
            if fast is not None:
                fr.rows_ok, fr.rows_dup = fast
            lines = iter(()) if fast is not None else iter_records(
                path, limits["max_line_bytes"])
            for lineno, obj in lines:
                if isinstance(obj, LineError):
                    bad(lineno, obj.reason, obj.raw)
                    continue
                try:
                    records = adapters.expand(file_fmt, obj) if file_fmt != "canonical" else [obj]
                except ValueError as exc:
                    bad(lineno, f"not a {file_fmt} record: {exc}", obj)
                    continue
                for rec in records:
                    try:
                        rows.append(normalize(rec, f"{path.name}:{lineno}", limits))
                    except RowError as exc:
                        bad(lineno, str(exc), rec)
                if len(rows) >= batch_rows:
                    flush()
            flush()
            stat = path.stat()
            con.execute(
                "INSERT INTO ingested_files (path, size, mtime, format, rows_ok, rows_bad, "
                "rows_dup) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [str(path), stat.st_size, stat.st_mtime, file_fmt, fr.rows_ok, fr.rows_bad,
                 fr.rows_dup])
    finally:
        quarantine.close()
    return report
