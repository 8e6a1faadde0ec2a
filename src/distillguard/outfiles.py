"""Output files replaced whole: a reader, or a run killed mid-write, never sees half a file.

``distillguard detect`` rewrites accounts.csv, campaigns.json, report.html, groups.parquet
and calibration.json on every run, and other programs read them (a SIEM import, the gateway
loading the batch context, the console). Each is written to a temporary file beside it and
renamed over it (``os.replace``, atomic on one file system). No fsync: the crash this guards
against is the process's (SIGKILL, OOM), not the machine's; the store holds the results
either way and the next run writes the files again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["remove_stale", "replacing"]

_SUFFIX = ".partial"


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error it
    replaces ``path``, otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale(folder: str | Path, names: tuple[str, ...]) -> int:
    """Remove the temporary files a killed run left beside ``names`` in ``folder``; returns
    how many."""
    n = 0
    for name in names:
        for p in Path(folder).glob(f".{name}.*{_SUFFIX}"):
            p.unlink(missing_ok=True)
            n += 1
    return n
