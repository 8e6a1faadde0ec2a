"""Online per-account state: an in-process store and a Redis store with the same interface.

State per account is a flat hash of counters (``n``, ``cot``, ``h07`` ...), a distinct-prompt
counter (exact set in process; HyperLogLog in Redis), and template-key counts. Every account
key carries a TTL refreshed on each request (``ttl_s``): state is a window "since the account
became active, until it has been idle for ttl_s". Several gateway workers share one Redis so
an account spread over workers is scored on all its traffic.

Global state: the store's start time ``t0`` and each model's first-seen time (for the 24 h
new-model pivot evidence), a per-minute request counter (throttle) and sticky suspensions.
Every Redis failure is raised as :class:`StateStoreError`; the gateway applies its fail mode.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from distillguard.respond._errors import StateStoreError

__all__ = ["AccountUpdate", "MemoryState", "RedisState", "StateStore"]


@dataclass
class AccountUpdate:
    """Increments for one request; ``sets`` are write-once values (first writer wins)."""

    incr: dict[str, int] = field(default_factory=dict)
    sets: dict[str, float] = field(default_factory=dict)
    prompt_hash: str = ""
    template_keys: tuple[str, ...] = ()
    ts: float = 0.0


class StateStore(Protocol):
    """What the online scorer needs from a state store."""

    def update(self, account_id: str, u: AccountUpdate) -> dict[str, float]:
        """Apply ``u``; return the account's counters incl. ``distinct`` and ``tpl_top``."""

    def add_float(self, account_id: str, key: str, value: float) -> None:
        """Add ``value`` to a float counter (output/input token ratios after a response)."""

    def globals(self, model: str, ts: float) -> tuple[float, dict[str, float]]:
        """(t0, {model: first_seen}) after recording ``model`` as seen at ``ts``."""

    def rate(self, account_id: str, bucket: int, ttl_s: int) -> int:
        """Increment and return the request count of ``account_id`` in time ``bucket``."""

    def suspend(self, account_id: str, info: dict[str, Any]) -> None:
        """Mark an account suspended until an operator lifts it."""

    def suspended(self, account_id: str) -> dict[str, Any] | None:
        """The suspension record, or None."""

    def unsuspend(self, account_id: str) -> None:
        """Lift a suspension."""


class MemoryState:
    """In-process store (one gateway worker, tests, replay). Thread-safe."""

    def __init__(self, ttl_s: int = 7 * 86400) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._acct: dict[str, dict[str, float]] = {}
        self._prompts: dict[str, set[str]] = defaultdict(set)
        self._tpl: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._seen: dict[str, float] = {}
        self._t0: float | None = None
        self._models: dict[str, float] = {}
        self._rate: dict[tuple[str, int], int] = {}
        self._susp: dict[str, dict[str, Any]] = {}

    def _expire(self, account_id: str, now: float) -> None:
        last = self._seen.get(account_id)
        if last is not None and now - last > self.ttl_s:
            self._acct.pop(account_id, None)
            self._prompts.pop(account_id, None)
            self._tpl.pop(account_id, None)

    def update(self, account_id: str, u: AccountUpdate) -> dict[str, float]:
        with self._lock:
            self._expire(account_id, u.ts)
            self._seen[account_id] = u.ts
            st = self._acct.setdefault(account_id, {})
            for k, v in u.incr.items():
                st[k] = st.get(k, 0) + v
            for k, v in u.sets.items():
                st.setdefault(k, v)
            if u.prompt_hash:
                self._prompts[account_id].add(u.prompt_hash)
            tpl = self._tpl[account_id]
            for key in u.template_keys:
                tpl[key] += 1
                if tpl[key] > st.get("tpl_top", 0):
                    st["tpl_top"] = tpl[key]
            out = dict(st)
            out["distinct"] = len(self._prompts[account_id])
            return out

    def add_float(self, account_id: str, key: str, value: float) -> None:
        with self._lock:
            st = self._acct.setdefault(account_id, {})
            st[key] = st.get(key, 0.0) + value

    def globals(self, model: str, ts: float) -> tuple[float, dict[str, float]]:
        with self._lock:
            if self._t0 is None:
                self._t0 = ts
            self._models.setdefault(model, ts)
            return self._t0, self._models

    def rate(self, account_id: str, bucket: int, ttl_s: int) -> int:
        with self._lock:
            key = (account_id, bucket)
            self._rate[key] = self._rate.get(key, 0) + 1
            if len(self._rate) > 100_000:    # drop old buckets; bounded memory
                self._rate = {k: v for k, v in self._rate.items() if k[1] >= bucket - 1}
            return self._rate[key]

    def suspend(self, account_id: str, info: dict[str, Any]) -> None:
        with self._lock:
            self._susp.setdefault(account_id, info)

    def suspended(self, account_id: str) -> dict[str, Any] | None:
        return self._susp.get(account_id)

    def unsuspend(self, account_id: str) -> None:
        with self._lock:
            self._susp.pop(account_id, None)


