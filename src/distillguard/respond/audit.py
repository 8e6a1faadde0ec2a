"""Append-only, hash-chained audit log of every access and policy decision (JSONL).

Each line is one JSON object with ``seq`` (0, 1, 2, ...), ``prev`` (the previous entry's hash,
64 zeros for the first) and ``hash`` = SHA-256 over the canonical JSON of the entry without
``hash``. Editing any entry breaks its hash; deleting or reordering breaks ``seq``/``prev``.
Truncating the *tail* cannot be seen from the file alone: anchor :attr:`AuditLog.head`
elsewhere (a ticket, a second store) and pass it to :func:`verify` as ``expected_head``.

One writer per file: a process-local lock serialises appends. Several gateway workers should
each write their own file (e.g. ``audit-<worker>.jsonl``); each chain verifies on its own.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from distillguard.respond._errors import AuditError

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "query", "verify"]

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends chained entries to ``path``; resumes the chain of an existing file."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._seq, self.head = 0, GENESIS
        if self.path.exists() and self.path.stat().st_size:
            last = _last_line(self.path)
            try:
                e = orjson.loads(last)
                self._seq, self.head = int(e["seq"]) + 1, str(e["hash"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise AuditError(f"{self.path}: last entry is unreadable; run "
                                 f"`distillguard respond audit verify` ({exc})") from exc
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry (``event`` plus ``fields``) and return it with its hash."""
        with self._lock:
            entry = {"seq": self._seq, "ts": fields.pop("ts", None) or _now(), "event": event,
                     **fields, "prev": self.head}
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


@dataclass
class VerifyResult:
    """``ok`` or the first broken entry (line number, 1-based) and why."""

    ok: bool
    entries: int
    head: str
    line: int | None = None
    error: str | None = None


def verify(path: str | Path, expected_head: str | None = None) -> VerifyResult:
    """Recompute the chain; report the first edit, deletion, reordering or bad line."""
    prev, n = GENESIS, 0
    try:
        fh = Path(path).open("rb")
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc}") from exc
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                return VerifyResult(False, n, prev, lineno, "blank line")
            try:
                e = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                return VerifyResult(False, n, prev, lineno, f"not JSON: {exc}")
            if not isinstance(e, dict) or "hash" not in e:
                return VerifyResult(False, n, prev, lineno, "entry has no hash")
            if e.get("seq") != n:
                return VerifyResult(False, n, prev, lineno,
                                    f"seq {e.get('seq')} where {n} expected (entry deleted "
                                    "or reordered)")
            if e.get("prev") != prev:
                return VerifyResult(False, n, prev, lineno, "prev hash does not match the "
                                    "previous entry (entry deleted, inserted or edited)")
            if _digest(e) != e["hash"]:
                return VerifyResult(False, n, prev, lineno, "hash mismatch (entry edited)")
            prev, n = e["hash"], n + 1
    if expected_head is not None and prev != expected_head:
        return VerifyResult(False, n, prev, None,
                            "chain head differs from the anchored head (tail truncated?)")
    return VerifyResult(True, n, prev)


def _ts_key(v: str | datetime | None) -> str | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        v = (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
        return v.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return v


def query(path: str | Path, *, account: str | None = None, action: str | None = None,
          event: str | None = None, since: str | datetime | None = None,
          until: str | datetime | None = None, limit: int | None = None) -> Iterator[dict]:
    """Entries matching every given filter, in log order (``since`` ≤ ts < ``until``).

    Timestamps are compared as RFC 3339 UTC strings written by :class:`AuditLog`, so ISO
    strings with ``Z`` (or datetimes) work as bounds.
    """
    lo, hi = _ts_key(since), _ts_key(until)
    n = 0
    try:
        fh = Path(path).open("rb")
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc}") from exc
    with fh:
        for raw in fh:
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
