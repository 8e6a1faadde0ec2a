"""Append-only, hash-chained audit log of every access and policy decision (JSONL).

Each line is one JSON object with ``seq`` (0, 1, 2, ...), ``prev`` (the previous entry's hash,
64 zeros for the first) and ``hash`` = SHA-256 over the canonical JSON of the entry without
``hash``. Editing any entry breaks its hash; deleting or reordering breaks ``seq``/``prev``.
Truncating the *tail* cannot be seen from the file alone: anchor :attr:`AuditLog.head`
elsewhere (a ticket, a second store) and pass it to :func:`verify` as ``expected_head``.

One writer per file: a process-local lock serialises appends. Several gateway workers should
each write their own file (e.g. ``audit-<worker>.jsonl``); each chain verifies on its own.

Rotation: with ``max_bytes`` set, an append that would grow the file past it first renames
the file to ``<name>.<first seq>-<last seq>`` (12 digits each) and starts a new file whose
first entry is ``audit.rotated`` (naming the closed segment and its head); ``seq`` and
``prev`` run on across files, so :func:`verify` checks the whole chain, segment by segment,
and deleting the oldest segments (retention) leaves the rest verifiable from its first entry.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from distillguard.respond._errors import AuditError

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "query", "segments", "verify"]

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends chained entries to ``path``; resumes the chain of an existing file."""

    def __init__(self, path: str | Path, *, fsync: bool = False,
                 max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seq, self.head, self._first = 0, GENESIS, 0
        # The newest entry: in the file, else (just rotated) in the newest closed segment.
        source = self.path if self.path.exists() and self.path.stat().st_size else None
        if source is None and (older := segments(self.path)[:-1]):
            source = older[-1]
        if source is not None:
            try:
                e = orjson.loads(_last_line(source))
                self._seq, self.head = int(e["seq"]) + 1, str(e["hash"])
                self._first = (int(orjson.loads(_first_line(self.path))["seq"])
                               if source == self.path else self._seq)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise AuditError(f"{source}: an entry is unreadable; run "
                                 f"`distillguard respond audit verify` ({exc})") from exc
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _rotate(self) -> None:
        """Close the current file as a segment; the next file opens with a marker entry."""
        closed = self.path.with_name(f"{self.path.name}.{self._first:012d}-{self._seq - 1:012d}")
        os.replace(self.path, closed)
        self._first = self._seq
        self._write({"seq": self._seq, "ts": _now(), "event": "audit.rotated",
                     "closed_segment": closed.name, "prev": self.head})

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry (``event`` plus ``fields``) and return it with its hash."""
        with self._lock:
            entry = {"seq": self._seq, "ts": fields.pop("ts", None) or _now(), "event": event,
                     **fields, "prev": self.head}
            if self.max_bytes and self.path.exists() and self.path.stat().st_size and (
                    self.path.stat().st_size + len(orjson.dumps(entry, default=str)) + 80
                    > self.max_bytes):
                self._rotate()
                entry["seq"], entry["prev"] = self._seq, self.head
            return self._write(entry)

    def _write(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry["hash"] = _digest(entry)
        line = orjson.dumps(entry, default=str) + b"\n"
        try:
            # One O_APPEND write per entry (no Python file object): the entry is in the
            # OS's page cache when append returns, as before; reopened every time so a
            # rotated or replaced file is followed. fsync=True adds a disk flush.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditError(f"cannot append to audit log {self.path}: {exc}") from exc
        self._seq += 1
        self.head = entry["hash"]
        return entry


def _last_line(path: Path) -> bytes:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = min(size, 1 << 16)
        while True:
            fh.seek(size - block)
            data = fh.read(block).rstrip(b"\n")
            if b"\n" in data or block == size:
                return data.rsplit(b"\n", 1)[-1]
            block = min(size, block * 2)


def _first_line(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.readline()


def segments(path: str | Path) -> list[Path]:
    """The chain's files, oldest first: closed segments (``<name>.<first>-<last>``), then
    ``path`` itself when it exists."""
    path = Path(path)
    pat = re.compile(re.escape(path.name) + r"\.(\d{12})-(\d{12})$")
    closed = sorted((int(m.group(1)), p) for p in path.parent.glob(path.name + ".*")
                    if (m := pat.match(p.name)))
    return [p for _, p in closed] + ([path] if path.exists() else [])


@dataclass
class VerifyResult:
    """``ok`` or the first broken entry (line number, 1-based) and why."""

    ok: bool
    entries: int
    head: str
    line: int | None = None
    error: str | None = None
    file: str | None = None
    first_seq: int = 0


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if not raw.strip():
        return None, "blank line"
    try:
        e = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(e, dict) or "hash" not in e:
        return None, "entry has no hash"
    return e, None


def _link_error(e: dict[str, Any], n: int, prev: str) -> str | None:
    if e.get("seq") != n:
        return (f"seq {e.get('seq')} where {n} expected (entry or segment deleted, "
                "or reordered)")
    if e.get("prev") != prev:
        return "prev hash does not match the previous entry (entry deleted, inserted or edited)"
    if _digest(e) != e["hash"]:
        return "hash mismatch (entry edited)"
    return None


def verify(path: str | Path, expected_head: str | None = None) -> VerifyResult:
    """Recompute the chain over every segment of ``path`` (oldest first); report the first
    edit, deletion, reordering or bad line (``file`` names where).

    The chain starts at seq 0 from 64 zeros, or, when the oldest segments were deleted by a
    retention policy, at the first remaining file's ``audit.rotated`` entry (``first_seq``).
    """
    files = segments(path) or [Path(path)]
    prev, n, first_seq = GENESIS, 0, 0
    for i, f in enumerate(files):
        try:
            fh = f.open("rb")
        except OSError as exc:
            raise AuditError(f"cannot read audit log {f}: {exc}") from exc
        with fh:
            for lineno, raw in enumerate(fh, 1):
                e, error = _parse(raw)
                if e is not None and i == 0 and lineno == 1 and \
                        e.get("event") == "audit.rotated" and \
                        isinstance(e.get("seq"), int) and e["seq"] > 0:
                    # Older segments deleted: the chain is checked from here on.
                    n = first_seq = e["seq"]
                    prev = str(e.get("prev"))
                if e is not None:
                    error = _link_error(e, n, prev)
                if error is not None:
                    return VerifyResult(False, n - first_seq, prev, lineno, error, str(f),
                                        first_seq)
                prev, n = e["hash"], n + 1
    if expected_head is not None and prev != expected_head:
        return VerifyResult(False, n - first_seq, prev, None,
                            "chain head differs from the anchored head (tail truncated?)",
                            None, first_seq)
    return VerifyResult(True, n - first_seq, prev, None, None, None, first_seq)


def _ts_key(v: str | datetime | None) -> str | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        v = (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
        return v.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return v


def _lines(path: str | Path) -> Iterator[bytes]:
    """Every line of every segment of the chain, oldest first."""
    for f in segments(path) or [Path(path)]:
        try:
            fh = f.open("rb")
        except OSError as exc:
            raise AuditError(f"cannot read audit log {f}: {exc}") from exc
        with fh:
            yield from fh


def query(path: str | Path, *, account: str | None = None, action: str | None = None,
          event: str | None = None, since: str | datetime | None = None,
          until: str | datetime | None = None, limit: int | None = None) -> Iterator[dict]:
    """Entries matching every given filter, in log order (``since`` ≤ ts < ``until``).

    Timestamps are compared as RFC 3339 UTC strings written by :class:`AuditLog`, so ISO
    strings with ``Z`` (or datetimes) work as bounds.
    """
    lo, hi = _ts_key(since), _ts_key(until)
    n = 0
    for raw in _lines(path):
        try:
            e = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if account is not None and e.get("account_id") != account:
            continue
        if action is not None and e.get("action") != action \
                and action not in (e.get("actions") or ()):
            continue
        if event is not None and e.get("event") != event:
            continue
        ts = str(e.get("ts", ""))
        if (lo is not None and ts < lo) or (hi is not None and ts >= hi):
            continue
        yield e
        n += 1
        if limit is not None and n >= limit:
            return
