"""Stream parsed records out of log files: JSONL (optionally gzip), JSON documents, Parquet, CSV.

Yields ``(line_number, object_or_error)`` so one bad line never stops the file: the error is
handed on for quarantine with its location. Nothing here holds a whole file in memory except a
single-document ``.json`` file (an OTLP export or a JSON array), which is one object by nature.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from distillguard.errors import IngestError


class LineError:
    """A line that could not be parsed; ``raw`` is kept (bounded) for the quarantine file."""

    __slots__ = ("reason", "raw")

    def __init__(self, reason: str, raw: bytes | str) -> None:
        self.reason, self.raw = reason, raw


def _suffixes(path: Path) -> list[str]:
    return [s.lower() for s in path.suffixes[-2:]]


def file_kind(path: Path) -> str:
    """jsonl | json | parquet | csv, from the name (``.gz`` allowed on text formats)."""
    sfx = [s for s in _suffixes(path) if s != ".gz"]
    last = sfx[-1] if sfx else ""
    if last in (".jsonl", ".ndjson"):
        return "jsonl"
    if last == ".json":
        return "json"
    if last in (".parquet", ".pq"):
        return "parquet"
    if last in (".csv", ".tsv"):
        return "csv"
    raise IngestError(f"{path}: unknown file type (expected .jsonl, .json, .parquet or .csv)")


def _open_bytes(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


_LOG_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv", ".tsv")


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for the log files directly inside it, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and any(
                f.name.lower().endswith(s) or f.name.lower().endswith(s + ".gz")
                for s in _LOG_SUFFIXES))
        else:
            out.append(p)
    return out


def iter_records(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    kind = file_kind(path)
    try:
        if kind == "jsonl":
            yield from _iter_jsonl(path, max_line_bytes)
        elif kind == "json":
            yield from _iter_json_document(path, max_line_bytes)
        elif kind == "parquet":
            yield from _iter_parquet(path)
        else:
            yield from _iter_csv(path)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IngestError(f"{path}: cannot read: {exc}") from exc


def _iter_jsonl(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    with _open_bytes(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if len(line) > max_line_bytes:
                yield lineno, LineError(
                    f"line of {len(line):,} bytes exceeds the limit of {max_line_bytes:,}",
                    line[:2000])
                continue
            if not line.strip():
                continue
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, LineError(f"invalid UTF-8 at byte {exc.start}", line)
                continue
            try:
                yield lineno, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield lineno, LineError(f"malformed JSON: {exc}", line)


def _iter_json_document(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    with _open_bytes(path) as fh:
        data = fh.read()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        # Many tools write JSON Lines under a .json name; fall back to line mode.
        yield from _iter_jsonl(path, max_line_bytes)
        return
    if isinstance(doc, list):
        yield from enumerate(doc, start=1)
    else:
        yield 1, doc


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    lineno = 0
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=50_000):
        # Convert in small slices: sniffing a file's format reads only its first rows.
        for off in range(0, batch.num_rows, 1000):
            for row in batch.slice(off, 1000).to_pylist():
                lineno += 1
                yield lineno, _decode_nested(row)


def _iter_csv(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    delimiter = "\t" if ".tsv" in _suffixes(path) else ","
    # All columns as strings: types are decided by normalize(), with row-level errors.
    opts = pcsv.ConvertOptions(strings_can_be_null=True)
    try:
        reader = pcsv.open_csv(
            path, parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            read_options=pcsv.ReadOptions(block_size=8 << 20), convert_options=opts)
        names = reader.schema.names
        reader = pcsv.open_csv(
            path, parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            read_options=pcsv.ReadOptions(block_size=8 << 20),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True))
    except pa.ArrowInvalid as exc:
        raise IngestError(f"{path}: not a readable CSV: {exc}") from exc
    lineno = 1  # header
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            yield lineno + 1, LineError(f"CSV parse error: {exc}", b"")
            break
        for row in batch.to_pylist():
            lineno += 1
            yield lineno, _decode_nested(row)


def _decode_nested(row: dict[str, Any]) -> dict[str, Any]:
    """CSV/Parquet carry nested fields (messages, tools) as JSON text; turn them back."""
    for key in ("messages", "tools"):
        v = row.get(key)
        if isinstance(v, str) and v[:1] in "[{":
            try:
                row[key] = orjson.loads(v)
            except orjson.JSONDecodeError:
                pass  # normalize() rejects it with a clear reason
    for key in ("input_tokens", "output_tokens"):
        if row.get(key) == "":
            row[key] = None
    return {k: v for k, v in row.items() if v is not None and v != ""}
