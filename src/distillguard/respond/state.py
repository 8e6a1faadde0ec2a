"""Online per-account state: an in-process store and a Redis store with the same interface.

State per account is a flat hash of counters (``n``, ``cot``, ``h07`` ...), a distinct-prompt
counter (exact set in process; HyperLogLog in Redis), named distinct sets (``d:<name>`` in
the hash holds each one's size: per-flag prompts, re-run keys, network prefixes) and
template-key counts. Every account key carries a TTL refreshed on each request (``ttl_s``):
state is a window "since the account became active, until it has been idle for ttl_s".
Several gateway workers share one Redis so an account spread over workers is scored on all
its traffic.

Cross-account state: per (kind, key) — an address, a payment fingerprint, a system-prompt
key — the set of accounts seen with it (HyperLogLog in Redis), with its own idle TTL. An
update adding the account to such a set gets its size back (``x:<kind>``) and counts the
request as shared (``xs:<kind>``) when it is 2 or more; for the kinds in ``cross_max`` the
account remembers its keys and ``xm:<kind>`` is the largest set among them, re-read on
every update.

Global state: the store's start time ``t0`` and each model's first-seen time (for the 24 h
new-model pivot evidence), a per-minute request counter (throttle) and sticky suspensions.
Every Redis failure is raised as :class:`StateStoreError`; the gateway applies its fail mode.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from distillguard.respond._errors import StateStoreError

__all__ = ["AccountUpdate", "FallbackState", "MemoryState", "RedisState", "StateStore"]

log = logging.getLogger("distillguard.state")


@dataclass(slots=True)
class AccountUpdate:
    """Changes for one request.

    ``incr``: counter increments; ``sets``: write-once values (first writer wins);
    ``maxs``: values kept at their maximum; ``prompt_hash``: member of the distinct-prompt
    set (``distinct``); ``distinct``: set name → member of that named distinct set (its
    size is ``d:<name>``); ``cross``: kind → key of a cross-account set the account joins
    (``x:<kind>`` its size now, ``xs:<kind>`` requests that found it shared);
    ``cross_max``: kinds whose largest set among the account's keys is read into
    ``xm:<kind>``; ``hist``: (name, bin) counted in the account's histogram ``name``;
    ``cross_hist``: kinds whose set size is counted in histogram ``x:<kind>`` (bin
    ``c<size>``). A histogram touched by the update is returned under ``\x1fh:<name>``.
    ``hcl``: a counter (this request's hour) whose ``c ln c`` growth after the increments,
    ``c ln c - (c - 1) ln (c - 1)``, is added to the float ``hcl`` (the running sum behind
    the hour entropy; in the update so that it costs no second write).
    """

    incr: dict[str, int] = field(default_factory=dict)
    sets: dict[str, float] = field(default_factory=dict)
    prompt_hash: str = ""
    template_keys: tuple[str, ...] = ()
    ts: float = 0.0
    maxs: dict[str, float] = field(default_factory=dict)
    distinct: dict[str, str] = field(default_factory=dict)
    cross: dict[str, str] = field(default_factory=dict)
    cross_max: tuple[str, ...] = ()
    hist: tuple[str, str] | None = None
    cross_hist: tuple[str, ...] = ()
    hcl: str = ""


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


class _Acct:
    """One account's in-process state."""

    __slots__ = ("st", "prompts", "sets", "tpl", "xkeys", "xgen", "hists", "seen")

    def __init__(self) -> None:
        self.st: dict[str, float] = {}
        self.prompts: set[str] = set()
        self.sets: dict[str, set[str]] = {}
        self.tpl: dict[str, int] = {}
        self.xkeys: dict[str, set[str]] = {}
        self.xgen: dict[str, int] = {}
        self.hists: dict[str, dict[str, int]] = {}
        self.seen: float | None = None


class MemoryState:
    """In-process store (one gateway worker, tests, replay). Thread-safe.

    :meth:`update` returns the account's live counter dict (read it, do not keep it across
    updates of the same account).
    """

    def __init__(self, ttl_s: int = 7 * 86400) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._acct: dict[str, _Acct] = {}
        self._cross: dict[tuple[str, str], list[Any]] = {}     # (kind, key) → [accounts, seen]
        # bumped whenever a set of the kind gains an account: an account re-reads its
        # largest set (xm:<kind>) only when that happened since its last read
        self._xgen: dict[str, int] = {}
        self._t0: float | None = None
        self._models: dict[str, float] = {}
        self._rate: dict[tuple[str, int], int] = {}
        self._susp: dict[str, dict[str, Any]] = {}

    def _cross_set(self, kind: str, key: str, now: float) -> set[str] | None:
        x = self._cross.get((kind, key))
        if x is None:
            return None
        if now - x[1] > self.ttl_s:          # idle longer than the TTL: gone, as in Redis
            del self._cross[(kind, key)]
            return None
        return x[0]

    def update(self, account_id: str, u: AccountUpdate) -> dict[str, float]:
        ts = u.ts
        with self._lock:
            rec = self._acct.get(account_id)
            if rec is None or (rec.seen is not None and ts - rec.seen > self.ttl_s):
                rec = self._acct[account_id] = _Acct()
            rec.seen = ts
            st = rec.st
            for k, v in u.incr.items():
                st[k] = st.get(k, 0) + v
            for k, v in u.sets.items():
                if k not in st:
                    st[k] = v
            for k, v in u.maxs.items():
                if v is not None and (k not in st or v > st[k]):
                    st[k] = v
            if u.hcl:
                c = st.get(u.hcl, 0)
                if c > 1:
                    st["hcl"] = st.get("hcl", 0.0) + c * math.log(c) - (c - 1) * math.log(c - 1)
            if u.prompt_hash:
                rec.prompts.add(u.prompt_hash)
            st["distinct"] = len(rec.prompts)
            for name, member in u.distinct.items():
                ds = rec.sets.get(name)
                if ds is None:
                    ds = rec.sets[name] = set()
                ds.add(member)
                st["d:" + name] = len(ds)
            if u.template_keys:
                tpl = rec.tpl
                for key in u.template_keys:
                    c = tpl[key] = tpl.get(key, 0) + 1
                    if c > st.get("tpl_top", 0):
                        st["tpl_top"] = c
            for kind, key in u.cross.items():
                x = self._cross.get((kind, key))
                if x is None or ts - x[1] > self.ttl_s:
                    x = self._cross[(kind, key)] = [set(), ts]
                x[1] = ts
                if account_id not in x[0]:
                    x[0].add(account_id)
                    self._xgen[kind] = self._xgen.get(kind, 0) + 1
                c = len(x[0])
                st["x:" + kind] = c
                if c >= 2:
                    st["xs:" + kind] = st.get("xs:" + kind, 0) + 1
                if kind in u.cross_max:
                    ks = rec.xkeys.get(kind)
                    if ks is None:
                        ks = rec.xkeys[kind] = set()
                    ks.add(key)
                if kind in u.cross_hist:
                    self._hist(rec, st, "x:" + kind, f"c{c}")
            if u.hist is not None:
                self._hist(rec, st, *u.hist)
            for kind in u.cross_max:
                ks = rec.xkeys.get(kind)
                gen = self._xgen.get(kind, 0)
                if ks and rec.xgen.get(kind) != gen:
                    rec.xgen[kind] = gen
                    best = 0
                    for key in ks:
                        xs = self._cross_set(kind, key, ts)
                        if xs is not None and len(xs) > best:
                            best = len(xs)
                    st["xm:" + kind] = best
            return st

    @staticmethod
    def _hist(rec: _Acct, st: dict[str, Any], name: str, key: str) -> None:
        h = rec.hists.get(name)
        if h is None:
            h = rec.hists[name] = {}
            st["\x1fh:" + name] = h            # live: later updates show in it
        h[key] = h.get(key, 0) + 1

    def add_float(self, account_id: str, key: str, value: float) -> None:
        with self._lock:
            rec = self._acct.get(account_id)
            if rec is None:
                rec = self._acct[account_id] = _Acct()
            rec.st[key] = rec.st.get(key, 0.0) + value

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


# One round trip for a request's account update: increments, write-once sets, maxima,
# distinct-prompt HLL, template counts and their top (atomic here), the named distinct sets
# (HLL ``<a>:d:<name>``, size into ``d:<name>``), the cross-account sets (HLL
# ``<prefix>x:<kind>:<key>`` holding account ids; the account's own keys of a ``cross_max``
# kind in the set ``<a>:xk:<kind>``, the largest of them into ``xm:<kind>``), then the
# counters, the distinct count, the suspension record and the cross-set sizes read back, TTLs
# refreshed. Keys built inside the script (named sets, cross sets) are not declared in KEYS:
# fine on one Redis, not on Redis Cluster. The arguments come as one JSON array of strings
# (the strings redis-py would send one by one): redis-py encoding ~45 arguments one by one
# was ~20 of the ~85 µs client CPU of an update.
_UPDATE_LUA = """
local argv = cjson.decode(ARGV[1])
local a, hp, ht = KEYS[1], KEYS[2], KEYS[3]
local ttl = argv[1]
local i = 2
for _ = 1, tonumber(argv[i]) do redis.call('HINCRBY', a, argv[i + 1], argv[i + 2]); i = i + 2 end
i = i + 1
for _ = 1, tonumber(argv[i]) do redis.call('HSETNX', a, argv[i + 1], argv[i + 2]); i = i + 2 end
i = i + 1
for _ = 1, tonumber(argv[i]) do
  local cur = redis.call('HGET', a, argv[i + 1])
  if (not cur) or tonumber(argv[i + 2]) > tonumber(cur) then
    redis.call('HSET', a, argv[i + 1], argv[i + 2])
  end
  i = i + 2
end
i = i + 1
if argv[i] ~= '' then redis.call('PFADD', hp, argv[i]) end
i = i + 1
local top = 0
for _ = 1, tonumber(argv[i]) do
  i = i + 1
  local c = redis.call('HINCRBY', ht, argv[i], 1)
  if c > top then top = c end
end
if top > tonumber(redis.call('HGET', a, 'tpl_top') or '0') then
  redis.call('HSET', a, 'tpl_top', top)
end
i = i + 1
for _ = 1, tonumber(argv[i]) do
  local k = a .. ':d:' .. argv[i + 1]
  redis.call('PFADD', k, argv[i + 2])
  redis.call('HSET', a, 'd:' .. argv[i + 1], redis.call('PFCOUNT', k))
  redis.call('EXPIRE', k, ttl)
  i = i + 2
end
local xp, acct = argv[i + 1], argv[i + 2]
i = i + 3
local xc, hs = {}, {}
for _ = 1, tonumber(argv[i]) do
  local kind, key = argv[i + 1], argv[i + 2]
  local xk = xp .. kind .. ':' .. key
  redis.call('PFADD', xk, acct)
  local c = redis.call('PFCOUNT', xk)
  redis.call('EXPIRE', xk, ttl)
  xc[#xc + 1] = kind
  xc[#xc + 1] = c
  if c >= 2 then redis.call('HINCRBY', a, 'xs:' .. kind, 1) end
  if argv[i + 3] == '1' then redis.call('SADD', a .. ':xk:' .. kind, key) end
  if argv[i + 4] == '1' then
    local hk = a .. ':h:x:' .. kind
    redis.call('HINCRBY', hk, 'c' .. c, 1)
    redis.call('EXPIRE', hk, ttl)
    hs[#hs + 1] = 'x:' .. kind
    hs[#hs + 1] = redis.call('HGETALL', hk)
  end
  i = i + 4
end
i = i + 1
for _ = 1, tonumber(argv[i]) do
  local kind = argv[i + 1]
  local ks = a .. ':xk:' .. kind
  local members = redis.call('SRANDMEMBER', ks, 64)
  if #members > 0 then
    local best = 0
    for _, key in ipairs(members) do
      local c = redis.call('PFCOUNT', xp .. kind .. ':' .. key)
      if c > best then best = c end
    end
    redis.call('HSET', a, 'xm:' .. kind, best)
    redis.call('EXPIRE', ks, ttl)
  end
  i = i + 1
end
if argv[i + 1] ~= '' then
  local hk = a .. ':h:' .. argv[i + 1]
  redis.call('HINCRBY', hk, argv[i + 2], 1)
  redis.call('EXPIRE', hk, ttl)
  hs[#hs + 1] = argv[i + 1]
  hs[#hs + 1] = redis.call('HGETALL', hk)
end
if argv[i + 3] ~= '' then
  local c = tonumber(redis.call('HGET', a, argv[i + 3]) or '0')
  if c > 1 then
    local old = tonumber(redis.call('HGET', a, 'hcl') or '0')
    -- %.17g: the double round-trips, the same bits as MemoryState's sum
    redis.call('HSET', a, 'hcl',
               string.format('%.17g', old + c * math.log(c) - (c - 1) * math.log(c - 1)))
  end
end
local h = redis.call('HGETALL', a)
local d = redis.call('PFCOUNT', hp)
for _, k in ipairs({a, hp, ht}) do redis.call('EXPIRE', k, ttl) end
return {h, d, redis.call('GET', KEYS[4]), xc, hs}
"""

# A response's usage (RedisState.defer_usage): counter increments, one more value in the
# account's output/input ratio histogram, and its median written to ``oir`` when it moved,
# computed here as ``online._hist_median`` computes it (same double operations, so the same
# bits). Needs no reply: it is queued and sent ahead of the worker's next command.
_USAGE_LUA = """
local a, hk = KEYS[1], KEYS[2]
local ttl, width = ARGV[1], tonumber(ARGV[2])
redis.call('HINCRBY', hk, ARGV[3], 1)
local i = 4
for _ = 1, tonumber(ARGV[i]) do redis.call('HINCRBY', a, ARGV[i + 1], ARGV[i + 2]); i = i + 2 end
local flat = redis.call('HGETALL', hk)
local zeros, n, bins = 0, 0, {}
for j = 1, #flat, 2 do
  local c = tonumber(flat[j + 1])
  n = n + c
  if flat[j] == 'z' then zeros = c
  elseif string.sub(flat[j], 1, 1) == 'b' then bins[#bins + 1] = {tonumber(string.sub(flat[j], 2)), c} end
end
local med = 0.0
if n > 0 then
  local pos = (n - 1) / 2
  local lo = math.floor(pos)
  local want = {lo}
  if pos > lo then want[2] = lo + 1 end
  local got, seen = {}, zeros
  for _, r in ipairs(want) do if r < zeros then got[#got + 1] = 0.0 end end
  if #got < #want then
    table.sort(bins, function(x, y) return x[1] < y[1] end)
    for _, b in ipairs(bins) do
      local k, c = b[1], b[2]
      while #got < #want and want[#got + 1] < seen + c do
        got[#got + 1] = math.exp(width * (k + (want[#got + 1] - seen + 0.5) / c))
      end
      if #got == #want then break end
      seen = seen + c
    end
  end
  med = got[1]
  if #got > 1 then med = med + (pos - lo) * (got[2] - med) end
end
if med - tonumber(redis.call('HGET', a, 'oir') or '0') ~= 0 then
  redis.call('HSET', a, 'oir', string.format('%.17g', med))
end
redis.call('EXPIRE', hk, ttl)
for _, k in ipairs({a, KEYS[3], KEYS[4]}) do redis.call('EXPIRE', k, ttl) end
return 1
"""


def _weak_periodic(obj: Any, tick: Callable[[Any], float], name: str) -> threading.Thread:
    """A daemon thread (not started) calling ``tick(obj)`` and sleeping the seconds it
    returns, for as long as ``obj`` lives. It holds ``obj`` only weakly, and not while it
    sleeps, so the thread never keeps a dropped store alive."""
    ref = weakref.ref(obj)

    def run() -> None:
        while (me := ref()) is not None:
            wait = tick(me)
            del me
            time.sleep(wait)

    return threading.Thread(target=run, name=name, daemon=True)


@dataclass(slots=True)
class _Riders:
    """What :meth:`RedisState._pipe` put in front of the caller's commands."""

    n: int = 0                                   # commands before the caller's
    usage: list[tuple[int, list[str], list[Any]]] = field(default_factory=list)
    globals_at: int | None = None


class RedisState:
    """Redis store shared by gateway workers: hashes + HyperLogLog + TTL.

    ``client`` is a ``redis.Redis``; use short socket timeouts so a dead Redis turns into a
    fast :class:`StateStoreError` (and the gateway's fail mode) rather than a hung request.

    One round trip per request: an account update is one Lua script (atomic, including the
    template top count and the hour-entropy sum) that also reads the account's suspension
    record, which the :meth:`suspended` call that follows in the same thread uses instead of
    a second GET. Writes that need no answer ride in front of the next command's pipeline:
    inside :meth:`batched`, this thread's :meth:`add_float` increments (in order); and, from
    any thread, the response usage queued by :meth:`defer_usage` (a script that also
    computes the ratio median), sent by a flusher thread instead when no command follows
    within ``defer_max_s`` (50 ms). The global ``t0`` and model first-seen map are
    write-once and cached per process; once the cache is ``globals_max_age_s`` (1 s) old, a
    request for a model it knows uses it and refreshes it in the same pipeline, so a model
    first seen by *another* worker shows up here about that late (only a model missing from
    the cache costs a round trip of its own). Without Lua scripting (e.g. a proxy refusing
    EVAL) updates fall back to a plain pipeline (several round trips).
    """

    globals_max_age_s = 1.0
    defer_max_s = 0.05
    _SUSP_MAX_AGE_S = 0.05

    def __init__(self, client: Any, prefix: str = "dg:", ttl_s: int = 7 * 86400) -> None:
        self.r, self.p, self.ttl_s = client, prefix, ttl_s
        self._local = threading.local()
        self._globals: tuple[float, float, dict[str, float]] | None = None
        self._refresh: tuple[str, float] | None = None      # globals refresh to ride along
        self._script: Any = None
        self._usage_script: Any = None
        self._use_script = hasattr(client, "script_load")
        # (queued at, keys, args) of usage writes; bounded: a dead Redis drops, not hoards
        self._deferred: collections.deque[tuple[float, list[str], list[Any]]] = \
            collections.deque(maxlen=100_000)
        self._flusher: threading.Thread | None = None

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

    def _pipe(self) -> tuple[Any, _Riders]:
        """A pipeline starting with the writes that ride along (this thread's deferred
        increments, queued usage writes, a due globals refresh); :meth:`_exec` runs it."""
        pipe = self.r.pipeline(transaction=False)
        rid = _Riders()
        pending = getattr(self._local, "pending", None)
        if pending:
            for key, field_, value in pending:
                pipe.hincrbyfloat(key, field_, value)
            rid.n += len(pending)
            pending.clear()
        dq = self._deferred
        if dq:
            if self._usage_script is None:
                self._usage_script = self.r.script_load(_USAGE_LUA)
            while True:
                try:
                    _, keys, args = dq.popleft()
                except IndexError:
                    break
                pipe.evalsha(self._usage_script, len(keys), *keys, *args)
                rid.usage.append((rid.n, keys, args))
                rid.n += 1
        refresh, self._refresh = self._refresh, None
        if refresh is not None:
            self._globals_cmds(pipe, *refresh)
            rid.globals_at = rid.n
            rid.n += 4
        return pipe, rid

    def _exec(self, pipe: Any, rid: _Riders) -> list[Any]:
        """Execute a :meth:`_pipe` pipeline; return the results of the caller's commands.

        Raises the first error among them (as ``execute`` would); a usage write refused for
        a missing script (Redis restarted or flushed) is sent again, others are dropped:
        usage is best effort, as it always was.
        """
        import redis

        res = pipe.execute(raise_on_error=False)
        again = [(keys, args) for at, keys, args in rid.usage
                 if isinstance(res[at], redis.exceptions.NoScriptError)]
        if again:
            self._usage_script = self.r.script_load(_USAGE_LUA)
            p2 = self.r.pipeline(transaction=False)
            for keys, args in again:
                p2.evalsha(self._usage_script, len(keys), *keys, *args)
            p2.execute(raise_on_error=False)
        g = rid.globals_at
        if g is not None and not any(isinstance(x, Exception) for x in res[g:g + 4]):
            self._globals_set(res[g + 1], res[g + 3])
        main = res[rid.n:]
        for x in main:
            if isinstance(x, Exception):
                raise x
        return main

    # ------------------------------------------------------------------ deferred usage
    def defer_usage(self, account_id: str, incr: dict[str, int], hist: tuple[str, str],
                    width: float) -> bool:
        """Queue a response's usage: ``incr`` into the account hash, one value in bin
        ``hist[1]`` of histogram ``hist[0]`` and the histogram's median (bins ``width``
        wide in log space, as ``online._hist_median``) into ``oir``. Never blocks."""
        a = f"{self.p}a:{account_id}"
        args: list[Any] = [self.ttl_s, repr(float(width)), hist[1], len(incr)]
        for k, v in incr.items():
            args += [k, v]
        self._deferred.append((time.monotonic(), [a, f"{a}:h:{hist[0]}", a + ":p", a + ":t"],
                               args))
        if self._flusher is None:
            self._flusher = _weak_periodic(self, RedisState._flush_tick, "dg-state-flush")
            self._flusher.start()
        return True

    def flush(self) -> None:
        """Send the queued usage writes now (the flusher thread, shutdown, tests)."""
        if self._deferred:
            self._run(lambda: self._exec(*self._pipe()))

    def _flush_tick(self) -> float:
        """Send usage writes that no request took along within ``defer_max_s``."""
        with suppress(IndexError):
            if time.monotonic() - self._deferred[0][0] >= self.defer_max_s:
                with suppress(StateStoreError):      # best effort, as usage always was
                    self.flush()
        return self.defer_max_s

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
            pipe, rid = self._pipe()
            for k, v in u.incr.items():
                pipe.hincrby(a, k, v)
            for k, v in u.sets.items():
                pipe.hsetnx(a, k, v)
            if u.prompt_hash:
                pipe.pfadd(hp, u.prompt_hash)
            for key in u.template_keys:
                pipe.hincrby(ht, key, 1)
            for name, member in u.distinct.items():
                pipe.pfadd(f"{a}:d:{name}", member)
                pipe.pfcount(f"{a}:d:{name}")
                pipe.expire(f"{a}:d:{name}", self.ttl_s)
            for kind, key in u.cross.items():
                xk = f"{self.p}x:{kind}:{key}"
                pipe.pfadd(xk, account_id)
                pipe.pfcount(xk)
                pipe.expire(xk, self.ttl_s)
                if kind in u.cross_max:
                    pipe.sadd(f"{a}:xk:{kind}", key)
            for kind in u.cross_max:
                pipe.srandmember(f"{a}:xk:{kind}", 64)
            pipe.hgetall(a)
            pipe.pfcount(hp)
            for k in (a, hp, ht):
                pipe.expire(k, self.ttl_s)
            res = iter(self._exec(pipe, rid))
            for _ in range(len(u.incr) + len(u.sets) + (1 if u.prompt_hash else 0)):
                next(res)
            top = max([int(next(res)) for _ in u.template_keys] or [0])
            later: dict[str, Any] = {}
            for name in u.distinct:
                next(res)
                later["d:" + name] = int(next(res))
                next(res)
            xc: dict[str, float] = {}
            for kind in u.cross:
                next(res)
                xc["x:" + kind] = c = float(next(res))
                next(res)
                if kind in u.cross_max:
                    next(res)
                if c >= 2:
                    later.setdefault("+xs:" + kind, 0)
                    later["+xs:" + kind] += 1
            members = {kind: next(res) for kind in u.cross_max}
            st = {k: float(v) for k, v in next(res).items()}
            st["distinct"] = float(next(res))
            for k, v in u.maxs.items():
                if v is not None and (k not in st or v > st[k]):
                    later[k] = st[k] = float(v)
            if top > st.get("tpl_top", 0):
                later["tpl_top"] = st["tpl_top"] = top
            c = st.get(u.hcl, 0) if u.hcl else 0
            if c > 1:
                later["hcl"] = st.get("hcl", 0.0) + c * math.log(c) - (c - 1) * math.log(c - 1)
            for kind, ms in members.items():
                if ms:
                    p2 = self.r.pipeline(transaction=False)
                    for key in ms:
                        p2.pfcount(f"{self.p}x:{kind}:{key}")
                    later["xm:" + kind] = st["xm:" + kind] = max(int(c) for c in p2.execute())
            p3 = self.r.pipeline(transaction=False)
            for k, v in later.items():
                if k.startswith("+"):
                    p3.hincrby(a, k[1:], v)
                    st[k[1:]] = st.get(k[1:], 0.0) + v
                else:
                    p3.hset(a, k, v)
                    st[k] = float(v)
            if later:
                p3.execute()
            st.update(xc)
            hists = [("x:" + k, f"c{int(xc['x:' + k])}") for k in u.cross if k in u.cross_hist]
            if u.hist is not None:
                hists.append(u.hist)
            if hists:
                p4 = self.r.pipeline(transaction=False)
                for name, key in hists:
                    p4.hincrby(f"{a}:h:{name}", key, 1)
                    p4.expire(f"{a}:h:{name}", self.ttl_s)
                    p4.hgetall(f"{a}:h:{name}")
                res4 = p4.execute()
                for j, (name, _) in enumerate(hists):
                    st["\x1fh:" + name] = {k: int(v) for k, v in res4[3 * j + 2].items()}
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
        args.append(len(u.maxs))
        for k, v in u.maxs.items():
            args += [k, repr(float(v))]
        args += [u.prompt_hash or "", len(u.template_keys), *u.template_keys]
        args.append(len(u.distinct))
        for k, v in u.distinct.items():
            args += [k, v]
        args += [f"{self.p}x:", account_id, len(u.cross)]
        for k, v in u.cross.items():
            args += [k, v, "1" if k in u.cross_max else "0", "1" if k in u.cross_hist else "0"]
        args.append(len(u.cross_max))
        args += list(u.cross_max)
        args += list(u.hist) if u.hist is not None else ["", ""]
        args.append(u.hcl)

        keys = [a, hp, ht, f"{self.p}s:{account_id}"]
        packed = orjson.dumps([x if isinstance(x, str) else str(x) for x in args])

        def go() -> list[Any]:
            import redis

            pipe, rid = self._pipe()
            pipe.evalsha(self._script, 4, *keys, packed)
            try:
                return self._exec(pipe, rid)[0]
            except redis.exceptions.NoScriptError:      # Redis restarted or flushed scripts
                self._script = self.r.script_load(_UPDATE_LUA)
                return self.r.evalsha(self._script, 4, *keys, packed)

        flat, distinct, susp, xc, hs = self._run(go)
        it = iter(flat)
        st: dict[str, Any] = {k: float(v) for k, v in zip(it, it, strict=True)}
        st["distinct"] = float(distinct)
        it = iter(xc)
        for kind, c in zip(it, it, strict=True):
            st["x:" + kind] = float(c)
        it = iter(hs)
        for name, flat_h in zip(it, it, strict=True):
            ih = iter(flat_h)
            st["\x1fh:" + name] = {k: int(v) for k, v in zip(ih, ih, strict=True)}
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
        if c is not None and model in c[2]:
            if time.monotonic() - c[0] >= self.globals_max_age_s:
                # refreshed by the next pipeline (this request's update): no round trip
                self._globals = (time.monotonic(), c[1], c[2])
                self._refresh = (model, ts)
            return c[1], dict(c[2])

        def go() -> tuple[float, dict[str, float]]:
            pipe, rid = self._pipe()
            self._globals_cmds(pipe, model, ts)
            res = self._exec(pipe, rid)
            return self._globals_set(res[1], res[3])

        t0, models = self._run(go)
        return t0, dict(models)

    def _globals_cmds(self, pipe: Any, model: str, ts: float) -> None:
        pipe.setnx(f"{self.p}t0", ts)
        pipe.get(f"{self.p}t0")
        pipe.hsetnx(f"{self.p}models", model, ts)
        pipe.hgetall(f"{self.p}models")

    def _globals_set(self, t0: Any, models: dict[str, Any]) -> tuple[float, dict[str, float]]:
        out = float(t0), {k: float(v) for k, v in models.items()}
        self._globals = (time.monotonic(), *out)
        return out

    def rate(self, account_id: str, bucket: int, ttl_s: int) -> int:
        key = f"{self.p}r:{account_id}:{bucket}"

        def go() -> int:
            pipe, rid = self._pipe()
            pipe.incr(key)
            pipe.expire(key, ttl_s)
            return int(self._exec(pipe, rid)[0])

        return self._run(go)

    def suspend(self, account_id: str, info: dict[str, Any]) -> None:
        def go() -> None:
            pipe, rid = self._pipe()
            pipe.set(f"{self.p}s:{account_id}", orjson.dumps(info), nx=True)
            pipe.sadd(f"{self.p}susp", account_id)      # index (FallbackState mirrors it)
            self._exec(pipe, rid)

        self._run(go)

    def suspended(self, account_id: str) -> dict[str, Any] | None:
        stash = getattr(self._local, "susp", None)
        hit = stash.pop(account_id, None) if stash else None
        if hit is not None and time.monotonic() - hit[1] < self._SUSP_MAX_AGE_S:
            raw = hit[0]          # read by this thread's update of the account just now
        else:
            def go() -> Any:
                pipe, rid = self._pipe()
                pipe.get(f"{self.p}s:{account_id}")
                return self._exec(pipe, rid)[0]

            raw = self._run(go)
        return orjson.loads(raw) if raw else None

    def unsuspend(self, account_id: str) -> None:
        def go() -> None:
            pipe = self.r.pipeline(transaction=False)
            pipe.delete(f"{self.p}s:{account_id}")
            pipe.srem(f"{self.p}susp", account_id)
            pipe.execute()

        self._run(go)
        stash = getattr(self._local, "susp", None)
        if stash:
            stash.pop(account_id, None)


class FallbackState:
    """A shared store (Redis) that degrades to this worker's own :class:`MemoryState`.

    While the primary answers, every call goes to it. The first call that fails with
    :class:`StateStoreError` logs an alert (``distillguard.state``, level ERROR), switches this
    worker to a fresh in-process store and starts a probe thread that pings the primary every
    ``probe_interval_s``; requests never wait on a dead primary again (only those in flight
    when it failed pay its socket timeout). When a ping answers, the suspensions and lifts
    made during the outage are written to the primary, the alert is cleared (logged at
    WARNING with the outage's length) and calls go to the primary again; what the in-process
    store counted during the outage is dropped (the primary keeps what it had before).

    Sticky suspensions (and operator actions) read from or written to the primary are also
    kept here, so an account this worker knew was suspended stays suspended during an
    outage, and is suspended again if the primary comes back empty (restarted without
    persistence: its ``t0`` key is gone). Every ``sync_interval_s`` (10 s) a thread also
    reads all of the primary's records (:meth:`sync_suspensions`), so suspensions made by
    other workers or the console are enforced too. Scores during an outage see only this
    worker's traffic since the outage began: a lower bound of the shared score.
    """

    def __init__(self, primary: Any, fallback: MemoryState | None = None,
                 probe_interval_s: float = 0.25, sync_interval_s: float | None = 10.0,
                 ping: Callable[[], Any] | None = None) -> None:
        self.primary = primary
        self.ttl_s = getattr(primary, "ttl_s", 7 * 86400)
        self.fallback = fallback or MemoryState(self.ttl_s)
        self.probe_interval_s = probe_interval_s
        self._ping = ping or (lambda: primary._run(primary.r.ping))
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._known: dict[str, dict[str, Any]] = {}      # suspension records seen
        self._synced: set[str] = set()                   # accounts of the last sync
        self._scanned = False
        # The primary's epoch: a token set once per life of its data (SET NX), so a worker
        # can tell a primary that came back empty even when another (re)started worker has
        # already written t0 to it again.
        self._epoch: str | None = None
        self._outage_ops: list[tuple[str, str, dict[str, Any] | None]] = []
        self.outages = 0                # times this worker fell back
        self.fallback_calls = 0         # store calls answered by the fallback
        self.last_recovery: tuple[float, float] | None = None   # (went down, came back) mono
        self.sync_interval_s = sync_interval_s
        if sync_interval_s and hasattr(primary, "r"):
            _weak_periodic(self, FallbackState._sync_tick, "dg-state-sync").start()

    def _sync_tick(self) -> float:
        """Mirror every suspension record of the primary every ``sync_interval_s``."""
        if self._down_since is None:
            with suppress(StateStoreError, ValueError):     # ValueError: a bad record
                self.sync_suspensions()
        return self.sync_interval_s or 10.0

    def sync_suspensions(self) -> int:
        """Read every suspension / operator record from the primary; return the count.

        So that during an outage this worker also enforces suspensions it never read itself
        (made by another worker or the console), as of the last sync. Records are listed by
        the ``<prefix>susp`` index :meth:`RedisState.suspend` keeps; the first sync also
        SCANs for records written before the index existed and adds them to it.
        """
        p = self.primary
        first = not self._scanned

        def go() -> dict[str, dict[str, Any]]:
            def text(k: Any) -> str:
                return k.decode() if isinstance(k, bytes) else str(k)

            accts = {text(a) for a in p.r.smembers(f"{p.p}susp")}
            if first:
                n = len(p.p) + 2
                old = {text(k)[n:] for k in p.r.scan_iter(match=f"{p.p}s:*", count=1000)}
                if old - accts:
                    p.r.sadd(f"{p.p}susp", *(old - accts))
                accts |= old
            order = sorted(accts)
            found: dict[str, dict[str, Any]] = {}
            for i in range(0, len(order), 500):
                part = order[i:i + 500]
                for a, raw in zip(part, p.r.mget([f"{p.p}s:{a}" for a in part]), strict=True):
                    if raw:
                        found[a] = orjson.loads(raw)
            return found

        found = p._run(go)
        if self._epoch is None:
            self._epoch = self._primary_epoch(create=True)
        self._scanned = True
        with self._lock:      # merge: a record written here while the SCAN ran is kept
            for acct in self._synced - found.keys():
                self._known.pop(acct, None)          # lifted since the last sync
            self._known.update(found)
            self._synced = set(found)
        return len(found)

    @property
    def degraded(self) -> bool:
        """True while this worker scores on its own in-process state."""
        return self._down_since is not None

    # ------------------------------------------------------------------ switching
    def _go_down(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.outages += 1
            self.fallback = MemoryState(self.ttl_s)
        log.error("ALERT state store down, scoring on per-worker state until it returns: %s",
                  str(exc)[:200])
        threading.Thread(target=self._probe, name="dg-state-probe", daemon=True).start()

    def _probe(self) -> None:
        while True:
            time.sleep(self.probe_interval_s)
            try:
                self._ping()
                done = self._restore()
            except StateStoreError:
                continue
            with self._lock:
                since, self._down_since = self._down_since, None
                late = self._outage_ops[done:]     # made while _restore ran
                self._outage_ops.clear()
            with suppress(StateStoreError):         # best effort: _known keeps them here
                self._replay(late)
            now = time.monotonic()
            self.last_recovery = (since or now, now)
            log.warning("state store back after %.2f s: scoring on shared state again",
                        now - (since or now))
            return

    def _restore(self) -> int:
        """Write what the primary must know before it is used again (raises if it fails);
        return how many outage operations were replayed."""
        p = self.primary
        with self._lock:
            ops = list(self._outage_ops)
            known = dict(self._known)
        r = getattr(p, "r", None)
        if r is not None:
            epoch = self._primary_epoch(create=False)
            empty = not p._run(lambda: r.exists(f"{p.p}t0")) or epoch is None or (
                self._epoch is not None and epoch != self._epoch)
            if empty:
                for acct, rec in known.items():      # the primary came back empty
                    p.suspend(acct, rec)
            self._epoch = self._primary_epoch(create=True)
        self._replay(ops)
        return len(ops)

    def _primary_epoch(self, create: bool) -> str | None:
        """The primary's epoch token; with ``create``, set a new one if it has none."""
        p = self.primary
        r = getattr(p, "r", None)
        if r is None:
            return None
        key = f"{p.p}epoch"

        def go() -> Any:
            if create:
                r.set(key, os.urandom(8).hex(), nx=True)
            return r.get(key)

        v = p._run(go)
        return None if v is None else (v.decode() if isinstance(v, bytes) else str(v))

    def _replay(self, ops: list[tuple[str, str, dict[str, Any] | None]]) -> None:
        for op, acct, rec in ops:
            if op == "suspend" and rec is not None:
                self.primary.suspend(acct, rec)
            elif op == "unsuspend":
                self.primary.unsuspend(acct)

    def _call(self, name: str, *args: Any) -> Any:
        if self._down_since is None:
            try:
                return getattr(self.primary, name)(*args)
            except StateStoreError as exc:
                self._go_down(exc)
        self.fallback_calls += 1
        return getattr(self.fallback, name)(*args)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """The primary's batching while it is up; a failed flush switches to the fallback."""
        inner = getattr(self.primary, "batched", None)
        if self._down_since is not None or inner is None:
            yield
            return
        cm = inner()
        cm.__enter__()
        try:
            yield
        except BaseException:
            with suppress(StateStoreError):
                cm.__exit__(None, None, None)
            raise
        try:
            cm.__exit__(None, None, None)
        except StateStoreError as exc:      # deferred float increments lost: best effort
            self._go_down(exc)

    def defer_usage(self, account_id: str, incr: dict[str, int], hist: tuple[str, str],
                    width: float) -> bool:
        """The primary's :meth:`RedisState.defer_usage` while it is up; False during an
        outage (the caller then records the usage here, on the fallback)."""
        inner = getattr(self.primary, "defer_usage", None)
        if self._down_since is not None or inner is None:
            return False
        return bool(inner(account_id, incr, hist, width))

    def flush(self) -> None:
        inner = getattr(self.primary, "flush", None)
        if self._down_since is None and inner is not None:
            with suppress(StateStoreError):
                inner()

    # ------------------------------------------------------------------ store interface
    def update(self, account_id: str, u: AccountUpdate) -> dict[str, float]:
        return self._call("update", account_id, u)

    def add_float(self, account_id: str, key: str, value: float) -> None:
        self._call("add_float", account_id, key, value)

    def globals(self, model: str, ts: float) -> tuple[float, dict[str, float]]:
        return self._call("globals", model, ts)

    def rate(self, account_id: str, bucket: int, ttl_s: int) -> int:
        return self._call("rate", account_id, bucket, ttl_s)

    def suspend(self, account_id: str, info: dict[str, Any]) -> None:
        up = self._down_since is None
        self._call("suspend", account_id, info)
        with self._lock:
            self._known.setdefault(account_id, info)
            if not up or self._down_since is not None:
                self._outage_ops.append(("suspend", account_id, info))

    def suspended(self, account_id: str) -> dict[str, Any] | None:
        if self._down_since is None:
            try:
                rec = self.primary.suspended(account_id)
            except StateStoreError as exc:
                self._go_down(exc)
            else:
                with self._lock:
                    if rec is None:
                        self._known.pop(account_id, None)
                    else:
                        self._known[account_id] = rec
                return rec
        self.fallback_calls += 1
        rec = self.fallback.suspended(account_id)
        return rec if rec is not None else self._known.get(account_id)

    def unsuspend(self, account_id: str) -> None:
        up = self._down_since is None
        self._call("unsuspend", account_id)
        with self._lock:
            self._known.pop(account_id, None)
            if not up or self._down_since is not None:
                self._outage_ops.append(("unsuspend", account_id, None))


def now_s() -> float:
    """Wall clock in epoch seconds (one place, so tests can reason about it)."""
    return time.time()
