"""Population kinds of the cross-world benchmark: new hard negatives and tactic-space campaigns.

Registered in ``_populations.KINDS`` next to the original kinds (same contract:
``gen_<kind>(ctx, pop, rng) -> Block``). ``distillguard.sim.worlds`` draws their parameters
per world; each generator's docstring says what it imitates and which ``params`` it reads.

Every benign kind here looks like a campaign on at least one naive signal (volume,
chain-of-thought wording, a shared IP, a shared template, a fast model pivot, a shared card,
round-the-clock activity). The campaign kinds (``tactic_campaign``, ``adaptive_attacker``,
``imitator``) share one generator, :func:`gen_world_campaign`, parameterised by the tactic
knobs listed in its docstring. World-level pools of proxy exits, VPN exits, carrier CGNAT
addresses and payment cards (``Ctx.shared_pool``) are what benign and campaign populations
meet on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from distillguard.sim._corpus import Item
from distillguard.sim._engine import LINEUP_AWARE, Block, Ctx, pick, weighted
from distillguard.sim._heldout_text import (
    APP_SYSTEMS,
    EVAL_COT_FORMATS,
    EXTRA_TOOLS,
    HARVEST_SCAFFOLDS,
    HELDOUT_PROFILE,
    JUDGE_RUBRIC,
    JUDGE_TEMPLATES,
    TRANSLATE_LANGS,
    TRANSLATE_TEMPLATES,
    TUTOR_FOLLOWUPS,
    TUTOR_SYSTEMS,
    TUTOR_TEMPLATES,
    coding_task_side,
    framework_round,
    frameworks,
    half,
    perturb_text,
    reasoning_task_side,
    ua_mobile,
)
from distillguard.sim._infra import Infra, tz_offsets, ua_browser, ua_sdk
from distillguard.sim._populations import (
    _PROXY_COUNTRIES,
    TopicSampler,
    _activity,
    _campaign_stream,
    _concat,
    _deal,
    _first_zero,
    _grouped_arange,
    _human_requests,
    _ids,
    _ordinary_like_block,
    _pools,
    _sticky_ips,
)
from distillguard.sim._scenario import Population
from distillguard.sim._text import (
    ORDINARY_SYSTEMS,
    PLAIN,
    RESELLER_SYSTEMS,
    SENSITIVE_TOPICS,
    TOOLS,
    human_noise,
    paraphrase,
    repo_task,
    rubric_text,
    tool_round,
)
from distillguard.sim._timing import (
    DAY,
    diurnal_thin,
    grouped_cumsum,
    human_sessions,
    machine_stream,
)

__all__ = ["WORLD_KINDS"]

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

#: Relative activity of a school-tutoring app by local hour: classes, then homework.
SCHOOL = np.array([0.02, 0.01, 0.01, 0.01, 0.01, 0.02, 0.05, 0.25, 0.8, 1.0, 1.0, 1.0,
                   0.8, 0.9, 1.0, 0.9, 0.6, 0.55, 0.6, 0.7, 0.75, 0.6, 0.3, 0.08])

_COT_FAMS = {"cot_reconstruct", "cot_trace"} | {k for k, v in HELDOUT_PROFILE.items()
                                                if v == "cot"}
_GRADE_FAMS = {"rubric"} | {k for k, v in HELDOUT_PROFILE.items() if v == "grade"}


def _side(ctx: Ctx) -> str:
    s = ctx.bank.split
    return s if s in ("tune", "report") else "all"


def _pool(ctx: Ctx, rng: np.random.Generator, name: str, kind: str, size: int,
          n_blocks: int = 1) -> list[str]:
    """World pool ``name`` if the scenario defines it, else a private one of the same kind."""
    try:
        return ctx.shared_pool(name)
    except KeyError:
        infra = Infra(rng)
        if kind == "residential":
            return infra.residential(size)
        if kind == "datacenter":
            return infra.cloud(size, n_blocks)
        if kind == "cgnat":
            return infra.in_block(infra.block24(cloud=False), size)
        return infra.payment(size)


def _cards(ctx: Ctx, rng: np.random.Generator, infra: Infra, n: int, pool_share: float,
           pool_name: str = "card_pool") -> list[str]:
    """Own cards, a ``pool_share`` of them replaced by cards of the world card pool."""
    own = infra.payment(n)
    if pool_share <= 0:
        return own
    pool = _pool(ctx, rng, pool_name, "card", 30)
    use = rng.random(n) < pool_share
    return [pick(rng, pool) if u else c for u, c in zip(use.tolist(), own, strict=True)]


def _hash_pick(pool: Sequence[str], acct: np.ndarray, ts: np.ndarray, minutes: float,
               salt: int) -> list[str]:
    return _sticky_ips(list(pool), acct, ts, minutes, salt)


def _lineup_models(ctx: Ctx, rng: np.random.Generator, ts: np.ndarray, acct: np.ndarray, *,
                   delay_h: float | np.ndarray, share: float | np.ndarray, ramp_h: float = 1.0,
                   pref: np.ndarray | None = None) -> np.ndarray:
    """Model index per request over the whole line-up.

    Established models by account preference (``pref``: index into the established list);
    after each release, the account moves a ``share`` of its traffic to the released model,
    starting ``delay_h`` hours after release and ramping linearly over ``ramp_h`` hours.
    Later releases take over from earlier ones.
    """
    n = len(ts)
    est = np.array(ctx.established)
    out = est[np.minimum(pref[acct], len(est) - 1)] if pref is not None else \
        np.full(n, est[0])
    d = np.asarray(delay_h, dtype=float)
    s = np.asarray(share, dtype=float)
    dl = d[acct] if d.ndim else d
    sh = s[acct] if s.ndim else s
    for t_rel, idx in ctx.releases:
        start = t_rel + dl * 3600.0
        ramp = np.clip((ts - start) / max(ramp_h * 3600.0, 1.0), 0.0, 1.0)
        use = (ts >= t_rel) & (rng.random(n) < sh * ramp)
        out = np.where(use, idx, out)
    return out.astype(np.int8)


def _est_pref(ctx: Ctx, rng: np.random.Generator, n: int, second: float = 0.3) -> np.ndarray:
    """Per-account established-model preference (0 = first, 1 = second when there is one)."""
    return (rng.random(n) < second).astype(np.int64) if len(ctx.established) > 1 else \
        np.zeros(n, np.int64)


class SeedStream:
    """A dataset walked without replacement (an operator never pays twice for one prompt).

    When the pool is exhausted it is reshuffled and every further prompt is lightly
    perturbed (new numbers, new lead/tail), as synthetic-data pipelines stretch seed sets.
    """

    def __init__(self, items: list[Item], rng: np.random.Generator,
                 fallback: Callable[[np.random.Generator], str] | None = None) -> None:
        self.items = items
        self.fallback = fallback
        self.order = rng.permutation(len(items)) if items else np.zeros(0, np.int64)
        self.pos = 0
        self.wraps = 0

    def next(self, rng: np.random.Generator) -> tuple[str, Item | None]:
        if not self.items:
            return (self.fallback(rng) if self.fallback else "Hello"), None
        if self.pos >= len(self.order):
            self.order = rng.permutation(len(self.items))
            self.pos = 0
            self.wraps += 1
        it = self.items[int(self.order[self.pos])]
        self.pos += 1
        text = it.turns[0]
        if self.wraps:
            text = perturb_text(text, it.category, rng)
        return text, it


def _capability_streams(ctx: Ctx, rng: np.random.Generator, side: str,
                        ) -> dict[str, SeedStream]:
    """Seed streams per capability from the world's distillation corpus (and generators)."""
    d = ctx.d_items
    code = [it for it in d if it.category == "coding"]
    math = [it for it in d if it.category == "math"]
    reason = [it for it in d if it.category == "reasoning"]
    general = [it for it in d if it.category not in ("coding", "math")] or d
    return {
        "coding": SeedStream(code, rng, lambda r: coding_task_side(r, side)),
        "agentic": SeedStream(code, rng, lambda r: coding_task_side(r, side)),
        "math": SeedStream(math or d, rng),
        "reasoning": SeedStream(reason, rng, lambda r: reasoning_task_side(r, side)),
        "general": SeedStream(general, rng),
    }


