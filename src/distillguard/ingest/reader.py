"""Stream parsed records out of log files: JSONL (optionally gzip), JSON documents, Parquet, CSV.

Yields ``(line_number, object_or_error)`` so one bad line never stops the file: the error is
handed on for quarantine with its location. Nothing here holds a whole file in memory except a
single-document ``.json`` file (an OTLP export or a JSON array), which is one object by nature.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from distillguard.errors import IngestError

try:  # ISA-L's inflate: zlib's API, about 1.6x as fast on gzipped logs (python-isal)
    from isal import isal_zlib as _inflate
except ImportError:  # a platform without its wheel
    _inflate = zlib  # type: ignore[assignment]


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


_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"


class _Damaged(Exception):
    """A compressed stream that ends early or is corrupt; what came before it was yielded."""


def _gunzip_chunks(fh: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of a gzip file (several members allowed), ``_CHUNK`` at a time.

    Unlike ``gzip.open``, everything decompressible before a truncation or a corrupt block is
    handed out first; the damage is raised afterwards, so no intact line is lost with it.
    Output is bounded per call (a gzip bomb does not inflate in one go).
    """
    d = _inflate.decompressobj(16 + zlib.MAX_WBITS)
    started = False
    while data := fh.read(_CHUNK):
        while data:
            started = True
            try:
                out = d.decompress(data, _CHUNK)
            except _inflate.error as exc:
                raise _Damaged(f"corrupt gzip data: {exc}") from None
            if out:
                yield out
            if d.eof:                       # next member, or padding after the last one
                data = d.unused_data.lstrip(b"\x00")
                d, started = _inflate.decompressobj(16 + zlib.MAX_WBITS), False
            elif d.unconsumed_tail or len(out) == _CHUNK:
                data = d.unconsumed_tail    # b"" drains output zlib still holds
                if not data:
                    while more := d.decompress(b"", _CHUNK):
                        yield more
            else:
                data = b""
    if started and not d.eof:
        raise _Damaged("gzip stream is truncated (ends before its end-of-stream marker)")


class _GzipRaw(io.RawIOBase):
    """A raw stream over :func:`_gunzip_chunks`, so ``BufferedReader.readline`` can bound lines."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh, self._chunks, self._pending = fh, _gunzip_chunks(fh), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _open_bytes(path: Path) -> BinaryIO:
    if path.suffix.lower() == ".gz":
        return io.BufferedReader(_GzipRaw(path.open("rb")), _CHUNK)
    return path.open("rb")


def _bounded_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | LineError]]:
    """``(line_number, bytes)`` with a UTF-8 BOM dropped from line 1; a line longer than
    ``max_line_bytes`` is skipped unread (memory stays bounded) and reported as a LineError;
    a damaged compressed stream ends the file with a LineError after every intact line."""
    lineno = 0
    try:
        while True:
            line = fh.readline(max_line_bytes + 1)
            if not line:
                return
            lineno += 1
            if lineno == 1 and line.startswith(_BOM):
                line = line[3:]
            if len(line) > max_line_bytes:
                head, size = line[:2000], len(line)
                while not line.endswith(b"\n"):
                    line = fh.readline(_CHUNK)
                    if not line:
                        break
                    size += len(line)
                yield lineno, LineError(
                    f"line of {size:,} bytes exceeds the limit of {max_line_bytes:,}", head)
                continue
            yield lineno, line
    except _Damaged as exc:
        yield lineno + 1, LineError(f"{exc}; the rows before line {lineno + 1} were read", b"")


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
            yield from _iter_csv(path, max_line_bytes)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IngestError(f"{path}: cannot read: {exc}") from exc


def _iter_jsonl(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    with _open_bytes(path) as fh:
        yield from _parse_lines(_bounded_lines(fh, max_line_bytes))


def _parse_lines(lines: Iterator[tuple[int, bytes | LineError]]) -> Iterator[tuple[int, Any]]:
    for lineno, line in lines:
        if isinstance(line, LineError):
            yield lineno, line
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
    # One document (an OTLP export, a JSON array) is one object by nature: read whole.
    try:
        with _open_bytes(path) as fh:
            data = fh.read()
    except _Damaged:
        data = b""      # line mode below recovers what precedes the damage, then reports it
    if data.startswith(_BOM):
        data = data[3:]
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        items = _lenient_array(data)
        if items is not None:
            # A JSON array with a bad value (NaN, Infinity, a lone surrogate, an integer past
            # 64 bits) in some element: that element is quarantined, not the whole file.
            yield from items
            return
        # Many tools write JSON Lines under a .json name; fall back to line mode.
        del data
        yield from _iter_jsonl(path, max_line_bytes)
        return
    if isinstance(doc, list):
        yield from enumerate(doc, start=1)
    else:
        yield 1, doc


class _NotJSON:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _bad_value(v: Any) -> str | None:
    """Why ``v`` (parsed leniently) is not JSON as orjson reads it, or None."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, _NotJSON):
            return f"{x.text} is not valid JSON"
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate (invalid Unicode)"
        elif isinstance(x, bool):
            continue
        elif isinstance(x, int) and not -(2 ** 63) <= x < 2 ** 64:
            return f"integer {str(x)[:30]} does not fit 64 bits"
        elif isinstance(x, dict):
            stack += list(x.keys()) + list(x.values())
        elif isinstance(x, list):
            stack += x
    return None


