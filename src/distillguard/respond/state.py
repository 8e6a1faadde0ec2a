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
from collections.abc import Iterator
from contextlib import contextmanager
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


# One round trip for a request's account update (was a pipeline plus a separate HSET for the
# template top count, which could under-count under concurrent writers): increments,
# write-once sets, distinct-prompt HLL, template counts and their top (atomic here), then the
# counters, the distinct count and the suspension record read back, TTLs refreshed.
_UPDATE_LUA = """
local a, hp, ht = KEYS[1], KEYS[2], KEYS[3]
local i = 2
for _ = 1, tonumber(ARGV[i]) do redis.call('HINCRBY', a, ARGV[i + 1], ARGV[i + 2]); i = i + 2 end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do redis.call('HSETNX', a, ARGV[i + 1], ARGV[i + 2]); i = i + 2 end
i = i + 1
if ARGV[i] ~= '' then redis.call('PFADD', hp, ARGV[i]) end
i = i + 1
local top = 0
for _ = 1, tonumber(ARGV[i]) do
  i = i + 1
  local c = redis.call('HINCRBY', ht, ARGV[i], 1)
  if c > top then top = c end
end
if top > tonumber(redis.call('HGET', a, 'tpl_top') or '0') then
  redis.call('HSET', a, 'tpl_top', top)
end
local h = redis.call('HGETALL', a)
local d = redis.call('PFCOUNT', hp)
for _, k in ipairs({a, hp, ht}) do redis.call('EXPIRE', k, ARGV[1]) end
return {h, d, redis.call('GET', KEYS[4])}
"""