def _human_block(ctx: Ctx, rng: np.random.Generator, gidx: np.ndarray, *, rates: np.ndarray,
                 tz: np.ndarray, sampler, ip_fn: Callable[[np.ndarray, np.ndarray], list[str]],
                 uas: list[str], keys: list[str], systems: list[str | None],
                 adopt_at: np.ndarray, weekend: float = 0.55, max_turns: int = 6,
                 p_next: float = 0.45, turn_gap: float = 75.0,
                 night_rates: np.ndarray | None = None, noise: float = 0.35) -> Block:
    """Human chat sessions (``_human_requests``) with a per-request IP function.

    ``night_rates`` adds sessions in the accounts' *night* (the same diurnal curve shifted
    by 12 h): crunch time, insomnia, deadlines.
    """
    ts, acct, conv, turn, items = _human_requests(
        ctx, rng, rates, tz, sampler, max_turns=max_turns, p_next_conv=p_next,
        turn_gap=turn_gap, weekend=weekend)
    if night_rates is not None and float(night_rates.sum()) > 0:
        t2, a2, c2, u2, i2 = _human_requests(
            ctx, rng, night_rates, tz + 12.0, sampler, max_turns=max_turns,
            p_next_conv=p_next, turn_gap=turn_gap, weekend=weekend)
        ts, acct = np.concatenate([ts, t2]), np.concatenate([acct, a2])
        conv = np.concatenate([conv, c2 + len(items)])
        turn = np.concatenate([turn, u2])
        items = list(items) + list(i2)
    b = _ordinary_like_block(ctx, rng, gidx, ts, acct, conv, turn, items,
                             ips=[""] * len(uas), alt_ips=None, uas=uas, keys=keys,
                             systems=systems, adopt_at=adopt_at, noise=noise)
    b.ip = ip_fn(acct, ts)
    return b


def _own_ip_fn(rng: np.random.Generator, own: list[str], alt: list[str], alt_share: float = 0.15):
    def fn(acct: np.ndarray, ts: np.ndarray) -> list[str]:
        u = rng.random(len(acct)) < alt_share
        return [alt[a] if x else own[a] for a, x in zip(acct.tolist(), u.tolist(), strict=True)]
    return fn


def _local_weekend(ts: np.ndarray, tz: float | np.ndarray) -> np.ndarray:
    local_day = np.floor((ts + np.asarray(tz) * 3600.0) / DAY).astype(np.int64)
    return ((local_day + 3) % 7) >= 5


def _per_account_stream(ctx: Ctx, rng: np.random.Generator, rates: np.ndarray,
                        on: np.ndarray | None = None, off: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    ts_l, a_l = [], []
    for a, r in enumerate(rates.tolist()):
        t0 = ctx.t0 if on is None else float(on[a])
        t1 = ctx.t_end if off is None else float(off[a])
        t = machine_stream(rng, r, t0, t1, ctx.trace)
        ts_l.append(t)
        a_l.append(np.full(len(t), a, np.int64))
    if not ts_l:
        return np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(ts_l), np.concatenate(a_l)


def _block(ctx: Ctx, rng: np.random.Generator, gidx: np.ndarray, ts: np.ndarray,
           acct: np.ndarray, *, model: np.ndarray, ip: list[str], ua: list[str], key: list[str],
           msgs: list, system: list, tools: list | None = None, effort: list | None = None,
           out: np.ndarray, throttle: float = 0.005) -> Block:
    m = len(ts)
    return Block(ts, gidx[acct], model.astype(np.int8), ip, ua, key, msgs, system,
                 tools if tools is not None else [None] * m,
                 effort if effort is not None else [None] * m, out,
                 ctx.status(rng, m, throttle)).check()


# ---------------------------------------------------------------------------------------
# benign kinds
# ---------------------------------------------------------------------------------------


def gen_power_user(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Power users (hard negative): one person, very heavy use, some nights and weekends.

    Long multi-turn sessions (up to 12 turns), tens to hundreds of requests a day, weekend
    work, and for a share of them crunch sessions in their night, so volume and around-the-
    clock activity look automated; a share browse through a commercial VPN whose exits
    campaigns use too, a few pay through the world's virtual-card pool. Human content.

    params: ``night_share`` (0.3), ``vpn_share`` (0.15), ``vpn_pool`` ("vpn_dc"),
    ``card_pool_share`` (0.05).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    country = infra.countries(n)
    tz = tz_offsets(country)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=_cards(ctx, rng, infra, n, float(P.get("card_pool_share", 0.05))),
        signup=weighted(rng, {"standard": 80, "startup": 12, "research": 4, "education": 4}, n),
        created=ctx.t0 - rng.uniform(60, 1800, size=n) * DAY, country=country)
    own, alt = infra.residential(n, ipv6_share=0.08), infra.residential(n)
    vpn = rng.random(n) < float(P.get("vpn_share", 0.15))
    pool = _pool(ctx, rng, str(P.get("vpn_pool", "vpn_dc")), "datacenter", 200, 8)
    salt = int(rng.integers(1 << 30))
    own_fn = _own_ip_fn(rng, own, alt)

    def ip_fn(acct: np.ndarray, ts: np.ndarray) -> list[str]:
        p = _hash_pick(pool, acct, ts, 45.0, salt)
        o = own_fn(acct, ts)
        return [p[j] if vpn[a] else o[j] for j, a in enumerate(acct.tolist())]

    uas = [ua_browser(rng) if b else ua_sdk(rng) for b in (rng.random(n) < 0.5).tolist()]
    systems = [pick(rng, ORDINARY_SYSTEMS) if s else None
               for s in (rng.random(n) < 0.3).tolist()]
    sampler = TopicSampler(rng, n, _pools(ctx.chat_items),
                           {"coding": 0.4, "chat": 0.25, "writing": 0.2, "math": 0.15})
    rates = pop.rate * _activity(rng, n, 0.5)
    night = rng.random(n) < float(P.get("night_share", 0.3))
    return _human_block(ctx, rng, gidx, rates=rates, tz=tz, sampler=sampler, ip_fn=ip_fn,
                        uas=uas, keys=keys, systems=systems,
                        adopt_at=ctx.t_release + rng.exponential(0.8 * DAY, size=n),
                        weekend=0.8, max_turns=12, p_next=0.7, turn_gap=50.0,
                        night_rates=np.where(night, rates * 0.35, 0.0))


def gen_proxy_pool_user(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Ordinary users behind a commercial residential proxy / VPN (hard negative).

    Privacy-minded people whose every session leaves from the same rotating residential
    proxy pool (or datacenter VPN) that campaigns rent: many unrelated accounts per exit and
    per /24 over the week. Human timing and content, own cards, old accounts.

    params: ``pool`` ("resi_proxy"), ``pool_kind`` ("residential"), ``sticky_minutes`` (20).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    country = infra.countries(n)
    tz = tz_offsets(country)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=infra.payment(n), signup=weighted(rng, {"standard": 90, "startup": 5,
                                                       "education": 5}, n),
        created=ctx.t0 - rng.uniform(20, 1500, size=n) * DAY, country=country)
    kind = str(P.get("pool_kind", "residential"))
    pool = _pool(ctx, rng, str(P.get("pool", "resi_proxy")), kind, 2000, 8)
    minutes = float(P.get("sticky_minutes", 20.0))
    salt = int(rng.integers(1 << 30))
    uas = [ua_browser(rng) if b else ua_sdk(rng) for b in (rng.random(n) < 0.75).tolist()]
    sampler = TopicSampler(rng, n, _pools(ctx.chat_items),
                           {"chat": 0.45, "writing": 0.25, "coding": 0.2, "math": 0.1})
    return _human_block(ctx, rng, gidx, rates=pop.rate * _activity(rng, n), tz=tz,
                        sampler=sampler,
                        ip_fn=lambda a, t: _hash_pick(pool, a, t, minutes, salt), uas=uas,
                        keys=keys, systems=[None] * n,
                        adopt_at=ctx.t_release + rng.exponential(2.5 * DAY, size=n))


def gen_cgnat_users(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Mobile-carrier CGNAT users (hard negative): hundreds of people on a few addresses.

    Phone users of one or a few carriers whose traffic leaves through carrier-grade NAT: a
    handful of public addresses in one /24 per carrier carry hundreds of unrelated, often
    young accounts — a shared-IP cluster bigger than most hydras. Mobile browser and app user
    agents, human timing in the carrier's country, ordinary content.

    params: ``carriers`` (list of world pool names, ["cgnat_0"]), ``carrier_countries``.
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    carriers = list(P.get("carriers", ["cgnat_0"]))
    ccountry = list(P.get("carrier_countries", ["IN"] * len(carriers)))
    pools = [_pool(ctx, rng, c, "cgnat", 6) for c in carriers]
    car = rng.integers(0, len(carriers), size=n)
    country = np.array([ccountry[c % len(ccountry)] for c in car.tolist()])
    tz = tz_offsets(country)
    ids, keys = _ids(infra, n)
    pay = infra.payment(n)
    payment = [p if u < 0.7 else None for p, u in zip(pay, rng.random(n).tolist(), strict=True)]
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n), payment=payment,
        signup=weighted(rng, {"standard": 92, "education": 8}, n),
        created=ctx.t0 - rng.uniform(1, 900, size=n) * DAY, country=country)
    wifi = infra.residential(n)
    salt = int(rng.integers(1 << 30))

    def ip_fn(acct: np.ndarray, ts: np.ndarray) -> list[str]:
        u = rng.random(len(acct)) < 0.12
        h = (acct * 2654435761 + np.floor(ts / 900).astype(np.int64) * 97 + salt)
        return [wifi[a] if x else pools[car[a]][int(k) % len(pools[car[a]])]
                for a, x, k in zip(acct.tolist(), u.tolist(), h.tolist(), strict=True)]

    uas = [ua_mobile(rng) if b else ua_browser(rng) for b in (rng.random(n) < 0.85).tolist()]
    sampler = TopicSampler(rng, n, _pools(ctx.chat_items),
                           {"chat": 0.55, "writing": 0.2, "math": 0.15, "coding": 0.1})
    return _human_block(ctx, rng, gidx, rates=pop.rate * _activity(rng, n), tz=tz,
                        sampler=sampler, ip_fn=ip_fn, uas=uas, keys=keys, systems=[None] * n,
                        adopt_at=ctx.t_release + rng.exponential(3 * DAY, size=n),
                        weekend=0.85, noise=0.5)