def _lenient_array(data: bytes) -> Iterator[tuple[int, Any]] | None:
    """The elements of a top-level JSON array read with the standard library (which accepts
    NaN, Infinity, lone surrogates and big integers); an element holding one of those is a
    LineError. None when ``data`` is not such an array."""
    import json

    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_NotJSON)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, list):
        return None

    def items() -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(doc, start=1):
            why = _bad_value(item)
            if why is None:
                yield i, item
            else:
                raw = json.dumps(item, default=lambda o: o.text, ensure_ascii=True)[:2000]
                yield i, LineError(f"malformed JSON: {why}", raw.encode())

    return items()


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lineno = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=50_000):
            # Convert in small slices: sniffing a file's format reads only its first rows.
            for off in range(0, batch.num_rows, 1000):
                for row in batch.slice(off, 1000).to_pylist():
                    lineno += 1
                    yield lineno, _decode_nested(row)
    except pa.ArrowException as exc:
        # A damaged file: the rows before the damage were handed on; the rest is reported.
        yield lineno + 1, LineError(f"unreadable Parquet after row {lineno}: {exc}", b"")


#: Cells read as missing, as pyarrow's CSV reader (used here before) reads them.
_CSV_NULLS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"})


def _iter_csv(path: Path, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    """Rows of a CSV/TSV file with a header; quoted fields may hold newlines and quotes.

    Row by row with the standard ``csv`` module so a bad row (wrong field count, invalid
    UTF-8, an over-long line) is reported alone and the rows after it are still read; the
    line number is the physical line where the row starts.
    """
    delimiter = "\t" if ".tsv" in _suffixes(path) else ","
    oversized: dict[int, LineError] = {}
    pending: list[bytes] = []      # raw lines of the row being read, for the quarantine

    def text_lines(fh: BinaryIO) -> Iterator[str]:
        for lineno, line in _bounded_lines(fh, max_line_bytes):
            if isinstance(line, LineError):
                oversized[lineno] = line
                line = b"\n"       # keeps the line count; the row holding it is rejected
            if sum(map(len, pending)) < 2000:
                pending.append(line[:2000])
            yield line.decode("utf-8", errors="surrogateescape")

    csv.field_size_limit(max(max_line_bytes, csv.field_size_limit()))
    with _open_bytes(path) as fh:
        reader = csv.reader(text_lines(fh), delimiter=delimiter, strict=False)
        header: list[str] | None = None
        end = 0
        while True:
            start = end + 1
            pending.clear()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                end = reader.line_num
                yield start, LineError(f"CSV parse error: {exc}", b"".join(pending))
                continue
            end = reader.line_num
            spanned = [oversized.pop(n) for n in range(start, end + 1) if n in oversized]
            if header is None:
                if spanned:
                    yield start, spanned[0]
                    return
                header = row
                if not header:
                    return
                continue
            if spanned:
                yield start, spanned[0]
                continue
            if not row:
                continue
            if len(row) != len(header):
                yield start, LineError(
                    f"CSV row has {len(row)} fields, the header has {len(header)}",
                    delimiter.join(row).encode("utf-8", "replace"))
                continue
            try:
                for cell in row:
                    cell.encode("utf-8")
            except UnicodeEncodeError:
                raw = delimiter.join(row).encode("utf-8", "surrogateescape")
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield start, LineError(f"invalid UTF-8 at byte {exc.start}", raw)
                    continue
            yield start, _decode_nested({
                k: (None if v in _CSV_NULLS else v) for k, v in zip(header, row, strict=True)})


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