class RedisState:
    """Redis store shared by gateway workers: hashes + HyperLogLog + TTL, one pipeline each.

    ``client`` is a ``redis.Redis``; use short socket timeouts so a dead Redis turns into a
    fast :class:`StateStoreError` (and the gateway's fail mode) rather than a hung request.
    Template top counts are read-modify-write and may under-count by one under concurrent
    writers for the same account; that cannot raise a score falsely.
    """

    def __init__(self, client: Any, prefix: str = "dg:", ttl_s: int = 7 * 86400) -> None:
        self.r, self.p, self.ttl_s = client, prefix, ttl_s

    @classmethod
    def from_url(cls, url: str, prefix: str = "dg:", ttl_s: int = 7 * 86400,
                 timeout_s: float = 0.25) -> RedisState:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                      socket_connect_timeout=timeout_s, decode_responses=True)
        return cls(client, prefix, ttl_s)

    def _run(self, fn: Any) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise StateStoreError(f"state store (Redis) failed: {exc}") from exc

    def update(self, account_id: str, u: AccountUpdate) -> dict[str, float]:
        a = f"{self.p}a:{account_id}"
        hp, ht = a + ":p", a + ":t"

        def go() -> dict[str, float]:
            pipe = self.r.pipeline(transaction=False)
            for k, v in u.incr.items():
                pipe.hincrby(a, k, v)
            for k, v in u.sets.items():
                pipe.hsetnx(a, k, v)
            if u.prompt_hash:
                pipe.pfadd(hp, u.prompt_hash)
            for key in u.template_keys:
                pipe.hincrby(ht, key, 1)
            pipe.hgetall(a)
            pipe.pfcount(hp)
            for k in (a, hp, ht):
                pipe.expire(k, self.ttl_s)
            res = pipe.execute()
            nt = len(u.template_keys)
            base = len(u.incr) + len(u.sets) + (1 if u.prompt_hash else 0)
            tpl_counts = res[base:base + nt]
            st = {k: float(v) for k, v in res[base + nt].items()}
            st["distinct"] = float(res[base + nt + 1])
            top = max([int(c) for c in tpl_counts] or [0])
            if top > st.get("tpl_top", 0):
                self.r.hset(a, "tpl_top", top)
                st["tpl_top"] = top
            return st

        return self._run(go)

    def add_float(self, account_id: str, key: str, value: float) -> None:
        self._run(lambda: self.r.hincrbyfloat(f"{self.p}a:{account_id}", key, value))

    def globals(self, model: str, ts: float) -> tuple[float, dict[str, float]]:
        def go() -> tuple[float, dict[str, float]]:
            pipe = self.r.pipeline(transaction=False)
            pipe.setnx(f"{self.p}t0", ts)
            pipe.get(f"{self.p}t0")
            pipe.hsetnx(f"{self.p}models", model, ts)
            pipe.hgetall(f"{self.p}models")
            res = pipe.execute()
            return float(res[1]), {k: float(v) for k, v in res[3].items()}

        return self._run(go)

    def rate(self, account_id: str, bucket: int, ttl_s: int) -> int:
        key = f"{self.p}r:{account_id}:{bucket}"

        def go() -> int:
            pipe = self.r.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, ttl_s)
            return int(pipe.execute()[0])

        return self._run(go)

    def suspend(self, account_id: str, info: dict[str, Any]) -> None:
        self._run(lambda: self.r.set(f"{self.p}s:{account_id}", orjson.dumps(info), nx=True))

    def suspended(self, account_id: str) -> dict[str, Any] | None:
        raw = self._run(lambda: self.r.get(f"{self.p}s:{account_id}"))
        return orjson.loads(raw) if raw else None

    def unsuspend(self, account_id: str) -> None:
        self._run(lambda: self.r.delete(f"{self.p}s:{account_id}"))


def now_s() -> float:
    """Wall clock in epoch seconds (one place, so tests can reason about it)."""
    return time.time()
