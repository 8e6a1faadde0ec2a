"""Shared machinery for population generators: the account table, request blocks, context.

A generator adds its accounts to :class:`Accounts` and returns a :class:`Block` — columns of
equal length, one row per request. Blocks are concatenated, sorted by time and written by
``_simulate``. Keeping requests columnar lets timing and assignment stay vectorised while only
the message text is assembled per request.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from distillguard.sim._corpus import Corpus, Item
from distillguard.sim._infra import Infra
from distillguard.sim._scenario import Population, Scenario
from distillguard.sim._text import TemplateBank
from distillguard.sim._timing import DAY, TimingTrace

__all__ = ["LINEUP_AWARE", "Accounts", "Block", "Ctx", "iso_seconds"]

#: Kinds whose generators write model indices of the full ``Scenario.models`` line-up
#: themselves; every other kind writes 0 (established) / 1 (new) and is lifted onto the
#: line-up by :meth:`Ctx.lift_models` when the scenario has ``release_days``.
LINEUP_AWARE: set[str] = set()


def iso_seconds(ts: np.ndarray | float) -> list[str]:
    """Epoch seconds -> RFC 3339 strings with ``Z`` (second precision), vectorised."""
    a = np.atleast_1d(np.asarray(ts, dtype=float)).astype("datetime64[s]")
    return [s + "Z" for s in np.datetime_as_string(a, unit="s").tolist()]


@dataclass
class Accounts:
    """Columnar table of every simulated account (ground truth included)."""

    ids: list[str] = field(default_factory=list)
    org: list[str | None] = field(default_factory=list)
    payment: list[str | None] = field(default_factory=list)
    signup: list[str] = field(default_factory=list)
    created: list[float] = field(default_factory=list)
    country: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    campaign: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: list[str], *, kind: str, label: str, campaign: str | list[str],
            org: str | None | list, payment: str | None | list, signup: str | list | np.ndarray,
            created: float | np.ndarray, country: str | list | np.ndarray) -> np.ndarray:
        """Append ``len(ids)`` accounts; scalars broadcast. Returns their global indices."""
        n = len(ids)

        def col(v: object) -> list:
            if isinstance(v, np.ndarray):
                return v.tolist()
            return list(v) if isinstance(v, list) else [v] * n

        start = len(self.ids)
        self.ids += ids
        self.org += col(org)
        self.payment += col(payment)
        self.signup += col(signup)
        self.created += [float(x) for x in col(created)]
        self.country += col(country)
        self.kind += [kind] * n
        self.label += [label] * n
        self.campaign += col(campaign)
        return np.arange(start, start + n)


@dataclass
class Block:
    """Requests from one population, as aligned columns.

    ``model`` is an index into ``Scenario.models``; ``ip``/``ua``/``key`` are per request
    because proxy rotation and key rotation happen per request.
    """

    ts: np.ndarray
    acct: np.ndarray
    model: np.ndarray
    ip: list[str]
    ua: list[str]
    key: list[str]
    messages: list[list[dict]]
    system: list[str | None]
    tools: list[list[dict] | None]
    effort: list[str | None]
    out_tokens: np.ndarray
    status: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def check(self) -> Block:
        n = len(self.ts)
        for name in ("acct", "model", "ip", "ua", "key", "messages", "system", "tools",
                     "effort", "out_tokens", "status"):
            if len(getattr(self, name)) != n:
                raise AssertionError(f"block column {name} has {len(getattr(self, name))} "
                                     f"rows, expected {n}")
        return self


@dataclass
class Ctx:
    """Everything a population generator may read, plus the shared account table."""

    scenario: Scenario
    legit: Corpus
    distill: Corpus
    bank: TemplateBank
    trace: TimingTrace | None
    accounts: Accounts
    seed: int = 0

    def __post_init__(self) -> None:
        s = self.scenario
        self.t0 = datetime.fromisoformat(s.start.replace("Z", "+00:00")).astimezone(
            UTC).timestamp()
        self.t_end = self.t0 + s.days * DAY
        self.t_release = self.t0 + s.release_day * DAY
        # model line-up: established indices, and (release ts, index) in release order
        if s.release_days:
            self.established = [i for i, d in enumerate(s.release_days) if d is None]
            self.releases = sorted((self.t0 + d * DAY, i) for i, d in enumerate(s.release_days)
                                   if d is not None)
            self.t_release = self.releases[0][0]
        else:
            self.established = [0]
            self.releases = [(self.t_release, 1)]
        self._pools: dict[str, list[str]] = {}
        # pools used by many generators
        self.chat_items: list[Item] = [it for it in self.legit.items
                                       if it.category not in ("benchmark", "meta_generation")]
        if not self.chat_items:
            self.chat_items = list(self.legit.items)
        self.turn_counts = np.array([len(it.turns) for it in self.chat_items])
        self.bench_items = [it for it in self.legit.items if it.category == "benchmark"]
        replies = [r for it in self.legit.items for r in it.replies if len(r) > 40]
        replies += [it.answer for it in self.legit.items if it.answer and len(it.answer) > 40]
        self.reply_pool: list[str] = replies or ["Sure — here is an overview of the main points."]
        self.d_items = [it for it in self.distill.items if it.category != "meta_generation"]
        if not self.d_items:
            self.d_items = list(self.distill.items)
        self.d_answered = [it for it in self.d_items if it.answer] or self.d_items
        self.d_math = [it for it in self.d_items if it.category == "math"] or self.d_items
        self.d_coding = [it for it in self.d_items if it.category == "coding"]
        self.d_meta = [it for it in self.distill.items if it.category == "meta_generation"]

    # ---- helpers used by several generators ------------------------------------------
    def reply(self, rng: np.random.Generator) -> str:
        r = self.reply_pool[int(rng.integers(len(self.reply_pool)))]
        return self._cut(r)

    def _cut(self, s: str) -> str:
        m = self.scenario.max_reply_chars
        return s if len(s) <= m else s[:m]

    def conversation(self, item: Item, upto: int, rng: np.random.Generator,
                     first: str | None = None) -> list[dict]:
        """Messages of a conversation up to and including user turn ``upto``.

        Earlier assistant turns come from the item when the source has them, otherwise from
        the reply pool (same shape, unrelated text — only replies' length matters downstream).
        """
        msgs: list[dict] = []
        for j in range(upto + 1):
            text = first if (j == 0 and first is not None) else item.turns[j]
            msgs.append({"role": "user", "content": text})
            if j < upto:
                r = item.replies[j] if j < len(item.replies) and item.replies[j] else None
                msgs.append({"role": "assistant",
                             "content": self._cut(r) if r else self.reply(rng)})
        return msgs

    def model_for(self, rng: np.random.Generator, ts: np.ndarray, pop: Population | None = None,
                  adopt_at: np.ndarray | None = None, adopt_share: float = 0.7) -> np.ndarray:
        """Model index per request (0 = established model, 1 = new model).

        Humans switch at a per-account adoption time (``adopt_at``, aligned with ``ts``) and
        then use the new model ``adopt_share`` of the time. Campaigns use the population's
        ``pivot``: share ramping linearly from 0 at release to ``pivot`` after ``pivot_hours``.
        Nothing uses the new model before it is released.
        """
        after = ts >= self.t_release
        if adopt_at is not None:
            p = np.where(ts >= adopt_at, adopt_share, 0.0)
        elif pop is not None and pop.pivot > 0:
            ramp = np.clip((ts - self.t_release) / (max(pop.pivot_hours, 0.1) * 3600), 0, 1)
            p = pop.pivot * ramp
        else:
            p = np.zeros(len(ts))
        return ((rng.random(len(ts)) < p) & after).astype(np.int8)

    def out_tokens(self, rng: np.random.Generator, n: int, profile: str) -> np.ndarray:
        """Completion lengths: real trace counts where given, else log-normal by profile."""
        tr = self.trace
        if profile in ("chat", "cot") and tr is not None and len(tr.out_tokens_chat):
            base = rng.choice(tr.out_tokens_chat, size=n)
            return (base * (3.5 if profile == "cot" else 1.0)).astype(np.int64) + 1
        if profile == "code" and tr is not None and len(tr.out_tokens_code):
            return (rng.choice(tr.out_tokens_code, size=n) * 6).astype(np.int64) + 5
        med, sig = {"chat": (180, 0.9), "cot": (750, 0.6), "code": (220, 0.9),
                    "short": (35, 0.6), "grade": (140, 0.7)}[profile]
        return np.maximum(1, rng.lognormal(np.log(med), sig, size=n)).astype(np.int64)

    def shared_pool(self, name: str) -> list[str]:
        """A world-level pool from ``Scenario.shared_pools`` (same list for every caller).

        Built from ``(seed, name)`` only, so populations drawing from one pool meet on the
        same addresses or cards whatever order they run in.
        """
        if name not in self._pools:
            spec = {p[0]: p for p in self.scenario.shared_pools}.get(name)
            if spec is None:
                raise KeyError(f"scenario has no shared pool {name!r}")
            _, kind, size, n_blocks = spec
            infra = Infra(np.random.default_rng([self.seed, zlib.crc32(name.encode()), 0x9001]))
            if kind == "residential":
                pool = infra.residential(size)
            elif kind == "datacenter":
                pool = infra.cloud(size, n_blocks=max(1, n_blocks))
            elif kind == "cgnat":
                pool = []
                for _ in range(max(1, n_blocks)):
                    pool += infra.in_block(infra.block24(cloud=False), -(-size // max(1, n_blocks)))
                pool = pool[:size]
            else:
                pool = infra.payment(size)
            self._pools[name] = pool
        return self._pools[name]

    def lift_models(self, b: Block, rng: np.random.Generator) -> Block:
        """Map a two-model block (0 = established, 1 = new) onto the scenario's line-up.

        0 becomes one of the established models (each account keeps a preference: mostly the
        first, a minority the second, e.g. a smaller sibling); 1 becomes a released model
        available at that time, the newest one with probability 0.6 once it is out.
        """
        if not len(b) or len(self.established) == 1 and len(self.releases) == 1 and \
                self.established[0] == 0 and self.releases[0][1] == 1:
            return b
        est = np.array(self.established)
        n_acc = max(len(self.accounts), int(b.acct.max()) + 1)
        pref = np.where(rng.random(n_acc) < 0.3, len(est) - 1, 0)
        use_pref = rng.random(len(b)) < 0.85
        e_idx = np.where(use_pref, pref[b.acct], rng.integers(0, len(est), size=len(b)))
        out = est[e_idx]
        rel_ts = np.array([t for t, _ in self.releases])
        rel_ix = np.array([i for _, i in self.releases])
        newest = np.maximum(np.searchsorted(rel_ts, b.ts, side="right") - 1, 0)
        pick_any = rng.integers(0, newest + 1)
        r = np.where(rng.random(len(b)) < 0.6, newest, pick_any)
        out = np.where(b.model == 1, rel_ix[r], out)
        b.model = out.astype(np.int8)
        return b

    def status(self, rng: np.random.Generator, n: int, throttle: float = 0.0) -> np.ndarray:
        """HTTP status per request: rare 500s, ``throttle`` share of 429s."""
        u = rng.random(n)
        return np.where(u < 0.003, 500, np.where(u < 0.003 + throttle, 429, 200)).astype(
            np.int16)


def pick(rng: np.random.Generator, seq: list | tuple, n: int | None = None):
    """Uniform choice from a Python sequence (objects kept as-is, not cast by numpy)."""
    if n is None:
        return seq[int(rng.integers(len(seq)))]
    return [seq[i] for i in rng.integers(0, len(seq), size=n).tolist()]


def weighted(rng: np.random.Generator, options: dict, n: int) -> np.ndarray:
    """``n`` draws from ``{value: weight}``."""
    keys = list(options)
    w = np.array([options[k] for k in keys], dtype=float)
    idx = rng.choice(len(keys), size=n, p=w / w.sum())
    return np.array(keys, dtype=object)[idx]