class RedisState:
    """Redis store shared by gateway workers: hashes + HyperLogLog + TTL.

    ``client`` is a ``redis.Redis``; use short socket timeouts so a dead Redis turns into a
    fast :class:`StateStoreError` (and the gateway's fail mode) rather than a hung request.

    Round trips per request are kept low: an account update is one Lua script (atomic,
    including the template top count) that also reads the account's suspension record, which
    the :meth:`suspended` call that follows in the same thread uses instead of a second GET;
    inside :meth:`batched`, :meth:`add_float` increments ride along with the thread's next
    command (or are sent at the end of the block), in order. The global ``t0`` and model
    first-seen map are write-once and cached per process for ``globals_max_age_s`` (1 s):
    a model first seen by *another* worker shows up here at most that late. Without Lua
    scripting (e.g. a proxy refusing EVAL) updates fall back to a plain pipeline.
    """

    globals_max_age_s = 1.0
    _SUSP_MAX_AGE_S = 0.05

    def __init__(self, client: Any, prefix: str = "dg:", ttl_s: int = 7 * 86400) -> None:
        self.r, self.p, self.ttl_s = client, prefix, ttl_s
        self._local = threading.local()
        self._globals: tuple[float, float, dict[str, float]] | None = None
        self._script: Any = None
        self._use_script = hasattr(client, "script_load")

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

    # ------------------------------------------------------------------ batching
    @contextmanager
    def batched(self) -> Iterator[None]:
        """Defer :meth:`add_float` in this thread to its next command or the block's end."""
        loc = self._local
        if getattr(loc, "pending", None) is not None:      # nested: the outer block flushes
            yield
            return
        loc.pending = []
        try:
            yield
        finally:
            pending, loc.pending = loc.pending, None
            if pending:
                pipe = self.r.pipeline(transaction=False)
                for key, field_, value in pending:
                    pipe.hincrbyfloat(key, field_, value)
                self._run(pipe.execute)

    def _pipe(self) -> tuple[Any, int]:
        """A pipeline starting with this thread's deferred increments, and their count."""
        pipe = self.r.pipeline(transaction=False)
        pending = getattr(self._local, "pending", None)
        if not pending:
            return pipe, 0
        for key, field_, value in pending:
            pipe.hincrbyfloat(key, field_, value)
        n = len(pending)
        pending.clear()
        return pipe, n

    # ------------------------------------------------------------------ store interface
    def update(self, account_id: str, u: AccountUpdate) -> dict[str, float]:
        a = f"{self.p}a:{account_id}"
        hp, ht = a + ":p", a + ":t"
        if self._use_script:
            try:
                return self._update_script(account_id, a, hp, ht, u)
            except StateStoreError as exc:
                msg = str(exc).lower()
                if not any(w in msg for w in ("script", "eval", "crossslot")):
                    raise
                self._use_script = False        # no scripting here: plain pipeline below

        def go() -> dict[str, float]:
            pipe, skip = self._pipe()
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
            res = pipe.execute()[skip:]
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

    def _update_script(self, account_id: str, a: str, hp: str, ht: str,
                       u: AccountUpdate) -> dict[str, float]:
        if self._script is None:   # EVALSHA by hand (a Script object in a pipeline costs a
            # SCRIPT EXISTS round trip on every execute)
            self._script = self._run(lambda: self.r.script_load(_UPDATE_LUA))
        args: list[Any] = [self.ttl_s, len(u.incr)]
        for k, v in u.incr.items():
            args += [k, v]
        args.append(len(u.sets))
        for k, v in u.sets.items():
            args += [k, v]
        args += [u.prompt_hash or "", len(u.template_keys), *u.template_keys]

        keys = [a, hp, ht, f"{self.p}s:{account_id}"]

        def go() -> list[Any]:
            import redis

            pipe, skip = self._pipe()
            pipe.evalsha(self._script, 4, *keys, *args)
            try:
                return pipe.execute()[skip]
            except redis.exceptions.NoScriptError:      # Redis restarted or flushed scripts
                self._script = self.r.script_load(_UPDATE_LUA)
                return self.r.evalsha(self._script, 4, *keys, *args)

        flat, distinct, susp = self._run(go)
        it = iter(flat)
        st = {k: float(v) for k, v in zip(it, it, strict=True)}
        st["distinct"] = float(distinct)
        stash = getattr(self._local, "susp", None)
        if stash is None or len(stash) > 8:
            stash = self._local.susp = {}
        stash[account_id] = (susp, time.monotonic())
        return st

    def add_float(self, account_id: str, key: str, value: float) -> None:
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append((f"{self.p}a:{account_id}", key, value))
            return
        self._run(lambda: self.r.hincrbyfloat(f"{self.p}a:{account_id}", key, value))

    def globals(self, model: str, ts: float) -> tuple[float, dict[str, float]]:
        c = self._globals
        if c is not None and model in c[2] and time.monotonic() - c[0] < self.globals_max_age_s:
            return c[1], dict(c[2])

        def go() -> tuple[float, dict[str, float]]:
            pipe, skip = self._pipe()
            pipe.setnx(f"{self.p}t0", ts)
            pipe.get(f"{self.p}t0")
            pipe.hsetnx(f"{self.p}models", model, ts)
            pipe.hgetall(f"{self.p}models")
            res = pipe.execute()[skip:]
            return float(res[1]), {k: float(v) for k, v in res[3].items()}

        t0, models = self._run(go)
        self._globals = (time.monotonic(), t0, models)
        return t0, dict(models)

    def rate(self, account_id: str, bucket: int, ttl_s: int) -> int:
        key = f"{self.p}r:{account_id}:{bucket}"

        def go() -> int:
            pipe, skip = self._pipe()
            pipe.incr(key)
            pipe.expire(key, ttl_s)
            return int(pipe.execute()[skip])

        return self._run(go)

    def suspend(self, account_id: str, info: dict[str, Any]) -> None:
        def go() -> None:
            pipe, _ = self._pipe()
            pipe.set(f"{self.p}s:{account_id}", orjson.dumps(info), nx=True)
            pipe.execute()

        self._run(go)

    def suspended(self, account_id: str) -> dict[str, Any] | None:
        stash = getattr(self._local, "susp", None)
        hit = stash.pop(account_id, None) if stash else None
        if hit is not None and time.monotonic() - hit[1] < self._SUSP_MAX_AGE_S:
            raw = hit[0]          # read by this thread's update of the account just now
        else:
            def go() -> Any:
                pipe, skip = self._pipe()
                pipe.get(f"{self.p}s:{account_id}")
                return pipe.execute()[skip]

            raw = self._run(go)
        return orjson.loads(raw) if raw else None

    def unsuspend(self, account_id: str) -> None:
        self._run(lambda: self.r.delete(f"{self.p}s:{account_id}"))
        stash = getattr(self._local, "susp", None)
        if stash:
            stash.pop(account_id, None)


def now_s() -> float:
    """Wall clock in epoch seconds (one place, so tests can reason about it)."""
    return time.time()