def gen_corporate_proxy(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Employees behind a corporate / security-vendor proxy (hard negative).

    Staff of one or several companies whose traffic all leaves through one cloud egress
    (a few addresses in one /24) with one managed-browser user agent: dozens of accounts on
    one IP and one UA, company cards and org ids shared within each company. Office hours,
    weekdays, work content.

    params: ``n_companies`` (2), ``egress_ips`` (2).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    nc = max(1, int(P.get("n_companies", 2)))
    comp = rng.integers(0, nc, size=n)
    ccountry = infra.countries(nc, {"US": 4, "GB": 2, "DE": 2, "FR": 1, "IN": 2, "JP": 1,
                                    "NL": 1, "SG": 1})
    country = ccountry[comp]
    corgs, ccards = infra.org_ids(nc), infra.payment(nc)
    own_org, own_card = infra.org_ids(n), infra.payment(n)
    u1, u2 = rng.random(n), rng.random(n)
    ids, keys = _ids(infra, n)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="",
        org=[corgs[c] if u < 0.7 else own_org[i] for i, (c, u) in
             enumerate(zip(comp.tolist(), u1.tolist(), strict=True))],
        payment=[ccards[c] if u < 0.6 else own_card[i] for i, (c, u) in
                 enumerate(zip(comp.tolist(), u2.tolist(), strict=True))],
        signup=weighted(rng, {"standard": 70, "startup": 30}, n),
        created=ctx.t0 - rng.uniform(30, 1200, size=n) * DAY, country=country)
    egress = infra.in_block(infra.block24(cloud=True), max(1, int(P.get("egress_ips", 2))))
    ua = ua_browser(rng)
    salt = int(rng.integers(1 << 30))
    sampler = TopicSampler(rng, n, _pools(ctx.chat_items),
                           {"coding": 0.35, "writing": 0.35, "chat": 0.2, "math": 0.1})
    return _human_block(ctx, rng, gidx, rates=pop.rate * _activity(rng, n, 0.7),
                        tz=tz_offsets(country), sampler=sampler,
                        ip_fn=lambda a, t: _hash_pick(egress, a, t, 5.0, salt), uas=[ua] * n,
                        keys=keys, systems=[None] * n,
                        adopt_at=ctx.t_release + rng.exponential(2 * DAY, size=n),
                        weekend=0.1)


def gen_startup_shared_card(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Startups sharing one card across a few accounts (hard negative).

    Small teams (2–8 accounts) on one payment fingerprint, young accounts with startup
    signup, coding-heavy use from home and from the team's cloud range, quick to try new
    models; a few run a prototype backend (one system prompt, single-turn, round the clock).

    params: ``team_size`` ((2, 8)), ``backend_share`` (0.2).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    lo, hi = P.get("team_size", (2, 8))
    team = np.zeros(n, np.int64)
    t, i = 0, 0
    while i < n:
        k = int(rng.integers(lo, hi + 1))
        team[i:i + k] = t
        i += k
        t += 1
    nt = t
    cards, orgs = infra.payment(nt), infra.org_ids(nt)
    tcountry = infra.countries(nt)
    tbase = ctx.t0 - rng.uniform(3, 150, size=nt) * DAY
    ids, keys = _ids(infra, n)
    own_org = infra.org_ids(n)
    country = tcountry[team]
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="",
        org=[orgs[t] if u < 0.5 else own_org[j] for j, (t, u) in
             enumerate(zip(team.tolist(), rng.random(n).tolist(), strict=True))],
        payment=[cards[t] for t in team.tolist()],
        signup=weighted(rng, {"startup": 70, "standard": 30}, n),
        created=tbase[team] + rng.uniform(0, 5, size=n) * DAY, country=country)
    home = infra.residential(n)
    tcloud = [infra.cloud(3) for _ in range(nt)]
    uas = [ua_sdk(rng) if b else ua_browser(rng) for b in (rng.random(n) < 0.7).tolist()]
    side = _side(ctx)

    def ip_fn(acct: np.ndarray, ts: np.ndarray) -> list[str]:
        u = rng.random(len(acct)) < 0.3
        return [pick(rng, tcloud[team[a]]) if x else home[a]
                for a, x in zip(acct.tolist(), u.tolist(), strict=True)]

    sampler = TopicSampler(rng, n, _pools(ctx.chat_items),
                           {"coding": 0.6, "writing": 0.15, "chat": 0.15, "math": 0.1})
    blocks = [_human_block(ctx, rng, gidx, rates=pop.rate * _activity(rng, n, 0.7),
                           tz=tz_offsets(country), sampler=sampler, ip_fn=ip_fn, uas=uas,
                           keys=keys, systems=[None] * n,
                           adopt_at=ctx.t_release + rng.exponential(0.5 * DAY, size=n),
                           weekend=0.6)]
    backend = np.flatnonzero(rng.random(n) < float(P.get("backend_share", 0.2)))
    systems = half(APP_SYSTEMS, side)
    for a in backend.tolist():
        t = machine_stream(rng, pop.rate * 1.5, ctx.t0, ctx.t_end, ctx.trace)
        m = len(t)
        items = pick(rng, ctx.chat_items, m)
        sy = pick(rng, systems)
        ua = ua_sdk(rng, "openai-node")
        acct = np.full(m, a)
        blocks.append(_block(
            ctx, rng, gidx, t, acct, model=ctx.model_for(rng, t), ip=pick(rng, tcloud[team[a]], m),
            ua=[ua] * m, key=[keys[a]] * m,
            msgs=[[{"role": "user", "content": it.turns[0]}] for it in items], system=[sy] * m,
            out=ctx.out_tokens(rng, m, "chat")))
    return _concat(blocks)


def gen_fast_adopter(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Fast-adopter developers (hard negative): capability probes, new model within hours.

    Developers evaluating models for their product: bursts of distinct single-turn coding,
    math and reasoning prompts (the same kind of text distillation harvests, including
    public seed sets), a tenth with "think step by step"-style suffixes, high reasoning
    effort on the new model, most traffic moved to every new model within hours of its
    release. Young accounts, startup/education signups, SDK user agents. Human working
    hours, own IPs, own cards.

    params: ``share`` ((0.7, 0.95): traffic moved), ``delay_hours`` ((0.2, 6)),
    ``cot_share`` (0.1).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    side = _side(ctx)
    ids, keys = _ids(infra, n)
    country = infra.countries(n)
    tz = tz_offsets(country)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=infra.payment(n),
        signup=weighted(rng, {"startup": 40, "education": 25, "standard": 35}, n),
        created=ctx.t0 - rng.uniform(2, 90, size=n) * DAY, country=country)
    k_mean = 6.0
    acct, start = human_sessions(rng, pop.rate * _activity(rng, n, 0.6) / k_mean, tz, ctx.t0,
                                 ctx.scenario.days, weekend_factor=0.4)
    k = rng.geometric(1 / k_mean, size=len(acct))
    ts = np.repeat(start, k) + grouped_cumsum(
        _first_zero(rng.lognormal(np.log(40), 0.8, size=int(k.sum())), k), k)
    acct = np.repeat(acct, k)
    keep = ts < ctx.t_end
    ts, acct = ts[keep], acct[keep]
    m = len(ts)
    legit_code = [it for it in ctx.chat_items if it.category == "coding"]
    legit_math = [it for it in ctx.chat_items if it.category == "math"]
    streams = _capability_streams(ctx, rng, side)
    mine = {"coding": SeedStream(legit_code, rng, lambda r: coding_task_side(r, side)),
            "math": SeedStream(legit_math, rng)}
    caps = weighted(rng, {"coding": 0.5, "math": 0.25, "reasoning": 0.25}, m).tolist()
    use_mine = (rng.random(m) < 0.5).tolist()
    cot = (rng.random(m) < float(P.get("cot_share", 0.1))).tolist()
    fmts = half(EVAL_COT_FORMATS, side)
    msgs, profile = [], []
    for c, um, ct in zip(caps, use_mine, cot, strict=True):
        src = mine.get(c) if um and c in mine and mine[c].items else streams[c]
        text, _ = src.next(rng)
        if ct:
            text = pick(rng, fmts).format(q=text)
        msgs.append([{"role": "user", "content": text}])
        profile.append("code" if c == "coding" else "cot" if ct else "chat")
    lo, hi = P.get("share", (0.7, 0.95))
    dlo, dhi = P.get("delay_hours", (0.2, 6.0))
    model = _lineup_models(ctx, rng, ts, acct, delay_h=rng.uniform(dlo, dhi, size=n),
                           share=rng.uniform(lo, hi, size=n), ramp_h=2.0,
                           pref=_est_pref(ctx, rng, n))
    new = np.isin(model, [i for _, i in ctx.releases])
    eff = np.where(new & (rng.random(m) < 0.6), "high", None).tolist()
    prof = np.array(profile)
    out = np.where(prof == "code", ctx.out_tokens(rng, m, "code"),
                   np.where(prof == "cot", ctx.out_tokens(rng, m, "cot"),
                            ctx.out_tokens(rng, m, "chat")))
    ips = infra.residential(n)
    cloud = infra.cloud(n, n_blocks=4)
    use_cloud = rng.random(n) < 0.2
    uas = [ua_sdk(rng, pick(rng, ["openai-python", "httpx", "openai-node"])) for _ in range(n)]
    al = acct.tolist()
    return _block(ctx, rng, gidx, ts, acct, model=model,
                  ip=[cloud[a] if use_cloud[a] else ips[a] for a in al],
                  ua=[uas[a] for a in al], key=[keys[a] for a in al], msgs=msgs,
                  system=[None] * m, effort=eff, out=out, throttle=0.01)


