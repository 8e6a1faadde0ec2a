"""Template keys and elicit_p in helper processes (Polars string work, then rensa, which
holds the GIL, then the elicitation model's numpy pass).

Plain subprocesses speaking length-prefixed pickles over pipes, not ``multiprocessing``:
spawn re-imports the caller's ``__main__`` (a script without a ``__name__`` guard would run
again in every worker), and fork is unsafe next to DuckDB's and Polars' thread pools.
One thread per worker does the blocking pipe I/O, so callers get ordinary futures.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Queue
from typing import Any

import numpy as np

_LEN = struct.Struct("<Q")
_BOOT = "from distillguard.signals._workers import _serve; _serve()"


def _send(fh: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_LEN.pack(len(data)))
    fh.write(data)
    fh.flush()


def _recv(fh: Any) -> Any:
    head = fh.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("worker closed its pipe")
    return pickle.loads(fh.read(_LEN.unpack(head)[0]))


def batch_work(prompt_ends: Any, offset: int, k: int, perms: int, bands: int,
               scan: Any = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray | None]:
    """``template_keys(...)`` of a batch and, given its scan texts, their ``elicit_p``."""
    from distillguard.signals.elicit_model import scan_probs
    from distillguard.signals.templates import template_keys

    skel, keys, missing = template_keys(prompt_ends, offset, k, perms, bands)
    return skel, keys, missing, (scan_probs(scan) if scan is not None else None)


def signal_work(prompt_ends: Any, offset: int, k: int, perms: int, bands: int, scan: Any,
                n_tools: Any, rules: tuple[list, list] | None = None
                ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """:func:`batch_work` plus the rule columns (flags, ``capability``) of the batch.

    ``rules``: (flag rules, capability rules) from ``load_rules``; the compiled set is
    kept per process, so a worker compiles it once.
    """
    from distillguard.signals.rules import rule_set

    skel, keys, missing, p = batch_work(prompt_ends, offset, k, perms, bands, scan)
    cols = {} if rules is None else rule_set(*rules).evaluate(
        scan, n_tools.to_numpy(zero_copy_only=False))
    return skel, keys, missing, p, cols


_CALLS = {"batch_work": batch_work, "signal_work": signal_work}


class TemplateKeyWorkers:
    """``submit(prompt_ends, offset, k, perms, bands, scan)`` → Future of
    ``batch_work(...)``; ``submit_call("signal_work", *args)`` → Future of
    ``signal_work(*args)``."""

    def __init__(self, n: int) -> None:
        self._idle: Queue = Queue()
        self._procs = []
        for _ in range(n):
            p = subprocess.Popen([sys.executable, "-c", _BOOT],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self._procs.append(p)
            self._idle.put(p)
        self._io = ThreadPoolExecutor(n)

    def _call(self, args: tuple) -> np.ndarray:
        p = self._idle.get()
        try:
            _send(p.stdin, args)
            out = _recv(p.stdout)
        finally:
            self._idle.put(p)
        if isinstance(out, BaseException):
            raise out
        return out

    def submit(self, prompt_ends: Any, offset: int, k: int, perms: int, bands: int,
               scan: Any = None) -> Future:
        return self.submit_call("batch_work", prompt_ends, offset, k, perms, bands, scan)

    def submit_call(self, name: str, *args: Any) -> Future:
        return self._io.submit(self._call, (name, args))

    def close(self) -> None:
        self._io.shutdown(wait=True, cancel_futures=True)
        for p in self._procs:
            try:
                p.stdin.close()
                p.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()

    def __enter__(self) -> TemplateKeyWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            args = _recv(inp)
        except EOFError:
            return
        try:
            name, call_args = args
            res: Any = _CALLS[name](*call_args)
        except Exception as exc:  # handed back to the caller
            res = exc
        _send(out, res)