def gen_agent_framework(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Users of one popular agent framework (hard negative): a shared system prompt and tools.

    Many unrelated accounts run the same open-source agent framework, so every request
    carries the framework's identical system prompt and tool schema and a near-identical
    user agent — one template across hundreds of accounts, agentic tool loops with growing
    transcripts. Human-driven sessions in working hours, own residential IPs, own cards,
    old accounts, tasks of their own (research questions, their repositories).

    params: ``framework`` (index into the side's framework list, 0), ``max_steps`` (20).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    side = _side(ctx)
    fws = frameworks(side)
    name, ua_t, system, tool_names = fws[int(P.get("framework", 0)) % len(fws)]
    tools = [EXTRA_TOOLS[t] for t in tool_names]
    ids, keys = _ids(infra, n)
    country = infra.countries(n)
    tz = tz_offsets(country)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=infra.payment(n), signup=weighted(rng, {"standard": 75, "startup": 25}, n),
        created=ctx.t0 - rng.uniform(30, 1000, size=n) * DAY, country=country)
    uas = [ua_t.format(v=int(rng.integers(1, 10))) for _ in range(n)]
    mean_steps = 7.0
    acct, start = human_sessions(rng, pop.rate * _activity(rng, n, 0.7) / mean_steps, tz,
                                 ctx.t0, ctx.scenario.days, weekend_factor=0.35)
    steps = np.minimum(int(P.get("max_steps", 20)),
                       1 + rng.geometric(1 / (mean_steps - 1), size=len(acct)))
    req_s = np.repeat(np.arange(len(acct)), steps)
    k = _grouped_arange(steps)
    ts = start[req_s] + grouped_cumsum(
        _first_zero(rng.lognormal(np.log(12), 0.7, size=len(req_s)), steps), steps)
    keep = ts < ctx.t_end
    ts, req_s, k = ts[keep], req_s[keep], k[keep]
    coding = any(t in tool_names for t in ("run_shell", "edit_file"))
    tasks = []
    for _ in range(len(acct)):
        if coding and rng.random() < 0.6:
            tasks.append(repo_task(rng))
        else:
            tasks.append(human_noise(pick(rng, ctx.chat_items).turns[0], rng, 0.4))
    hist: dict[int, list[dict]] = {}
    msgs = []
    for s, kk in zip(req_s.tolist(), k.tolist(), strict=True):
        h = hist.setdefault(s, [{"role": "user", "content": tasks[s]}])
        while (len(h) - 1) // 2 < kk:
            h.extend(framework_round(rng, len(h), tool_names))
        msgs.append(h[: 1 + 2 * kk])
    a = acct[req_s]
    m = len(ts)
    ips = infra.residential(n)
    return _block(ctx, rng, gidx, ts, a,
                  model=ctx.model_for(rng, ts, adopt_at=(ctx.t_release + rng.exponential(
                      1.5 * DAY, size=n))[a], adopt_share=0.6),
                  ip=[ips[x] for x in a.tolist()], ua=[uas[x] for x in a.tolist()],
                  key=[keys[x] for x in a.tolist()], msgs=msgs, system=[system] * m,
                  tools=[tools] * m, out=ctx.out_tokens(rng, m, "code"), throttle=0.01)


def gen_tutoring_app(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """A tutoring / education app backend (hard negative): one key, many students.

    Each account is one app whose backend forwards its students' math questions under one
    key: high volume in a school-hours rhythm (classes, then homework in the evening, quiet
    weekends), worked-solution prompts with "show your reasoning step by step" wording —
    chain-of-thought elicitation by the letter — one tutoring system prompt, follow-up
    questions, cloud egress, SDK user agent, education signup.

    params: ``followup_share`` (0.2).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    side = _side(ctx)
    ids, keys = _ids(infra, n)
    country = infra.countries(n, {"US": 4, "IN": 3, "GB": 1, "BR": 1, "ID": 1, "DE": 1,
                                  "MX": 1, "PH": 1})
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=infra.payment(n), signup=weighted(rng, {"education": 60, "startup": 40}, n),
        created=ctx.t0 - rng.uniform(100, 900, size=n) * DAY, country=country)
    tz = tz_offsets(country)
    ts_l, a_l = [], []
    for a in range(n):
        t = machine_stream(rng, pop.rate * 2.6 * _activity(rng, 1, 0.3)[0], ctx.t0, ctx.t_end,
                           ctx.trace)
        t = t[diurnal_thin(rng, t, tz[a], floor=0.02, diurnal=SCHOOL)]
        t = t[~_local_weekend(t, tz[a]) | (rng.random(len(t)) < 0.3)]
        ts_l.append(t)
        a_l.append(np.full(len(t), a, np.int64))
    ts, acct = np.concatenate(ts_l), np.concatenate(a_l)
    m = len(ts)
    tmpl = half(TUTOR_TEMPLATES, side)
    sys_ = half(TUTOR_SYSTEMS, side)
    app_t = [pick(rng, tmpl) for _ in range(n)]
    app_s = [pick(rng, sys_) for _ in range(n)]
    math = [it for it in ctx.chat_items if it.category == "math"] + ctx.d_math
    fu = (rng.random(m) < float(P.get("followup_share", 0.2))).tolist()
    msgs = []
    for a, f in zip(acct.tolist(), fu, strict=True):
        q = human_noise(pick(rng, math).turns[0], rng, 0.3)
        first = {"role": "user", "content": app_t[a].format(q=q)}
        if f:
            msgs.append([first, {"role": "assistant", "content": ctx.reply(rng)},
                         {"role": "user", "content": pick(rng, TUTOR_FOLLOWUPS)}])
        else:
            msgs.append([first])
    ips = [infra.cloud(3) for _ in range(n)]
    uas = [ua_sdk(rng, pick(rng, ["openai-python", "openai-node"])) for _ in range(n)]
    adopt = ctx.t_release + rng.uniform(1, 4, size=n) * DAY
    al = acct.tolist()
    return _block(ctx, rng, gidx, ts, acct,
                  model=ctx.model_for(rng, ts, adopt_at=adopt[acct], adopt_share=0.8),
                  ip=[pick(rng, ips[a]) for a in al], ua=[uas[a] for a in al],
                  key=[keys[a] for a in al], msgs=msgs, system=[app_s[a] for a in al],
                  out=ctx.out_tokens(rng, m, "cot"))


def gen_eval_cot(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Evaluation harness with chain-of-thought prompting on every model (hard negative).

    A lab re-runs public benchmarks (MT-Bench/Vicuna questions, GSM8K-style math, coding
    items) with chain-of-thought formats ("Let's think step by step", "show your chain of
    thought") nightly on every model, and on each new model within hours of its release with
    several samples per item — CoT wording, a pivot to every release, bursts at volume.
    Repeats the same suite (what separates it from harvesting). Cloud IPs, SDK, research
    signup, old accounts.

    params: ``suite_size`` (300), ``runs_per_day`` (1), ``samples`` (3).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    side = _side(ctx)
    ids, keys = _ids(infra, n)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=infra.payment(n), signup=weighted(rng, {"research": 3, "standard": 1}, n),
        created=ctx.t0 - rng.uniform(200, 1200, size=n) * DAY,
        country=weighted(rng, {"US": 5, "GB": 1, "DE": 1, "CH": 1, "CA": 1, "FR": 1}, n))
    suite_size = max(10, int(P.get("suite_size", 300)))
    runs_per_day = float(P.get("runs_per_day", 1.0))
    samples = max(1, int(P.get("samples", 3)))
    fmts = half(EVAL_COT_FORMATS, side)
    code = [it for it in ctx.d_items if it.category == "coding"]
    cols: dict[str, list] = {k: [] for k in ("ts", "acct", "model", "ip", "ua", "msgs")}
    for a in range(n):
        ips = infra.cloud(3)
        ua = ua_sdk(rng, pick(rng, ["openai-python", "httpx", "aiohttp"]))
        fmt = pick(rng, fmts)
        pool = list(ctx.bench_items) + [pick(rng, ctx.d_math) for _ in range(suite_size // 2)] \
            + [pick(rng, code) for _ in range(suite_size // 6 if code else 0)]
        order = rng.permutation(len(pool))[:suite_size]
        suite = [fmt.format(q=pool[i].turns[0]) for i in order.tolist()]
        hour = rng.uniform(0, 6)
        runs: list[tuple[float, int, int]] = []
        for d in range(int(np.ceil(ctx.scenario.days))):
            for r in range(max(1, int(rng.poisson(runs_per_day)))):
                s = ctx.t0 + d * DAY + (hour + rng.uniform(0, 20) * (r > 0)) * 3600
                for j, mi in enumerate(ctx.established):
                    runs.append((s + j * 900, mi, 1))
                for t_rel, mi in ctx.releases:
                    if s >= t_rel:
                        runs.append((s + rng.uniform(900, 3600), mi, 1))
        for t_rel, mi in ctx.releases:
            runs.append((t_rel + rng.uniform(0.2, 3) * 3600, mi, samples))
        for s, mi, k in runs:
            reqs = suite * k
            t = s + np.cumsum(rng.exponential(0.4, size=len(reqs)))
            cols["ts"].extend(t.tolist())
            cols["acct"].extend([a] * len(reqs))
            cols["model"].extend([mi] * len(reqs))
            cols["ip"].extend(pick(rng, ips, len(reqs)))
            cols["ua"].extend([ua] * len(reqs))
            cols["msgs"].extend([[{"role": "user", "content": q}] for q in reqs])
    ts = np.array(cols["ts"])
    model = np.array(cols["model"], dtype=np.int64)
    avail = np.full(len(ctx.scenario.models), ctx.t0)
    for t_rel, mi in ctx.releases:
        avail[mi] = t_rel
    keep = np.flatnonzero((ts >= ctx.t0) & (ts < ctx.t_end) & (ts >= avail[model]))
    acct = np.array(cols["acct"], dtype=np.int64)[keep]
    sel = lambda c: [cols[c][i] for i in keep.tolist()]  # noqa: E731
    m = len(keep)
    return _block(ctx, rng, gidx, ts[keep], acct, model=model[keep], ip=sel("ip"),
                  ua=sel("ua"), key=[keys[a] for a in acct.tolist()], msgs=sel("msgs"),
                  system=[None] * m, out=ctx.out_tokens(rng, m, "cot"), throttle=0.01)


def gen_judge_lab(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """LLM-as-judge lab (hard negative): rubric grading and pairwise preference at volume.

    A research team uses the model as an automatic judge for its own models' outputs:
    MT-Bench-style "[[rating]]" grading, pairwise "[[A]]/[[B]]" verdicts, rubric JSON scores
    and reference-guided grading, in batch jobs of hundreds of items — reward-model-like
    use, legitimately. One lab org and card, cloud IPs, SDK, research signup, old accounts.

    params: ``jobs_per_day`` (2.0).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    side = _side(ctx)
    ids, keys = _ids(infra, n)
    country = str(weighted(rng, {"US": 4, "GB": 1, "SG": 1, "DE": 1, "CA": 1}, 1)[0])
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(1)[0],
        payment=infra.payment(1)[0], signup=weighted(rng, {"research": 4, "standard": 1}, n),
        created=ctx.t0 - rng.uniform(150, 1000, size=n) * DAY, country=country)
    tmpls = half(JUDGE_TEMPLATES, side)
    jpd = float(P.get("jobs_per_day", 2.0))
    ips = infra.cloud(6, n_blocks=1)
    uas = [ua_sdk(rng, pick(rng, ["openai-python", "httpx"])) for _ in range(n)]
    tz = tz_offsets(np.array([country]))[0]
    qs = [it for it in ctx.legit.items if it.category != "meta_generation"] or ctx.chat_items
    cols: dict[str, list] = {k: [] for k in ("ts", "acct", "msgs")}
    for a in range(n):
        nd = int(np.ceil(ctx.scenario.days))
        for d in range(nd):
            for _ in range(int(rng.poisson(jpd * (0.4 if _local_weekend(
                    np.array([ctx.t0 + d * DAY]), tz)[0] else 1.0)))):
                size = max(5, int(pop.rate / max(jpd, 0.1) * rng.uniform(0.5, 1.5)))
                s = ctx.t0 + d * DAY + (rng.uniform(8, 20) - tz) * 3600
                t = s + np.cumsum(rng.exponential(1.2, size=size))
                tmpl = pick(rng, tmpls)
                rub = "\n".join(f"- {c}" for c in rng.choice(JUDGE_RUBRIC, size=3,
                                                           replace=False).tolist())
                for ti in t.tolist():
                    it = pick(rng, qs)
                    ref = it.answer or (it.replies[0] if it.replies else ctx.reply(rng))
                    text = tmpl.format(q=it.turns[0], a=ctx.reply(rng), b=ctx.reply(rng),
                                       ref=ctx._cut(ref), rubric=rub)
                    cols["ts"].append(ti)
                    cols["acct"].append(a)
                    cols["msgs"].append([{"role": "user", "content": text}])
    ts = np.array(cols["ts"])
    keep = np.flatnonzero((ts >= ctx.t0) & (ts < ctx.t_end))
    ts = ts[keep]
    acct = np.array(cols["acct"], dtype=np.int64)[keep]
    m = len(keep)
    al = acct.tolist()
    adopt = ctx.t_release + rng.uniform(0.5, 3, size=n) * DAY
    return _block(ctx, rng, gidx, ts, acct,
                  model=ctx.model_for(rng, ts, adopt_at=adopt[acct], adopt_share=0.3),
                  ip=pick(rng, ips, m), ua=[uas[a] for a in al], key=[keys[a] for a in al],
                  msgs=[cols["msgs"][i] for i in keep.tolist()], system=[None] * m,
                  out=ctx.out_tokens(rng, m, "grade"), throttle=0.01)


def gen_translation_batch(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Translation batch jobs (hard negative): one template, high volume, long outputs.

    Localisation pipelines push documents through one fixed template per job around the
    clock; completions are as long as the documents (unlike enterprise extraction jobs), so
    one template, volume, 24/7 activity *and* long outputs all look like harvesting.
    Cloud IPs, SDK user agent, old accounts, pinned to an established model.
    """
    infra = Infra(rng)
    n = pop.n_accounts
    side = _side(ctx)
    ids, keys = _ids(infra, n)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=infra.payment(n), signup=weighted(rng, {"standard": 3, "startup": 1}, n),
        created=ctx.t0 - rng.uniform(200, 1500, size=n) * DAY,
        country=infra.countries(n, {"US": 2, "DE": 2, "NL": 1, "IE": 1, "JP": 1, "FR": 1}))
    tmpls = half(TRANSLATE_TEMPLATES, side)
    rates = pop.rate * _activity(rng, n, 0.3)
    ts, acct = _per_account_stream(ctx, rng, rates * 1.3)
    keep = diurnal_thin(rng, ts, 1.0, floor=0.6)
    ts, acct = ts[keep], acct[keep]
    m = len(ts)
    tm = [pick(rng, tmpls) for _ in range(n)]
    lang = [pick(rng, TRANSLATE_LANGS) for _ in range(n)]
    docs = [r[:ln] for r, ln in zip(pick(rng, ctx.reply_pool, m),
                                    rng.integers(250, 2000, size=m).tolist(), strict=True)]
    al = acct.tolist()
    msgs = [[{"role": "user", "content": tm[a].format(lang=lang[a], doc=d)}]
            for a, d in zip(al, docs, strict=True)]
    out = (np.array([len(d) for d in docs]) / 3.6 * rng.uniform(1.0, 1.5, size=m)).astype(
        np.int64) + 5
    ips = infra.cloud(4)
    uas = [ua_sdk(rng, pick(rng, ["requests", "openai-python", "go"])) for _ in range(n)]
    return _block(ctx, rng, gidx, ts, acct, model=np.zeros(m, np.int8), ip=pick(rng, ips, m),
                  ua=[uas[a] for a in al], key=[keys[a] for a in al], msgs=msgs,
                  system=[None] * m, out=out, throttle=0.005)


def gen_reseller_customers(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """A legitimate reseller (hard negative): a pool of accounts relaying real customers.

    An AI-chat product resells API access: its customers' browser traffic (passed-through
    browser user agents, real multi-turn conversations, a product system prompt) is
    load-balanced over a pool of accounts registered in batches, from a few relay servers,
    some paid with cards from the world's virtual-card pool that campaigns use too. It looks
    exactly like a proxy reseller — minus the scripted harvest.

    params: ``customer_tz`` (8.0), ``card_pool_share`` (0.5), ``relay_pool`` (None: own relay
    servers; a world pool name to relay through shared exits).
    """
    P = pop.params
    infra = Infra(rng)
    n = pop.n_accounts
    side = _side(ctx)
    ids, keys = _ids(infra, n)
    nb = max(1, n // 8)
    bt = ctx.t0 - rng.uniform(20, 400, size=nb) * DAY
    created = bt[rng.integers(0, nb, size=n)] + rng.uniform(0, 3 * 3600, size=n)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=_cards(ctx, rng, infra, n, float(P.get("card_pool_share", 0.5))),
        signup=weighted(rng, {"startup": 60, "standard": 40}, n), created=created,
        country=weighted(rng, {"US": 3, "SG": 2, "HK": 2, "GB": 1, "DE": 1}, n))
    tz = float(P.get("customer_tz", 8.0))
    ts = machine_stream(rng, n * pop.rate * 1.9, ctx.t0, ctx.t_end, ctx.trace)
    ts = ts[diurnal_thin(rng, ts, tz)]
    acct = rng.integers(0, n, size=len(ts))
    m = len(ts)
    relay = P.get("relay_pool")
    pool = ctx.shared_pool(str(relay)) if relay and str(relay) in {
        p[0] for p in ctx.scenario.shared_pools} else infra.cloud(int(P.get("relay_ips", 10)),
                                                                  n_blocks=2)
    systems = half(APP_SYSTEMS, side) + list(RESELLER_SYSTEMS[:3])
    sy = pick(rng, systems)
    msgs = []
    for _ in range(m):
        it = pick(rng, ctx.chat_items)
        msgs.append(ctx.conversation(it, int(rng.integers(len(it.turns))), rng))
    al = acct.tolist()
    return _block(ctx, rng, gidx, ts, acct, model=ctx.model_for(
        rng, ts, adopt_at=np.full(m, ctx.t_release + rng.uniform(0.2, 2) * DAY), adopt_share=0.5),
        ip=pick(rng, pool, m), ua=[ua_browser(rng) for _ in range(m)],
        key=[keys[a] for a in al], msgs=msgs, system=[sy] * m,
        out=ctx.out_tokens(rng, m, "chat"), throttle=0.01)


# ---------------------------------------------------------------------------------------
# campaigns
# ---------------------------------------------------------------------------------------


def _campaign_cards(ctx: Ctx, rng: np.random.Generator, infra: Infra, n: int,
                    P: dict) -> list[str]:
    mode = str(P.get("cards", "group"))
    own = infra.payment(n)
    if mode == "own":
        return own
    if mode == "pool":
        pool = _pool(ctx, rng, str(P.get("card_pool", "card_pool")), "card", 30)
        share = float(P.get("pool_card_share", 0.7))
        return [pick(rng, pool) if u < share else c
                for u, c in zip(rng.random(n).tolist(), own, strict=True)]
    g = max(1, int(P.get("pay_group", 8)))
    cards = infra.payment(max(1, -(-n // g)))
    return [c if u < 0.1 else pick(rng, cards)
            for u, c in zip(rng.random(n).tolist(), own, strict=True)]


def _window_deal(rng: np.random.Generator, ts: np.ndarray, on: np.ndarray, off: np.ndarray,
                 start_utc_h: np.ndarray, hours: float) -> tuple[np.ndarray, np.ndarray]:
    """Deal a stream to accounts that are in their daily window (follow-the-sun shifts)."""
    n = len(on)
    acct = rng.integers(0, n, size=len(ts))

    def ok(a: np.ndarray, t: np.ndarray) -> np.ndarray:
        return (t >= on[a]) & (t < off[a]) & (((t / 3600.0 - start_utc_h[a]) % 24.0) < hours)

    for _ in range(25):
        bad = ~ok(acct, ts)
        if not bad.any():
            break
        acct[bad] = rng.integers(0, n, size=int(bad.sum()))
    keep = ok(acct, ts)
    return ts[keep], acct[keep]


def _campaign_timing(ctx: Ctx, rng: np.random.Generator, P: dict, n: int, urate: float,
                     on: np.ndarray, off: np.ndarray, tz: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Unit arrivals ``(ts, acct, model or None)`` for the campaign's timing mode."""
    mode = str(P.get("timing", "sync"))
    if urate <= 0 or n == 0:
        return np.zeros(0), np.zeros(0, np.int64), None
    if mode == "sync":
        pause = float(P.get("pause_hours", 1.5))
        duty = P.get("duty")
        ts = _campaign_stream(ctx, rng, n * urate, on,
                              pause_hours=(rng.uniform(0, 24), pause) if pause > 0 else None,
                              duty=float(duty) if duty else None)
        sh = P.get("shift_hours")
        ts, acct = _deal(rng, ts, on, off, weight_sigma=0.5,
                         shift_hours=float(sh) if sh else None)
        return ts, acct, None
    if mode == "jitter":
        sleep = float(P.get("sleep_hours", 6.0))
        rates = urate * _activity(rng, n, 0.5) * 24.0 / max(24.0 - sleep, 1.0)
        ts, acct = _per_account_stream(ctx, rng, rates, on, off)
        phase = rng.uniform(0, 24, size=n)
        keep = ((ts / 3600.0 - phase[acct]) % 24.0) >= sleep
        return ts[keep], acct[keep], None
    if mode == "sun":
        hours = float(P.get("work_hours", 10.0))
        ts = machine_stream(rng, n * urate, float(on.min()), ctx.t_end, ctx.trace)
        start = (9.0 - tz + rng.normal(0, 1, size=n)) % 24.0
        ts, acct = _window_deal(rng, ts, on, off, start, hours)
        return ts, acct, None
    if mode == "human":
        k_mean = 4.0
        acct, start = human_sessions(rng, urate * _activity(rng, n, 0.4) / k_mean, tz, ctx.t0,
                                     ctx.scenario.days, active_from=on, weekend_factor=0.7)
        k = rng.geometric(1 / k_mean, size=len(acct))
        ts = np.repeat(start, k) + grouped_cumsum(
            _first_zero(rng.lognormal(np.log(100), 0.7, size=int(k.sum())), k), k)
        acct = np.repeat(acct, k)
        keep = (ts < off[acct]) & (ts < ctx.t_end)
        return ts[keep], acct[keep], None
    if mode == "swell":
        app_tz = float(P.get("app_tz", rng.uniform(-8, 9)))
        ts, acct = _per_account_stream(ctx, rng, urate * 1.7 * _activity(rng, n, 0.3), on, off)
        keep = diurnal_thin(rng, ts, app_tz, floor=0.35)
        return ts[keep], acct[keep], None
    if mode == "school":
        app_tz = float(P.get("app_tz", rng.uniform(-6, 8)))
        ts, acct = _per_account_stream(ctx, rng, urate * 2.6 * _activity(rng, n, 0.3), on, off)
        keep = diurnal_thin(rng, ts, app_tz, floor=0.02, diurnal=SCHOOL)
        keep &= ~_local_weekend(ts, app_tz) | (rng.random(len(ts)) < 0.3)
        return ts[keep], acct[keep], None
    if mode == "bursts":  # nightly runs on every model + a run on each release (eval-like)
        rel_at = {mi: t for t, mi in ctx.releases}
        ts_l, a_l, m_l = [], [], []
        nd = int(np.ceil(ctx.scenario.days))
        for a in range(n):
            hour = rng.uniform(0, 6)
            runs: list[tuple[float, int]] = []
            for d in range(nd):
                s = ctx.t0 + d * DAY + hour * 3600
                runs += [(s + j * 900, mi) for j, mi in enumerate(ctx.established)]
                runs += [(s + rng.uniform(900, 3600), mi) for mi, t in rel_at.items() if s >= t]
            runs += [(t + rng.uniform(0.3, 4) * 3600, mi) for mi, t in rel_at.items()]
            per = urate * ctx.scenario.days / max(len(runs), 1)
            for s, mi in runs:
                k = int(rng.poisson(per))
                t = s + np.cumsum(rng.exponential(0.6, size=k))
                ts_l.append(t)
                a_l.append(np.full(k, a, np.int64))
                m_l.append(np.full(k, mi, np.int64))
        ts, acct, model = np.concatenate(ts_l), np.concatenate(a_l), np.concatenate(m_l)
        keep = (ts >= on[acct]) & (ts < off[acct]) & (ts < ctx.t_end)
        return ts[keep], acct[keep], model[keep]
    raise ValueError(f"unknown campaign timing mode {mode!r}")


class _Renderer:
    """A campaign's prompt factory: house wrappers, elicitation families, paraphrase knob."""

    def __init__(self, ctx: Ctx, rng: np.random.Generator, P: dict, paraphrase_p: float,
                 side: str) -> None:
        self.ctx, self.p, self.side = ctx, paraphrase_p, side
        self.style = str(P.get("style", "natural"))
        self.lang = dict(P.get("languages", {"en": 1.0}))
        fams = ctx.bank.families
        self.house: dict[str, list[tuple[str, str]]] = {}
        wanted = set(P.get("elicit_mix", {})) | {"plain"}
        for fam in sorted(wanted):
            if fam not in fams:
                continue
            vs = []
            for _ in range(2):
                lang, t = ctx.bank.pick(fam, rng, self.lang)
                vs.append((lang, paraphrase(t, lang, rng, 0.4)))
            self.house[fam] = vs
        plain = fams.get("plain") or list(PLAIN)
        self.plain_all = plain
        if self.style == "eval_format":
            self.wrap = [pick(rng, half(EVAL_COT_FORMATS, side))]
        elif self.style == "tutor":
            self.wrap = [pick(rng, half(TUTOR_TEMPLATES, side))]
        else:
            self.wrap = []

    def plain(self, task: str, rng: np.random.Generator) -> str:
        if self.wrap:
            return self.wrap[0].format(q=task)
        if self.style == "natural":
            return human_noise(task, rng, 0.15)
        if self.style == "templated" and rng.random() >= self.p:
            _, t = self.house["plain"][0] if "plain" in self.house else pick(rng, self.plain_all)
            return t.format_map({"task": task})
        lang, t = pick(rng, self.plain_all)
        return paraphrase(t, lang, rng, 0.8).format_map({"task": task})

    def elicit(self, fam: str, task: str, item: Item | None, rng: np.random.Generator) -> str:
        ctx = self.ctx
        if fam not in ctx.bank.families:
            fam = "cot_trace" if "cot_trace" in ctx.bank.families else "plain"
        if fam in self.house and rng.random() >= self.p:
            lang, t = pick(rng, self.house[fam])
        else:
            lang, t = ctx.bank.pick(fam, rng, self.lang)
            t = paraphrase(t, lang, rng, 0.7)
        ans = (item.answer if item is not None and item.answer else None) or ctx.reply(rng)
        fill = {"task": task, "response": ctx._cut(ans), "response_b": ctx.reply(rng),
                "topic": pick(rng, SENSITIVE_TOPICS)}
        if "{rubric}" in t:
            fill["rubric"] = rubric_text(lang, rng)
        if "{partial}" in t:
            lines = [ln for ln in ans.split("\n") if ln.strip()]
            cut = max(1, len(lines) // 2) if len(lines) > 1 else 0
            fill["partial"] = "\n".join(lines[:cut]) if cut else ans[: max(20, len(ans) // 2)]
        return t.format_map(fill)


_FOLLOWUPS = ("can you make that shorter?", "thanks! now give an example", "why?",
              "ok, and what about edge cases?", "could you format it as a list?",
              "great, now explain it to a beginner", "is there another way?")


def gen_world_campaign(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """A distillation campaign drawn from the tactic space (label ``distill``).

    One campaign (``campaign_id`` = ``pop.name``) of ``n_accounts`` accounts harvesting at
    ``rate`` requests per account per day. Registered as ``tactic_campaign``,
    ``adaptive_attacker`` and ``imitator`` (same generator; the kind records who drew the
    knobs). ``camouflage``, ``paraphrase``, ``pivot`` and ``pivot_hours`` are the Population
    fields. params (all optional):

    accounts
        ``creation`` burst | spread | aged, ``age_days`` (lo, hi) (negative = created inside
        the window), ``n_bursts``, ``burst_hours``, ``signup`` {channel: w}, ``countries``
        {code: w}, ``burn_share``.
    payment
        ``cards`` group | own | pool, ``pay_group``, ``card_pool``, ``pool_card_share``.
    infrastructure
        ``infra`` {own, proxy, dc, mobile: w} per account, ``proxy_pool`` ("resi_proxy"),
        ``sticky_minutes``, ``dc_pool`` (world VPN pool name or None), ``dc_ips``,
        ``dc_blocks``, ``mobile_pools`` [names]; ``ua`` one_sdk | varied | browser.
    content
        ``capability`` {coding, math, agentic, reasoning, general: w}; ``style`` natural |
        templated | paraphrased | eval_format | tutor; ``elicit_share`` and ``elicit_mix``
        {family: w} (template-bank families, plus report-only held-out ones in report
        worlds); ``languages``; ``system`` none | campaign | product | scaffold | framework |
        tutor; ``framework``; ``steps`` (mean agentic trajectory length); ``followup``
        (share of harvested answers followed by a conversational turn); ``high_effort``.
    timing
        ``timing`` sync | jitter | sun | human | swell | school | bursts, with
        ``pause_hours``, ``duty``, ``shift_hours``, ``sleep_hours``, ``work_hours``,
        ``app_tz``.
    camouflage
        ``reseller`` (customers' browser traffic on its own diurnal curve in
        ``customer_tz``, relayed with the harvest; else cover prompts mixed at random).
    """
    P = dict(pop.params)
    infra = Infra(rng)
    side = _side(ctx)
    cid = pop.name or f"{pop.kind}-01"
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    # ---- accounts ---------------------------------------------------------------------
    creation = str(P.get("creation", "burst"))
    if creation == "burst":
        lo, hi = P.get("age_days", (0.5, 20.0))
        nb = max(1, int(P.get("n_bursts", max(1, n // 40))))
        bt = ctx.t0 - rng.uniform(lo, hi, size=nb) * DAY
        created = bt[rng.integers(0, nb, size=n)] + rng.uniform(
            0, float(P.get("burst_hours", 3.0)) * 3600, size=n)
    else:
        lo, hi = P.get("age_days", (15.0, 240.0) if creation == "spread" else (300.0, 1500.0))
        created = ctx.t0 - rng.uniform(lo, hi, size=n) * DAY
    created = np.minimum(created, ctx.t_end - 8 * 3600)
    country = weighted(rng, dict(P.get("countries") or _PROXY_COUNTRIES), n)
    tz = tz_offsets(country)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="distill", campaign=cid, org=infra.org_ids(n),
        payment=_campaign_cards(ctx, rng, infra, n, P),
        signup=weighted(rng, dict(P.get("signup") or {"standard": 1}), n), created=created,
        country=country)
    on = np.maximum(created + rng.uniform(0.2, 12, size=n) * 3600, ctx.t0)
    burned = rng.random(n) < float(P.get("burn_share", 0.1))
    off = np.where(burned, on + rng.uniform(0.5, 4, size=n) * DAY, ctx.t_end)
    # ---- arrivals (units: one harvested item = one request, one trajectory, or a pair) --
    caps_w = dict(P.get("capability") or {"general": 1.0})
    cap_tot = sum(caps_w.values()) or 1.0
    a_share = caps_w.get("agentic", 0.0) / cap_tot
    steps_mean = max(1.0, float(P.get("steps", 1.0)))
    follow = float(P.get("followup", 0.0))
    camo_share = float(pop.camouflage)
    reseller = bool(P.get("reseller", False)) and camo_share > 0
    mpu = 1.0 + a_share * (steps_mean - 1.0) + follow
    harvest_rate = pop.rate * (1.0 - camo_share if reseller else 1.0)
    ts, acct, model_o = _campaign_timing(ctx, rng, P, n, harvest_rate / mpu, on, off, tz)
    camo = rng.random(len(ts)) < (0.0 if reseller else camo_share)
    if reseller:
        ctz = float(P.get("customer_tz", 8.0))
        cust = machine_stream(rng, n * pop.rate * camo_share * 1.9, ctx.t0, ctx.t_end,
                              ctx.trace)
        cust = cust[diurnal_thin(rng, cust, ctz)]
        ca = rng.integers(0, n, size=len(cust))
        ok = (cust >= on[ca]) & (cust < off[ca])
        cust, ca = cust[ok], ca[ok]
        ts, acct = np.concatenate([ts, cust]), np.concatenate([acct, ca])
        camo = np.concatenate([camo, np.ones(len(cust), bool)])
        if model_o is not None:
            model_o = np.concatenate([model_o, np.full(len(cust), -1)])
    U = len(ts)
    caps = weighted(rng, caps_w, U) if U else np.zeros(0, dtype=object)
    agentic = (caps == "agentic") & ~camo
    mix = dict(P.get("elicit_mix") or {"cot_trace": 1.0})
    elicit = (rng.random(U) < float(P.get("elicit_share", 0.0))) & ~camo
    fams = np.where(elicit, weighted(rng, mix, U) if U else caps, "plain")
    steps = np.where(agentic, np.minimum(25, rng.geometric(1 / steps_mean, size=U)), 1)
    fu = (rng.random(U) < follow) & ~agentic & ~camo
    nreq = (steps + fu).astype(np.int64)
    ru = np.repeat(np.arange(U), nreq)
    gap = np.where(agentic[ru], rng.lognormal(np.log(8), 0.6, size=len(ru)),
                   rng.lognormal(np.log(90), 0.6, size=len(ru)))
    t_req = ts[ru] + grouped_cumsum(_first_zero(gap, nreq), nreq)
    # ---- content ----------------------------------------------------------------------
    streams = _capability_streams(ctx, rng, side)
    rend = _Renderer(ctx, rng, P, float(pop.paraphrase), side)
    sys_mode = str(P.get("system", "none"))
    fws = frameworks(side)
    fw = fws[int(P.get("framework", 0)) % len(fws)]
    if sys_mode == "framework" or (a_share > 0 and P.get("scaffold") == "framework"):
        tool_names = list(fw[3])
        toolset = [EXTRA_TOOLS[t] for t in tool_names]
        scaffold = fw[2]
    else:
        tool_names = []
        toolset = [TOOLS[i] for i in sorted(rng.choice(len(TOOLS), size=int(rng.integers(
            4, 9)), replace=False).tolist())]
        scaffold = pick(rng, half(HARVEST_SCAFFOLDS, side))
    systems: list[str | None] = {
        "none": [None],
        "campaign": [None, "You are a meticulous expert. Always show your complete reasoning "
                           "before the answer.", "You are an AI assistant that thinks step "
                           "by step."],
        "product": [pick(rng, half(APP_SYSTEMS, side))],
        "scaffold": [scaffold],
        "framework": [fw[2]],
        "tutor": [pick(rng, half(TUTOR_SYSTEMS, side))],
    }.get(sys_mode, [None])
    msgs: list = [None] * len(ru)
    syst: list = [None] * len(ru)
    tls: list = [None] * len(ru)
    prof = np.full(len(ru), "chat", dtype=object)
    starts = np.cumsum(nreq) - nreq
    customer_sys = pick(rng, list(RESELLER_SYSTEMS) + half(APP_SYSTEMS, side))
    caps_l, fams_l = caps.tolist(), fams.tolist()
    for u in range(U):
        j0, nr = int(starts[u]), int(nreq[u])
        if camo[u]:
            it = pick(rng, ctx.chat_items)
            msgs[j0] = ctx.conversation(it, int(rng.integers(len(it.turns))), rng)
            syst[j0] = customer_sys if rng.random() < 0.5 else None
            continue
        cap = caps_l[u]
        if agentic[u]:
            task, _ = streams["agentic"].next(rng)
            if fams_l[u] != "plain":
                task = task + "\n\n" + rend.elicit("cot_trace", "", None, rng).strip()
            h = [{"role": "user", "content": task}]
            for s in range(nr):
                while (len(h) - 1) // 2 < s:
                    h.extend(framework_round(rng, len(h), tool_names) if tool_names
                             else tool_round(rng, len(h)))
                msgs[j0 + s] = h[: 1 + 2 * s]
                syst[j0 + s] = scaffold
                tls[j0 + s] = toolset
                prof[j0 + s] = "code"
            continue
        task, item = streams[cap].next(rng)
        fam = fams_l[u]
        text = rend.plain(task, rng) if fam == "plain" else rend.elicit(fam, task, item, rng)
        msgs[j0] = [{"role": "user", "content": text}]
        syst[j0] = pick(rng, systems)
        prof[j0] = ("cot" if fam in _COT_FAMS or rend.style in ("eval_format", "tutor")
                    else "grade" if fam in _GRADE_FAMS else "code" if cap == "coding"
                    else "chat")
        if nr == 2:
            msgs[j0 + 1] = [msgs[j0][0], {"role": "assistant", "content": ctx.reply(rng)},
                            {"role": "user", "content": pick(rng, _FOLLOWUPS)}]
            syst[j0 + 1] = syst[j0]
    # ---- infrastructure ---------------------------------------------------------------
    acct_r = acct[ru]
    m = len(ru)
    kinds = ["own", "proxy", "dc", "mobile"]
    iw = dict(P.get("infra") or {"proxy": 1.0})
    itype = rng.choice(4, size=n, p=np.array([iw.get(x, 0.0) for x in kinds]) /
                       sum(iw.get(x, 0.0) for x in kinds))
    own, alt = infra.residential(n), infra.residential(n)
    proxy = _pool(ctx, rng, str(P.get("proxy_pool", "resi_proxy")), "residential",
                  max(50, 3 * n))
    dcp = P.get("dc_pool")
    dc = _pool(ctx, rng, str(dcp), "datacenter", 100, 6) if dcp else infra.cloud(
        int(P.get("dc_ips", max(2, n // 4))), n_blocks=int(P.get("dc_blocks", 2)))
    mob = [_pool(ctx, rng, str(c), "cgnat", 6) for c in P.get("mobile_pools", ["cgnat_0"])]
    mob_flat = [ip for p in mob for ip in p]
    salt = int(rng.integers(1 << 30))
    sticky = _hash_pick(proxy, acct_r, t_req, float(P.get("sticky_minutes", 15.0)), salt)
    ty = itype[acct_r]
    ualt = rng.random(m) < 0.1
    dci = rng.integers(0, len(dc), size=m)
    mbi = rng.integers(0, len(mob_flat), size=m)
    ip = [own[a] if t == 0 and not x else alt[a] if t == 0 else sticky[j] if t == 1
          else dc[d] if t == 2 else mob_flat[b]
          for j, (a, t, x, d, b) in enumerate(zip(acct_r.tolist(), ty.tolist(), ualt.tolist(),
                                                  dci.tolist(), mbi.tolist(), strict=True))]
    ua_mode = str(P.get("ua", "one_sdk"))
    if ua_mode == "one_sdk":
        one = ua_sdk(rng, str(P.get("sdk", "openai-python")))
        ua_acct = [one] * n
    elif ua_mode == "browser":
        ua_acct = [ua_browser(rng) for _ in range(n)]
    elif ua_mode == "framework":
        ua_acct = [fw[1].format(v=int(rng.integers(1, 10))) for _ in range(n)]
    else:
        ua_acct = [ua_sdk(rng) for _ in range(n)]
    camo_r = camo[ru]
    ua = [ua_browser(rng) if c and reseller else ua_acct[a]
          for a, c in zip(acct_r.tolist(), camo_r.tolist(), strict=True)]
    # ---- model, effort, outputs -------------------------------------------------------
    if model_o is not None:
        mo = model_o[ru]
        model = np.where(mo >= 0, mo, _lineup_models(ctx, rng, t_req, acct_r, delay_h=0.0,
                                                     share=pop.pivot, ramp_h=pop.pivot_hours))
    else:
        model = _lineup_models(ctx, rng, t_req, acct_r, delay_h=float(P.get("pivot_delay", 0)),
                               share=pop.pivot, ramp_h=pop.pivot_hours,
                               pref=_est_pref(ctx, rng, n, 0.2))
    he = float(P.get("high_effort", 0.5))
    r = rng.random(m)
    eff = np.where(camo_r, None, np.where(r < he, "high", np.where(r < he + 0.2, "medium",
                                                                    None))).tolist()
    out = np.where(prof == "cot", ctx.out_tokens(rng, m, "cot"),
                   np.where(prof == "code", ctx.out_tokens(rng, m, "code"),
                            np.where(prof == "grade", ctx.out_tokens(rng, m, "grade"),
                                     ctx.out_tokens(rng, m, "chat"))))
    keep = np.flatnonzero(t_req < np.minimum(off[acct_r], ctx.t_end))
    sel = lambda c: [c[i] for i in keep.tolist()]  # noqa: E731
    return Block(t_req[keep], gidx[acct_r[keep]], model[keep].astype(np.int8), sel(ip),
                 sel(ua), [keys[a] for a in acct_r[keep].tolist()], sel(msgs), sel(syst),
                 sel(tls), sel(eff), out[keep],
                 ctx.status(rng, len(keep), float(P.get("throttle", 0.02)))).check()


#: kind -> generator, merged into ``_populations.KINDS``.
WORLD_KINDS = {
    "power_user": gen_power_user,
    "fast_adopter": gen_fast_adopter,
    "agent_framework": gen_agent_framework,
    "tutoring_app": gen_tutoring_app,
    "eval_cot": gen_eval_cot,
    "judge_lab": gen_judge_lab,
    "translation_batch": gen_translation_batch,
    "cgnat_users": gen_cgnat_users,
    "corporate_proxy": gen_corporate_proxy,
    "startup_shared_card": gen_startup_shared_card,
    "reseller_customers": gen_reseller_customers,
    "proxy_pool_user": gen_proxy_pool_user,
    "tactic_campaign": gen_world_campaign,
    "adaptive_attacker": gen_world_campaign,
    "imitator": gen_world_campaign,
}

LINEUP_AWARE.update({"fast_adopter", "eval_cot", "tactic_campaign", "adaptive_attacker",
                     "imitator"})
