"""Population kinds: who sends traffic, how, and with what content.

Each kind is a function ``gen_<kind>(ctx, pop, rng) -> Block`` registered in :data:`KINDS`.
Benign kinds (label ``benign``) are ordinary users and *hard negatives* — legitimate traffic
that shares one or more surface traits with distillation (templates, volume, chain-of-thought
prompts, many accounts per payment method, shared IPs, tool use, fast model adoption).
Campaign kinds (label ``distill``) reproduce the publicly reported behaviours of distillation
operations. Every trait a detector might key on is present in both classes somewhere, so only
*combinations* separate them — which is the point of a benchmark.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from distillguard.sim._corpus import Item
from distillguard.sim._engine import Block, Ctx, pick, weighted
from distillguard.sim._infra import Infra, tz_offsets, ua_browser, ua_sdk
from distillguard.sim._scenario import Population
from distillguard.sim._text import (
    AGENT_SYSTEMS,
    CAMPAIGN_SYSTEMS,
    ENTERPRISE_SYSTEMS,
    ENTERPRISE_TEMPLATES,
    EVAL_FORMATS,
    HARVEST_AGENT_SYSTEMS,
    HOMEWORK_WRAPPERS,
    ORDINARY_SYSTEMS,
    RESELLER_SYSTEMS,
    SENSITIVE_TOPICS,
    TOOLS,
    coding_task,
    human_noise,
    paraphrase,
    repo_task,
    rubric_text,
    tool_round,
)
from distillguard.sim._timing import (
    DAY,
    daily_window_mask,
    diurnal_thin,
    grouped_cumsum,
    human_sessions,
    machine_stream,
)

__all__ = ["KINDS", "describe_kinds"]

Generator = Callable[[Ctx, Population, np.random.Generator], Block]

# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------


def _first_zero(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    starts = (np.cumsum(counts) - counts)[counts > 0]
    x = x.copy()
    x[starts] = 0.0
    return x


def _grouped_arange(counts: np.ndarray) -> np.ndarray:
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) - np.repeat(starts, counts)


def _activity(rng: np.random.Generator, n: int, sigma: float = 0.9) -> np.ndarray:
    """Heavy-tailed per-account activity multiplier with mean 1."""
    return rng.lognormal(0, sigma, size=n) / np.exp(sigma**2 / 2)


class TopicSampler:
    """Draws conversations for accounts that each have their own mix of topics.

    Real users are not uniform over capabilities (a developer mostly asks coding questions,
    a student math and writing). Each account gets Dirichlet weights around ``base``.
    """

    def __init__(self, rng: np.random.Generator, n_acc: int, pools: dict[str, list[Item]],
                 base: dict[str, float], concentration: float = 2.0) -> None:
        self.cats = [c for c in base if pools.get(c)]
        if not self.cats:  # corpus without any of the wanted categories: use all of it
            allitems = [it for p in pools.values() for it in p]
            pools = {"any": allitems}
            base = {"any": 1.0}
            self.cats = ["any"]
        self.pools = [pools[c] for c in self.cats]
        alpha = np.array([base[c] for c in self.cats], dtype=float) * concentration
        self.cw = np.cumsum(rng.dirichlet(np.maximum(alpha, 1e-3), size=n_acc), axis=1)

    def __call__(self, rng: np.random.Generator, acct: np.ndarray) -> list[Item]:
        u = rng.random(len(acct))
        ci = np.minimum((u[:, None] > self.cw[acct]).sum(axis=1), len(self.cats) - 1)
        r = rng.random(len(acct))
        return [self.pools[c][int(x * len(self.pools[c]))] for c, x in
                zip(ci.tolist(), r.tolist(), strict=True)]


def _pools(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for it in items:
        out.setdefault(it.category, []).append(it)
    return out


def _human_requests(ctx: Ctx, rng: np.random.Generator, rates: np.ndarray, tz: np.ndarray,
                    sampler: Callable[[np.random.Generator, np.ndarray], list[Item]], *,
                    max_turns: int = 6, p_next_conv: float = 0.45, turn_gap: float = 75.0,
                    active_from: np.ndarray | None = None, weekend: float = 0.55):
    """Human sessions -> conversations -> turns, all vectorised except item lookup.

    Returns ``(ts, acct_local, conv_index, turn_index, items)``; ``items[conv_index]`` is
    the conversation and ``turn_index`` the user turn being sent.
    """
    p_stop = 1 - p_next_conv
    # requests per session = conversations per session x turns sent per conversation
    # (30 % of conversations stop early, uniformly), so ``rates`` stays requests/day
    n = np.minimum(ctx.turn_counts, max_turns)
    mean_turns = float(np.mean(0.7 * n + 0.3 * (n + 1) / 2)) if len(n) else 1.0
    mean_req = (1 / p_stop) * mean_turns
    acct, start = human_sessions(rng, rates / mean_req, tz, ctx.t0, ctx.scenario.days,
                                 active_from=active_from, weekend_factor=weekend)
    m = rng.geometric(p_stop, size=len(acct))
    conv_acct = np.repeat(acct, m)
    g = _first_zero(rng.lognormal(np.log(300), 0.9, size=len(conv_acct)), m)
    conv_ts = np.repeat(start, m) + grouped_cumsum(g, m)
    items = sampler(rng, conv_acct)
    nturn = np.array([min(len(it.turns), max_turns) for it in items], dtype=np.int64)
    early = rng.random(len(items)) < 0.3
    nturn = np.where(early, rng.integers(1, nturn + 1), nturn)
    req_conv = np.repeat(np.arange(len(items)), nturn)
    turn = _grouped_arange(nturn)
    tg = _first_zero(rng.lognormal(np.log(turn_gap), 0.8, size=len(req_conv)), nturn)
    ts = conv_ts[req_conv] + grouped_cumsum(tg, nturn)
    keep = ts < ctx.t_end
    return ts[keep], conv_acct[req_conv][keep], req_conv[keep], turn[keep], items


def _ids(infra: Infra, n: int) -> tuple[list[str], list[str]]:
    return infra.hex_ids(n, "acct_", 6), infra.hex_ids(n, "key_", 5)


def _ordinary_like_block(ctx: Ctx, rng: np.random.Generator, gidx: np.ndarray, ts, acct, conv,
                         turn, items, *, ips: list[str], alt_ips: list[str] | None,
                         uas: list[str], keys: list[str], systems: list[str | None],
                         adopt_at: np.ndarray, noise: float = 0.35,
                         first_override: dict[int, str] | None = None) -> Block:
    """Build a Block of human chat requests from the output of :func:`_human_requests`."""
    n = len(ts)
    firsts: dict[int, str] = dict(first_override or {})
    msgs = []
    for c, t in zip(conv.tolist(), turn.tolist(), strict=True):
        if c not in firsts:
            firsts[c] = human_noise(items[c].turns[0], rng, noise)
        msgs.append(ctx.conversation(items[c], t, rng, first=firsts[c]))
    use_alt = rng.random(n) < 0.2 if alt_ips else np.zeros(n, bool)
    al = acct.tolist()
    ip = [alt_ips[a] if u else ips[a] for a, u in zip(al, use_alt.tolist(), strict=True)] \
        if alt_ips else [ips[a] for a in al]
    model = ctx.model_for(rng, ts, adopt_at=adopt_at[acct])
    eff = np.where((model == 1) & (rng.random(n) < 0.25),
                   weighted(rng, {"low": 1, "medium": 3, "high": 2}, n), None)
    return Block(ts, gidx[acct], model, ip, [uas[a] for a in al], [keys[a] for a in al], msgs,
                 [systems[a] for a in al], [None] * n, eff.tolist(),
                 ctx.out_tokens(rng, n, "chat"), ctx.status(rng, n)).check()


# ---------------------------------------------------------------------------------------
# benign kinds
# ---------------------------------------------------------------------------------------

_SIGNUP_ORDINARY = {"standard": 90, "startup": 5, "education": 3, "research": 2}


def gen_ordinary(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Ordinary chat / writing / coding users.

    Human diurnal timing in each user's time zone, weekday-heavy; multi-turn conversations
    replayed from the legitimate corpus (earlier turns carried in ``messages``); own
    residential IPs, with ~12 % sharing a household/office NAT with another user and some
    requests from a second (mobile) address; browser or SDK user agents; account ages of
    months to years; gradual adoption of the new model.

    params: ``nat_share`` (0.12), ``system_share`` (0.2).
    """
    infra = Infra(rng)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    country = infra.countries(n)
    tz = tz_offsets(country)
    payment = infra.payment(n)
    shared_pay = np.flatnonzero(rng.random(n) < 0.02)  # family members on one card
    for i in shared_pay.tolist():
        payment[i] = payment[int(rng.integers(n))]
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n), payment=payment,
        signup=weighted(rng, _SIGNUP_ORDINARY, n),
        created=ctx.t0 - rng.uniform(30, 1500, size=n) * DAY, country=country)
    ips = infra.residential(n, ipv6_share=0.06)
    nat = np.flatnonzero(rng.random(n) < float(pop.params.get("nat_share", 0.12)))
    for i in nat.tolist():
        ips[i] = ips[int(rng.integers(n))]
    alt = infra.residential(n)
    uas = [ua_browser(rng) if b else ua_sdk(rng) for b in (rng.random(n) < 0.4).tolist()]
    # a fifth of users have a second key in use
    keys2 = infra.hex_ids(n, "key_", 5)
    sys_share = float(pop.params.get("system_share", 0.2))
    systems = [pick(rng, ORDINARY_SYSTEMS) if s else None
               for s in (rng.random(n) < sys_share).tolist()]
    sampler = TopicSampler(rng, n, _pools(ctx.chat_items),
                           {"chat": 0.45, "writing": 0.2, "coding": 0.22, "math": 0.13})
    rates = pop.rate * _activity(rng, n)
    ts, acct, conv, turn, items = _human_requests(ctx, rng, rates, tz, sampler)
    adopt = ctx.t_release + rng.exponential(2.5 * DAY, size=n)
    b = _ordinary_like_block(ctx, rng, gidx, ts, acct, conv, turn, items, ips=ips, alt_ips=alt,
                             uas=uas, keys=keys, systems=systems, adopt_at=adopt)
    two = rng.random(n) < 0.2
    swap = two[acct] & (rng.random(len(acct)) < 0.5)
    b.key = [keys2[a] if s else k for a, s, k in zip(acct.tolist(), swap.tolist(), b.key,
                                                    strict=True)]
    return b


def gen_eval_harness(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Evaluation harnesses (hard negative).

    A fixed benchmark suite (MT-Bench/Vicuna questions plus GSM8K-style math with
    chain-of-thought formats such as "Let's think step by step") rerun in bursts: nightly on
    the established model, and on the new model within hours of its release, then nightly on
    both. Cloud IPs, SDK user agents, research/standard signup, old accounts.

    params: ``suite_size`` (240), ``runs_per_day`` (1).
    """
    infra = Infra(rng)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    gidx = ctx.accounts.add(
        ids, kind=pop.kind, label="benign", campaign="", org=infra.org_ids(n),
        payment=infra.payment(n), signup=weighted(rng, {"research": 2, "standard": 1}, n),
        created=ctx.t0 - rng.uniform(200, 1200, size=n) * DAY,
        country=weighted(rng, {"US": 5, "GB": 1, "DE": 1, "CH": 1, "CA": 1}, n))
    suite_size = int(pop.params.get("suite_size", 240))
    runs_per_day = float(pop.params.get("runs_per_day", 1))
    cols: dict[str, list] = {k: [] for k in ("ts", "acct", "model", "ip", "ua", "key", "msgs")}
    for a in range(n):
        ips = infra.cloud(3)
        ua = ua_sdk(rng, pick(rng, ["openai-python", "httpx", "aiohttp"]))
        bench = list(ctx.bench_items)
        rng.shuffle(bench)
        bench = bench[: (suite_size + 1) // 2]  # half open-ended questions, half math
        math = [ctx.d_math[i] for i in rng.choice(len(ctx.d_math), size=min(
            len(ctx.d_math), max(0, suite_size - len(bench))), replace=False)]
        fmt = EVAL_FORMATS[int(rng.integers(1, len(EVAL_FORMATS)))]
        suite: list[tuple[Item, int, str | None]] = []
        for it in bench:
            suite.append((it, 0, None))
            if len(it.turns) > 1:
                suite.append((it, 1, None))
        suite += [(it, 0, fmt.format(q=it.turns[0])) for it in math]
        hour = rng.uniform(0, 5) + (rng.normal(0, 1))
        run_starts = []
        for d in range(int(np.ceil(ctx.scenario.days))):
            for r in range(max(1, int(rng.poisson(runs_per_day)))):
                # the first run of a day is the nightly job, extra ones are ad hoc
                s = ctx.t0 + d * DAY + (hour + rng.uniform(0, 24) * (r > 0)) * 3600
                run_starts.append((s, 0))
                if s >= ctx.t_release:
                    run_starts.append((s + rng.uniform(60, 900), 1))
        run_starts.append((ctx.t_release + rng.uniform(0.3, 4) * 3600, 1))  # release-day run
        for s, model in run_starts:
            gaps = rng.exponential(0.5, size=len(suite))
            t = s + np.cumsum(gaps)
            for (it, turn, text), ti in zip(suite, t.tolist(), strict=True):
                if turn == 1:
                    ti += rng.uniform(5, 40)
                m = [{"role": "user", "content": text}] if text else \
                    ctx.conversation(it, turn, rng)
                cols["ts"].append(ti)
                cols["acct"].append(gidx[a])
                cols["model"].append(model)
                cols["ip"].append(pick(rng, ips))
                cols["ua"].append(ua)
                cols["key"].append(keys[a])
                cols["msgs"].append(m)
    ts = np.array(cols["ts"])
    nreq = len(ts)
    keep = (ts >= ctx.t0) & (ts < ctx.t_end)
    model = np.array(cols["model"], dtype=np.int8)
    keep &= ~((model == 1) & (ts < ctx.t_release))
    k = np.flatnonzero(keep)
    sel = lambda col: [col[i] for i in k.tolist()]  # noqa: E731
    return Block(ts[k], np.array(cols["acct"])[k], model[k], sel(cols["ip"]), sel(cols["ua"]),
                 sel(cols["key"]), sel(cols["msgs"]), [None] * len(k), [None] * len(k),
                 [None] * len(k), ctx.out_tokens(rng, nreq, "cot")[k],
                 ctx.status(rng, len(k), 0.01)).check()


def _docs(ctx: Ctx, rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for r, ln in zip(pick(rng, ctx.reply_pool, n), rng.integers(150, 900, size=n).tolist(),
                     strict=True):
        out.append(r[:ln])
    return out


def gen_enterprise_batch(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Enterprise batch jobs (hard negative).

    One company (one org, one payment method), each account running one fixed template over
    many documents around the clock with short outputs, from a cloud /24; accounts are
    years old. High volume and a single template, like a naive harvester — but the content
    is document processing, not capability elicitation.
    """
    infra = Infra(rng)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    org = infra.org_ids(1)[0]
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="benign", campaign="", org=org,
                            payment=infra.payment(1)[0], signup="standard",
                            created=ctx.t0 - rng.uniform(700, 1500, size=n) * DAY,
                            country=infra.countries(1)[0])
    ips = infra.cloud(4, n_blocks=1)
    blocks_ts, blocks_a = [], []
    for a in range(n):
        t = machine_stream(rng, pop.rate * _activity(rng, 1, 0.3)[0], ctx.t0, ctx.t_end,
                           ctx.trace)
        blocks_ts.append(t)
        blocks_a.append(np.full(len(t), a))
    ts = np.concatenate(blocks_ts) if blocks_ts else np.zeros(0)
    acct = np.concatenate(blocks_a).astype(np.int64) if blocks_a else np.zeros(0, np.int64)
    tmpl = [ENTERPRISE_TEMPLATES[i % len(ENTERPRISE_TEMPLATES)]
            for i in rng.permutation(max(n, 1)).tolist()]
    syst = [pick(rng, ENTERPRISE_SYSTEMS) for _ in range(n)]
    ua = [ua_sdk(rng, pick(rng, ["requests", "openai-python", "httpx"])) for _ in range(n)]
    m = len(ts)
    docs = _docs(ctx, rng, m)
    al = acct.tolist()
    msgs = [[{"role": "user", "content": tmpl[a].format(doc=d)}]
            for a, d in zip(al, docs, strict=True)]
    model = np.zeros(m, np.int8)  # production pinned to the established model
    return Block(ts, gidx[acct], model, pick(rng, ips, m), [ua[a] for a in al],
                 [keys[a] for a in al], msgs, [syst[a] for a in al], [None] * m, [None] * m,
                 ctx.out_tokens(rng, m, "short"), ctx.status(rng, m, 0.005)).check()


_APP_SYSTEMS = (
    "You are the in-app assistant of a note-taking product. Be concise and friendly.",
    "You are a helpful assistant inside a customer-support widget. Answer the user's question.",
    "You are StudyBuddy, a tutoring assistant. Explain clearly and encourage the learner.",
)


def gen_app_backend(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """A product's backend proxying its own end users' questions (hard negative).

    One company account forwards what many people type into its app: high volume, single
    turn, diverse real prompts, spread around the clock by a worldwide user base (with a
    diurnal swell), one fixed product system prompt, cloud egress, an old standard account
    and ordinary-length answers. Volume, novelty and 24/7 activity look like harvesting; the
    content does not.
    """
    infra = Infra(rng)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="benign", campaign="",
                            org=infra.org_ids(n), payment=infra.payment(n), signup="standard",
                            created=ctx.t0 - rng.uniform(300, 1500, size=n) * DAY,
                            country=infra.countries(n))
    blocks_ts, blocks_a = [], []
    for a in range(n):
        t = machine_stream(rng, 2.0 * pop.rate * _activity(rng, 1, 0.4)[0], ctx.t0,
                           ctx.t_end, ctx.trace)
        t = t[diurnal_thin(rng, t, float(rng.uniform(-8, 9)), floor=0.35)]
        blocks_ts.append(t)
        blocks_a.append(np.full(len(t), a))
    ts = np.concatenate(blocks_ts) if blocks_ts else np.zeros(0)
    acct = np.concatenate(blocks_a).astype(np.int64) if blocks_a else np.zeros(0, np.int64)
    m = len(ts)
    items = pick(rng, ctx.chat_items, m)
    msgs = [[{"role": "user", "content": it.turns[0]}] for it in items]
    syst = [pick(rng, _APP_SYSTEMS) for _ in range(n)]
    ua = [ua_sdk(rng, pick(rng, ["openai-python", "httpx", "openai-node"])) for _ in range(n)]
    ips = [infra.cloud(3, n_blocks=1) for _ in range(n)]
    al = acct.tolist()
    model = ctx.model_for(rng, ts)
    return Block(ts, gidx[acct], model, [pick(rng, ips[a]) for a in al], [ua[a] for a in al],
                 [keys[a] for a in al], msgs, [syst[a] for a in al], [None] * m, [None] * m,
                 ctx.out_tokens(rng, m, "chat"), ctx.status(rng, m, 0.005)).check()


_AGENT_PRODUCTS = (
    ("aider/0.{v}.1", (0, 1, 2, 3, 4, 6)),
    ("DevAssist/2.{v} (vscode) OpenAI/JS 4.62.0", (0, 1, 3, 4, 5, 6, 10)),
    ("agentcli/1.{v}.0 OpenAI/Python 1.51.2", (0, 1, 2, 3, 4, 5, 6, 11)),
)


def gen_coding_agent(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Developers using coding agents (hard negative).

    Sessions are tool loops: the same task sent again and again with a growing transcript of
    assistant tool calls and tool results (``n_messages`` grows within a session), seconds
    apart, with tool definitions attached — agentic, bursty, high volume, like an agentic
    harvester, but tasks concern the developer's own repository and sessions follow working
    hours. Quick to adopt the new model.

    params: ``max_steps`` (30).
    """
    infra = Infra(rng)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    country = infra.countries(n)
    tz = tz_offsets(country)
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="benign", campaign="",
                            org=infra.org_ids(n), payment=infra.payment(n),
                            signup=weighted(rng, {"standard": 7, "startup": 3}, n),
                            created=ctx.t0 - rng.uniform(60, 1000, size=n) * DAY,
                            country=country)
    prod = rng.integers(0, len(_AGENT_PRODUCTS), size=n)
    uas = [_AGENT_PRODUCTS[p][0].format(v=int(rng.integers(30, 60))) for p in prod.tolist()]
    toolsets = [[TOOLS[i] for i in _AGENT_PRODUCTS[p][1]] for p in prod.tolist()]
    systems = [AGENT_SYSTEMS[p % len(AGENT_SYSTEMS)] for p in prod.tolist()]
    ips = infra.residential(n)
    cloud = infra.cloud(n, n_blocks=3)
    use_cloud = rng.random(n) < 0.2
    max_steps = int(pop.params.get("max_steps", 30))
    mean_steps = 11.0
    acct, start = human_sessions(rng, pop.rate * _activity(rng, n, 0.6) / mean_steps, tz,
                                 ctx.t0, ctx.scenario.days, weekend_factor=0.3)
    steps = np.minimum(max_steps, 2 + rng.geometric(1 / (mean_steps - 1), size=len(acct)))
    req_s = np.repeat(np.arange(len(acct)), steps)
    k = _grouped_arange(steps)
    g = _first_zero(rng.lognormal(np.log(9), 0.7, size=len(req_s)), steps)
    ts = start[req_s] + grouped_cumsum(g, steps)
    keep = ts < ctx.t_end
    ts, req_s, k = ts[keep], req_s[keep], k[keep]
    tasks = []
    coding = [it for it in ctx.chat_items if it.category == "coding"]
    for _ in range(len(acct)):
        tasks.append(repo_task(rng) if (rng.random() < 0.7 or not coding)
                     else pick(rng, coding).turns[0])
    rounds: dict[int, list[dict]] = {}
    msgs = []
    for s, kk in zip(req_s.tolist(), k.tolist(), strict=True):
        hist = rounds.setdefault(s, [{"role": "user", "content": tasks[s]}])
        while (len(hist) - 1) // 2 < kk:
            hist.extend(tool_round(rng, len(hist)))
        msgs.append(hist[: 1 + 2 * kk])
    a = acct[req_s]
    al = a.tolist()
    m = len(ts)
    adopt = ctx.t_release + rng.exponential(1.0 * DAY, size=n)
    model = ctx.model_for(rng, ts, adopt_at=adopt[a], adopt_share=0.6)
    eff = weighted(rng, {"medium": 3, "high": 2, "low": 1}, m)
    eff = np.where(model == 1, eff, None)
    return Block(ts, gidx[a], model, [cloud[x] if use_cloud[x] else ips[x] for x in al],
                 [uas[x] for x in al], [keys[x] for x in al], msgs, [systems[x] for x in al],
                 [toolsets[x] for x in al], eff.tolist(), ctx.out_tokens(rng, m, "code"),
                 ctx.status(rng, m, 0.01)).check()


def gen_university(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Students at universities (hard negative).

    Hundreds of young education-signup accounts behind a few campus NAT addresses, many on
    the university's shared payment method — shared infrastructure and new accounts like a
    hydra — but human timing (classes, evenings, weekdays) and homework-style content,
    including math problems resembling distillation seed sets.

    params: ``n_orgs`` (campuses, 2), ``homework_share`` (0.25).
    """
    infra = Infra(rng)
    n = pop.n_accounts
    n_orgs = max(1, int(pop.params.get("n_orgs", 2)))
    campus = rng.integers(0, n_orgs, size=n)
    ccountry = infra.countries(n_orgs, {"US": 4, "GB": 2, "DE": 1, "IN": 2, "CA": 1, "AU": 1,
                                        "SG": 1, "KR": 1})
    country = ccountry[campus]
    tz = tz_offsets(country)
    nat = [infra.in_block(infra.block24(cloud=False), int(rng.integers(3, 7)))
           for _ in range(n_orgs)]
    grant = infra.payment(n_orgs)
    ids, keys = _ids(infra, n)
    pay_u = rng.random(n)
    own = infra.payment(n)
    payment = [grant[c] if u < 0.6 else (own[i] if u < 0.85 else None)
               for i, (c, u) in enumerate(zip(campus.tolist(), pay_u.tolist(), strict=True))]
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="benign", campaign="",
                            org=infra.org_ids(n), payment=payment,
                            signup=weighted(rng, {"education": 85, "standard": 15}, n),
                            created=ctx.t0 - rng.uniform(5, 150, size=n) * DAY, country=country)
    ips = [pick(rng, nat[c]) for c in campus.tolist()]
    alt = infra.residential(n)  # from home / dorm ISP
    uas = [ua_browser(rng) if b else ua_sdk(rng, pick(rng, ["openai-python", "requests"]))
           for b in (rng.random(n) < 0.6).tolist()]
    hw = float(pop.params.get("homework_share", 0.25))
    pools = _pools(ctx.chat_items)
    base = {"chat": 0.3, "writing": 0.3, "coding": 0.25, "math": 0.15}
    sampler_l = TopicSampler(rng, n, pools, base)

    def sampler(r: np.random.Generator, acct: np.ndarray) -> list[Item]:
        items = sampler_l(r, acct)
        use = r.random(len(items)) < hw
        return [pick(r, ctx.d_math) if u else it for it, u in zip(items, use.tolist(),
                                                                  strict=True)]

    rates = pop.rate * _activity(rng, n)
    ts, acct, conv, turn, items = _human_requests(ctx, rng, rates, tz, sampler, weekend=0.7)
    dm = {id(it) for it in ctx.d_math}
    firsts = {c: pick(rng, HOMEWORK_WRAPPERS).format(q=items[c].turns[0])
              for c in sorted(set(conv.tolist())) if id(items[c]) in dm}
    adopt = ctx.t_release + rng.exponential(4 * DAY, size=n)
    return _ordinary_like_block(ctx, rng, gidx, ts, acct, conv, turn, items, ips=ips,
                                alt_ips=alt, uas=uas, keys=keys, systems=[None] * n,
                                adopt_at=adopt, noise=0.5, first_override=firsts)


def gen_multi_key_org(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """One company with many accounts and API keys (hard negative).

    Every account shares the org id and the company card; developers work from the office
    NAT in office hours, a quarter of the accounts are services running a fixed template
    from the company's cloud range. Many linked accounts, as in a hydra — but one org.

    params: ``n_orgs`` (1), ``service_share`` (0.25).
    """
    infra = Infra(rng)
    n = pop.n_accounts
    n_orgs = max(1, int(pop.params.get("n_orgs", 1)))
    which = rng.integers(0, n_orgs, size=n)
    orgs = infra.org_ids(n_orgs)
    pays = infra.payment(n_orgs)
    ocountry = infra.countries(n_orgs, {"US": 3, "DE": 1, "GB": 1, "FR": 1, "IN": 1, "JP": 1})
    ids, keys = _ids(infra, n)
    country = ocountry[which]
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="benign", campaign="",
                            org=[orgs[w] for w in which.tolist()],
                            payment=[pays[w] for w in which.tolist()],
                            signup=weighted(rng, {"startup": 1, "standard": 2}, n),
                            created=ctx.t0 - rng.uniform(60, 900, size=n) * DAY,
                            country=country)
    office = [infra.in_block(infra.block24(cloud=False), 3) for _ in range(n_orgs)]
    cloud = [infra.cloud(4) for _ in range(n_orgs)]
    service = rng.random(n) < float(pop.params.get("service_share", 0.25))
    human = np.flatnonzero(~service)
    svc = np.flatnonzero(service)
    blocks = []
    if len(human):
        tz = tz_offsets(country[human])
        sampler = TopicSampler(rng, len(human), _pools(ctx.chat_items),
                               {"coding": 0.5, "writing": 0.2, "chat": 0.2, "math": 0.1})
        ts, acct, conv, turn, items = _human_requests(
            ctx, rng, pop.rate * _activity(rng, len(human)), tz, sampler, weekend=0.15)
        ips = [pick(rng, office[w]) for w in which[human].tolist()]
        uas = [ua_sdk(rng) if rng.random() < 0.6 else ua_browser(rng) for _ in human]
        adopt = ctx.t_release + rng.exponential(1.5 * DAY, size=len(human))
        blocks.append(_ordinary_like_block(
            ctx, rng, gidx[human], ts, acct, conv, turn, items, ips=ips, alt_ips=None, uas=uas,
            keys=[keys[i] for i in human.tolist()], systems=[None] * len(human),
            adopt_at=adopt))
    for i in svc.tolist():
        t = machine_stream(rng, pop.rate * 6, ctx.t0, ctx.t_end, ctx.trace)
        m = len(t)
        tmpl = pick(rng, ENTERPRISE_TEMPLATES)
        ua = ua_sdk(rng, "openai-python")
        blocks.append(Block(
            t, np.full(m, gidx[i]), np.zeros(m, np.int8), pick(rng, cloud[which[i]], m),
            [ua] * m, [keys[i]] * m,
            [[{"role": "user", "content": tmpl.format(doc=d)}] for d in _docs(ctx, rng, m)],
            [None] * m, [None] * m, [None] * m, ctx.out_tokens(rng, m, "short"),
            ctx.status(rng, m)))
    return _concat(blocks)


def gen_key_rotator(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Power users rotating three accounts/keys (hard negative).

    Each person holds three accounts (one key each) on one card, one home IP and one user
    agent, and switches key every few hours to stay under per-key limits — linked accounts
    with a rotation pattern, but one human's varied prompts and timing. ``n_accounts``
    counts people; ``rate`` is per person.
    """
    infra = Infra(rng)
    people = pop.n_accounts
    n = 3 * people
    ids, keys = _ids(infra, n)
    owner = np.repeat(np.arange(people), 3)
    pcountry = infra.countries(people)
    ppay = infra.payment(people)
    created = ctx.t0 - (np.repeat(rng.uniform(300, 900, size=people), 3)
                        * np.tile([1.0, 0.4, 0.1], people))
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="benign", campaign="",
                            org=infra.org_ids(n), payment=[ppay[o] for o in owner.tolist()],
                            signup="standard", created=created, country=pcountry[owner])
    home = infra.residential(people)
    mobile = infra.residential(people)
    ua = [ua_sdk(rng, pick(rng, ["openai-python", "httpx"])) for _ in range(people)]
    tz = tz_offsets(pcountry)
    sampler = TopicSampler(rng, people, _pools(ctx.chat_items),
                           {"coding": 0.5, "chat": 0.3, "writing": 0.1, "math": 0.1})
    ts, person, conv, turn, items = _human_requests(ctx, rng, np.full(people, pop.rate), tz,
                                                    sampler)
    period = rng.uniform(4, 10, size=people) * 3600
    slot = (np.floor((ts - ctx.t0) / period[person]).astype(np.int64) + person) % 3
    acct_local = person * 3 + slot
    adopt = ctx.t_release + rng.exponential(0.7 * DAY, size=people)
    b = _ordinary_like_block(ctx, rng, gidx[np.arange(0, n, 3)], ts, person, conv, turn, items,
                             ips=home, alt_ips=mobile, uas=ua, keys=[""] * people,
                             systems=[None] * people, adopt_at=adopt)
    b.acct = gidx[acct_local]
    b.key = [keys[a] for a in acct_local.tolist()]
    return b.check()


# ---------------------------------------------------------------------------------------
# campaigns
# ---------------------------------------------------------------------------------------


class Voice:
    """A campaign's prompt factory: its house phrasings plus the paraphrase knob.

    House phrasings are a campaign's own fixed variants (one paraphrase of a base template,
    drawn once), which is what repetitive templates look like. With probability
    ``paraphrase`` a request instead uses a fresh random phrasing from the bank, rewritten
    again, so higher ``paraphrase`` means fewer exact template repeats.
    """

    def __init__(self, ctx: Ctx, rng: np.random.Generator, paraphrase_p: float,
                 lang_weights: dict[str, float], per_family: int = 2) -> None:
        self.ctx, self.p, self.lang = ctx, paraphrase_p, lang_weights
        self.house: dict[str, list[tuple[str, str]]] = {}
        for fam in ctx.bank.families:
            vs = []
            for _ in range(per_family):
                lang, t = ctx.bank.pick(fam, rng, lang_weights)
                vs.append((lang, paraphrase(t, lang, rng, 0.4)))
            self.house[fam] = vs

    def render(self, fam: str, rng: np.random.Generator) -> str:
        """One filled-in prompt of family ``fam`` (content drawn from the distill corpus)."""
        if rng.random() < self.p:
            lang, t = self.ctx.bank.pick(fam, rng, self.lang)
            t = paraphrase(t, lang, rng, 0.7)
        else:
            lang, t = pick(rng, self.house[fam])
        ctx = self.ctx
        need_answer = "{response}" in t
        it = pick(rng, ctx.d_answered if need_answer else ctx.d_items)
        fill = {"task": it.turns[0]}
        if need_answer:
            fill["response"] = ctx._cut(it.answer or ctx.reply(rng))
        if "{response_b}" in t:
            fill["response_b"] = ctx.reply(rng)
        if "{rubric}" in t:
            fill["rubric"] = rubric_text(lang, rng)
        if "{topic}" in t:
            fill["topic"] = pick(rng, SENSITIVE_TOPICS)
        return t.format_map(fill)


def _campaign_accounts(ctx: Ctx, pop: Population, rng: np.random.Generator, infra: Infra,
                       campaign: str, *, signup: dict[str, float], pay_group: int,
                       countries: dict[str, float], age_days: tuple[float, float],
                       batches: int | None = None):
    """Accounts of a multi-account campaign: created in batches, some sharing a card.

    Returns global indices, API keys, and each account's active window ``[on, off)``.
    """
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    nb = batches or max(1, n // 40)
    batch = rng.integers(0, nb, size=n)
    bt = ctx.t0 - rng.uniform(*age_days, size=nb) * DAY
    created = bt[batch] + rng.uniform(0, 3 * 3600, size=n)  # a batch is registered in ~3h
    n_pay = max(1, n // max(1, pay_group))
    cards = infra.payment(n_pay)
    own = infra.payment(n)
    payment = [own[i] if rng.random() < 0.1 else cards[int(rng.integers(n_pay))]
               for i in range(n)]
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="distill", campaign=campaign,
                            org=infra.org_ids(n), payment=payment,
                            signup=weighted(rng, signup, n), created=created,
                            country=weighted(rng, countries, n))
    on = np.maximum(created + rng.uniform(0.2, 12, size=n) * 3600, ctx.t0)
    burned = rng.random(n) < 0.15
    off = np.where(burned, on + rng.uniform(0.5, 4, size=n) * DAY, ctx.t_end)
    return gidx, keys, on, off


def _deal(rng: np.random.Generator, ts: np.ndarray, on: np.ndarray, off: np.ndarray, *,
          weight_sigma: float = 0.0, shift_hours: float | None = None):
    """Assign each request of a campaign stream to a random account active at that time.

    This is the load balancer that makes hydra accounts move in lockstep. ``weight_sigma``
    gives accounts unequal shares (log-normal weights) so per-account volume is not
    suspiciously uniform; ``shift_hours`` limits each account to a daily window at a random
    phase (a persona's waking hours) while the campaign as a whole runs around the clock.
    Requests at times when no account is eligible are dropped.
    """
    n = len(on)
    w = rng.lognormal(0, weight_sigma, size=n) if weight_sigma else np.ones(n)
    cw = np.cumsum(w / w.sum())
    phase = rng.uniform(0, 24, size=n)

    def draw(k: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cw, rng.random(k), side="right"), n - 1)

    def ok(a: np.ndarray, t: np.ndarray) -> np.ndarray:
        good = (t >= on[a]) & (t < off[a])
        if shift_hours is not None:
            good &= ((t / 3600.0 - phase[a]) % 24.0) < shift_hours
        return good

    acct = draw(len(ts))
    for _ in range(20):  # rejection: redraw for ineligible picks
        bad = ~ok(acct, ts)
        if not bad.any():
            break
        acct[bad] = draw(int(bad.sum()))
    keep = ok(acct, ts)
    return ts[keep], acct[keep]


def _sticky_ips(pool: list[str], acct: np.ndarray, ts: np.ndarray, minutes: float,
                salt: int) -> list[str]:
    """Residential-proxy "sticky sessions": an account keeps one exit IP for ``minutes``.

    ``minutes <= 0`` rotates the exit on every request.
    """
    if minutes <= 0:
        idx = (acct * 2654435761 + np.arange(len(ts)) * 40503 + salt) % len(pool)
    else:
        win = np.floor(ts / (minutes * 60)).astype(np.int64)
        idx = (acct * 2654435761 + win * 97 + salt) % len(pool)
    return [pool[i] for i in idx.tolist()]


def _campaign_stream(ctx: Ctx, rng: np.random.Generator, total_rate: float, on: np.ndarray,
                     *, pause_hours: tuple[float, float] | None, duty: float | None = None):
    """Campaign-level arrivals: a machine stream, with a daily pause and optional duty cycle."""
    t_start = float(on.min()) if len(on) else ctx.t0
    comp = 1.0
    if pause_hours:
        comp *= 24 / (24 - pause_hours[1])
    if duty:
        comp /= duty
    ts = machine_stream(rng, total_rate * comp, t_start, ctx.t_end, ctx.trace)
    if pause_hours:
        ts = ts[~daily_window_mask(ts, pause_hours[0], pause_hours[1])]
    if duty:  # worker pool runs jobs at the top of every hour for ``duty`` of the hour
        ts = ts[((ts / 3600.0) % 1.0) < duty]
    return ts


def _camouflage(ctx: Ctx, rng: np.random.Generator) -> list[dict]:
    """An ordinary prompt replayed as cover (with its real earlier turns, if any)."""
    it = pick(rng, ctx.chat_items)
    return ctx.conversation(it, int(rng.integers(len(it.turns))), rng)


def _distill_block(ctx: Ctx, pop: Population, rng: np.random.Generator, gidx, keys, ts, acct,
                   *, voice: Voice, families: dict[str, float], ip_pool: list[str],
                   uas: list[str], ua_of_acct: np.ndarray | None, systems: list[str | None],
                   effort: dict[str, float], throttle: float, camo_mask: np.ndarray | None = None,
                   tools: Callable[[np.random.Generator], tuple[list, list[dict], str]] | None = None
                   ) -> Block:
    """Build a campaign Block: distillation prompts, camouflage prompts, infra per request."""
    m = len(ts)
    camo = camo_mask if camo_mask is not None else rng.random(m) < pop.camouflage
    fams = weighted(rng, families, m).tolist()
    msgs, syst, tls = [], [], []
    for c, fam in zip(camo.tolist(), fams, strict=True):
        if c:
            msgs.append(_camouflage(ctx, rng))
            syst.append(pick(rng, RESELLER_SYSTEMS) if rng.random() < 0.3 else None)
            tls.append(None)
        elif fam == "agentic" and tools is not None:
            tl, mm, sy = tools(rng)
            msgs.append(mm)
            syst.append(sy)
            tls.append(tl)
        else:
            msgs.append([{"role": "user", "content": voice.render(fam, rng)}])
            syst.append(pick(rng, systems))
            tls.append(None)
    al = acct.tolist()
    ua = [uas[ua_of_acct[a]] for a in al] if ua_of_acct is not None else pick(rng, uas, m)
    model = ctx.model_for(rng, ts, pop)
    eff = np.where(camo, None, weighted(rng, effort, m))
    eff[eff == "none"] = None
    prof = np.array(["cot" if f.startswith("cot") else "grade" if f == "rubric" else "code"
                     if f == "agentic" else "chat" for f in fams])
    out = np.where(prof == "cot", ctx.out_tokens(rng, m, "cot"),
                   np.where(prof == "code", ctx.out_tokens(rng, m, "code"),
                            ctx.out_tokens(rng, m, "chat")))
    return Block(ts, gidx[acct], model, pick(rng, ip_pool, m), ua, [keys[a] for a in al], msgs,
                 syst, tls, eff.tolist(), out, ctx.status(rng, m, throttle)).check()


_PROXY_COUNTRIES = {"US": 5, "SG": 2, "DE": 2, "GB": 2, "JP": 1, "BR": 1, "NL": 1, "CA": 1,
                    "KR": 1, "IN": 1, "HK": 1, "MY": 1}


def _campaign_id(pop: Population, i: int = 1) -> str:
    return pop.name or f"{pop.kind}-{i:02d}"


def gen_naive_harvester(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Naive harvesters: one account each, high volume, 24/7, one template.

    Alpaca-style instruction prompts from the distill corpus in a single fixed wrapper
    (occasionally the Self-Instruct generation meta-prompt filled with seed tasks), from one
    or two cloud addresses with ``python-requests``; a brand-new account. Each account is
    its own campaign (``<name>-<n>``).
    """
    infra = Infra(rng)
    blocks = []
    for i in range(pop.n_accounts):
        cid = f"{pop.name or pop.kind}-{i + 1:02d}"
        ids, keys = _ids(infra, 1)
        created = ctx.t0 - rng.uniform(0.5, 10) * DAY
        g = ctx.accounts.add(ids, kind=pop.kind, label="distill", campaign=cid,
                             org=infra.org_ids(1), payment=infra.payment(1),
                             signup="standard", created=created,
                             country=str(infra.countries(1)[0]))
        ts = machine_stream(rng, pop.rate, max(ctx.t0, created + 3600), ctx.t_end, ctx.trace)
        m = len(ts)
        voice = Voice(ctx, rng, pop.paraphrase, {"en": 1.0}, per_family=1)
        meta = ctx.d_meta[0].turns[0] if ctx.d_meta else None
        msgs = []
        camo = rng.random(m) < pop.camouflage
        for c in camo.tolist():
            if c:
                msgs.append(_camouflage(ctx, rng))
            elif meta and rng.random() < 0.03:
                seeds = pick(rng, ctx.d_answered, 3)
                body = "".join(f"\n###\n{k + 1}. Instruction: {s.turns[0]}\n{k + 1}. Output:\n"
                               f"{s.answer}" for k, s in enumerate(seeds))
                msgs.append([{"role": "user", "content": meta + body + "\n###\n4. Instruction:"}])
            else:
                msgs.append([{"role": "user", "content": voice.render("plain", rng)}])
        pool = infra.cloud(pop.ip_pool or 2)
        ua = ua_sdk(rng, "requests")
        blocks.append(Block(ts, np.full(m, g[0]), ctx.model_for(rng, ts, pop),
                            pick(rng, pool, m), [ua] * m, [keys[0]] * m, msgs, [None] * m,
                            [None] * m, [None] * m, ctx.out_tokens(rng, m, "chat"),
                            ctx.status(rng, m, 0.04)).check())
    return _concat(blocks)


def gen_reasoning_hydra(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Reasoning hydra: hundreds of accounts harvesting chain-of-thought and grading.

    Content: "imagine and articulate the internal reasoning behind a completed response" and
    its many paraphrases in English, Chinese, Russian, Spanish and more; step-by-step trace
    elicitation; rubric grading / reward-model scoring; censorship-safe rewrites; over math
    and general instructions from the distill corpus. Structure: accounts registered in
    batches (education/startup signup abuse), subsets sharing payment cards, a residential
    proxy pool rotating per request, and one load-balanced stream dealt across the active
    accounts with a shared daily pause (synchronized timing). Some accounts get burned and
    stop early.

    params: ``pay_group`` (8 accounts per card), ``families`` (mix dict), ``languages``,
    ``shift_hours`` (16: each account's daily window; ``None`` = 24/7), ``sticky_minutes``
    (30: proxy session length; 0 = new exit per request).
    """
    infra = Infra(rng)
    cid = _campaign_id(pop)
    gidx, keys, on, off = _campaign_accounts(
        ctx, pop, rng, infra, cid,
        signup={"education": 40, "startup": 35, "standard": 20, "research": 5},
        pay_group=int(pop.params.get("pay_group", 8)), countries=_PROXY_COUNTRIES,
        age_days=(0.5, 20))
    langs = dict(pop.params.get("languages", {"en": 0.5, "zh": 0.25, "ru": 0.08, "es": 0.08,
                                              "other": 0.09}))
    fams = dict(pop.params.get("families", {"cot_reconstruct": 0.35, "cot_trace": 0.3,
                                            "rubric": 0.2, "censor": 0.1, "plain": 0.05}))
    voice = Voice(ctx, rng, pop.paraphrase, langs)
    shift = pop.params.get("shift_hours", 16.0)
    # shifts move requests between accounts (the balancer picks an on-shift account), they
    # do not thin the campaign's stream
    ts = _campaign_stream(ctx, rng, pop.n_accounts * pop.rate, on,
                          pause_hours=(rng.uniform(0, 24), 1.5))
    ts, acct = _deal(rng, ts, on, off, weight_sigma=0.5, shift_hours=shift)
    pool = infra.residential(pop.ip_pool or max(20, pop.n_accounts * 3 // 2))
    uas = [ua_sdk(rng, "openai-python"), ua_sdk(rng, "httpx"), ua_sdk(rng, "aiohttp")]
    ua_of = rng.choice(3, size=pop.n_accounts, p=[0.6, 0.3, 0.1])
    systems = list(CAMPAIGN_SYSTEMS[:5])
    b = _distill_block(ctx, pop, rng, gidx, keys, ts, acct, voice=voice, families=fams,
                       ip_pool=pool, uas=uas, ua_of_acct=ua_of, systems=systems,
                       effort={"high": 6, "medium": 2, "none": 2}, throttle=0.02)
    b.ip = _sticky_ips(pool, acct, ts, float(pop.params.get("sticky_minutes", 30)),
                       int(rng.integers(1 << 30)))
    return b


def _agentic_request(ctx: Ctx, voice: Voice, toolsets: list[list[dict]], systems: list[str],
                     cot_suffix: float = 0.2):
    """Factory of one harvested agentic request: tools, scaffold, textbook coding task."""
    def make(rng: np.random.Generator) -> tuple[list, list[dict], str]:
        tl = pick(rng, toolsets)
        if ctx.d_coding and rng.random() < 0.5:
            task = pick(rng, ctx.d_coding).turns[0]
        else:
            task = coding_task(rng)
        if rng.random() < cot_suffix:
            task = task + "\n\n" + voice.render("cot_trace", rng).split("\n")[-1]
        msgs = [{"role": "user", "content": task}]
        for k in range(int(rng.integers(0, 4)) if rng.random() < 0.4 else 0):
            msgs.extend(tool_round(rng, k))
        sy = pick(rng, systems)
        if voice.p and rng.random() < voice.p:
            sy = paraphrase(sy, "en", rng, 0.6)
        return tl, msgs, sy
    return make


def gen_agentic_hydra(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Agentic hydra: coding/tool-use harvesting across many accounts.

    Textbook coding tasks (distill corpus coding items and generated tasks) sent with tool
    definitions and agent scaffolding, sometimes with fabricated earlier tool rounds;
    startup-credit signups; proxy pool; a load-balanced stream run by a worker pool in
    hourly job windows (``duty`` of each hour). Pivots ``pivot`` (default half) of its traffic
    to the new model within ``pivot_hours`` of release.

    params: ``duty`` (0.75), ``pay_group`` (6), ``sticky_minutes`` (10), ``families``
    (mix dict), ``cot_suffix`` (0.2: share of tasks ending in a reasoning-trace request).
    """
    infra = Infra(rng)
    cid = _campaign_id(pop)
    gidx, keys, on, off = _campaign_accounts(
        ctx, pop, rng, infra, cid,
        signup={"startup": 60, "education": 20, "standard": 20},
        pay_group=int(pop.params.get("pay_group", 6)), countries=_PROXY_COUNTRIES,
        age_days=(0.5, 15))
    voice = Voice(ctx, rng, pop.paraphrase, {"en": 0.85, "zh": 0.15})
    sets = [[TOOLS[i] for i in sorted(rng.choice(len(TOOLS), size=int(rng.integers(3, 9)),
                                                 replace=False).tolist())] for _ in range(3)]
    systems = [pick(rng, HARVEST_AGENT_SYSTEMS) for _ in range(2)]
    ts = _campaign_stream(ctx, rng, pop.n_accounts * pop.rate, on, pause_hours=None,
                          duty=float(pop.params.get("duty", 0.75)))
    ts, acct = _deal(rng, ts, on, off, weight_sigma=0.3)
    pool = infra.residential(pop.ip_pool or max(12, pop.n_accounts * 3 // 2))
    uas = [ua_sdk(rng, "openai-node"), ua_sdk(rng, "httpx")]
    ua_of = rng.choice(2, size=pop.n_accounts)
    b = _distill_block(ctx, pop, rng, gidx, keys, ts, acct, voice=voice,
                       families=dict(pop.params.get("families", {
                           "agentic": 0.85, "cot_trace": 0.1, "plain": 0.05})),
                       ip_pool=pool, uas=uas, ua_of_acct=ua_of, systems=[None],
                       effort={"high": 5, "medium": 3, "none": 2}, throttle=0.02,
                       tools=_agentic_request(ctx, voice, sets, systems,
                                              float(pop.params.get("cot_suffix", 0.2))))
    b.ip = _sticky_ips(pool, acct, ts, float(pop.params.get("sticky_minutes", 10)),
                       int(rng.integers(1 << 30)))
    return b


def gen_proxy_reseller(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Proxy reseller: real customers' traffic mixed with distillation.

    A reseller relays its own customers' real prompts (``camouflage`` share; they follow an
    aggregate day/night curve in the customers' zone) through a set of accounts, and mixes
    in 24/7 distillation traffic. Both streams are load-balanced over the accounts from a
    few relay servers (``ip_pool`` cloud IPs) with one relay user agent.

    params: ``customer_tz`` (8.0), ``pay_group`` (5), ``families`` (mix dict).
    """
    infra = Infra(rng)
    cid = _campaign_id(pop)
    gidx, keys, on, off = _campaign_accounts(
        ctx, pop, rng, infra, cid, signup={"startup": 60, "standard": 40},
        pay_group=int(pop.params.get("pay_group", 5)),
        countries={"US": 3, "SG": 2, "HK": 2, "GB": 1}, age_days=(5, 60), batches=3)
    off[:] = ctx.t_end  # resellers keep accounts alive
    total = pop.n_accounts * pop.rate
    camo_rate = total * pop.camouflage
    tz = float(pop.params.get("customer_tz", 8.0))
    cust = machine_stream(rng, camo_rate * 1.9, ctx.t0, ctx.t_end, ctx.trace)
    cust = cust[diurnal_thin(rng, cust, tz)]
    dist = machine_stream(rng, total - camo_rate, ctx.t0, ctx.t_end, ctx.trace)
    ts = np.concatenate([cust, dist])
    camo = np.concatenate([np.ones(len(cust), bool), np.zeros(len(dist), bool)])
    order = np.argsort(ts, kind="stable")
    ts, camo = ts[order], camo[order]
    n = len(on)
    acct = rng.integers(0, n, size=len(ts))
    acct = np.where(ts >= on[acct], acct, int(np.argmin(on)))
    pool = infra.cloud(pop.ip_pool or 12, n_blocks=3)
    uas = [ua_sdk(rng, "openai-python"), ua_sdk(rng, "openai-node")]
    voice = Voice(ctx, rng, pop.paraphrase, {"en": 0.7, "zh": 0.3})
    b = _distill_block(ctx, pop, rng, gidx, keys, ts, acct, voice=voice,
                       families=dict(pop.params.get("families", {
                           "cot_trace": 0.3, "cot_reconstruct": 0.2, "plain": 0.3,
                           "rubric": 0.1, "censor": 0.1})),
                       ip_pool=pool, uas=uas, ua_of_acct=None, systems=[None],
                       effort={"none": 6, "medium": 2, "high": 2}, throttle=0.01,
                       camo_mask=camo)
    b.ua = [uas[0] if r < 0.9 else uas[1] for r in rng.random(len(ts)).tolist()]
    return b


def gen_low_and_slow(ctx: Ctx, pop: Population, rng: np.random.Generator) -> Block:
    """Low-and-slow campaign: many quiet, independent-looking accounts.

    A few requests per account per day at human-like times, heavily paraphrased elicitation
    and grading prompts, and no shared infrastructure: own residential IP, own card, own user
    agent, varied and aged accounts. Only content and aggregate behaviour give it away.
    ``ip_pool`` is ignored. params: ``families`` (mix dict).
    """
    infra = Infra(rng)
    cid = _campaign_id(pop)
    n = pop.n_accounts
    ids, keys = _ids(infra, n)
    country = infra.countries(n)
    gidx = ctx.accounts.add(ids, kind=pop.kind, label="distill", campaign=cid,
                            org=infra.org_ids(n), payment=infra.payment(n),
                            signup=weighted(rng, {"standard": 85, "education": 10,
                                                  "research": 5}, n),
                            created=ctx.t0 - rng.uniform(30, 500, size=n) * DAY,
                            country=country)
    acct, start = human_sessions(rng, pop.rate * _activity(rng, n, 0.4) / 2.0,
                                 tz_offsets(country), ctx.t0, ctx.scenario.days)
    k = rng.integers(1, 4, size=len(acct))
    ts = np.repeat(start, k) + grouped_cumsum(
        _first_zero(rng.lognormal(np.log(120), 0.7, size=int(k.sum())), k), k)
    acct = np.repeat(acct, k)
    keep = ts < ctx.t_end
    ts, acct = ts[keep], acct[keep]
    order = np.argsort(ts, kind="stable")
    ts, acct = ts[order], acct[order]
    ips = infra.residential(n)
    uas = [ua_browser(rng) if r < 0.3 else ua_sdk(rng) for r in rng.random(n).tolist()]
    voice = Voice(ctx, rng, pop.paraphrase, {"en": 0.6, "zh": 0.2, "es": 0.1, "ru": 0.1})
    b = _distill_block(ctx, pop, rng, gidx, keys, ts, acct, voice=voice,
                       families=dict(pop.params.get("families", {
                           "cot_trace": 0.35, "cot_reconstruct": 0.35, "rubric": 0.15,
                           "censor": 0.05, "plain": 0.1})),
                       ip_pool=["0.0.0.0"], uas=uas, ua_of_acct=np.arange(n),
                       systems=[None, None, None, "You are a helpful assistant."],
                       effort={"none": 5, "medium": 3, "high": 2}, throttle=0.0)
    b.ip = [ips[a] for a in acct.tolist()]
    return b


def _concat(blocks: list[Block]) -> Block:
    blocks = [b for b in blocks if len(b)]
    if not blocks:
        return empty_block()
    cat = lambda name: [x for b in blocks for x in getattr(b, name)]  # noqa: E731
    return Block(np.concatenate([b.ts for b in blocks]),
                 np.concatenate([b.acct for b in blocks]),
                 np.concatenate([b.model for b in blocks]), cat("ip"), cat("ua"), cat("key"),
                 cat("messages"), cat("system"), cat("tools"), cat("effort"),
                 np.concatenate([b.out_tokens for b in blocks]),
                 np.concatenate([b.status for b in blocks])).check()


def empty_block() -> Block:
    e = np.zeros(0)
    return Block(e, e.astype(np.int64), e.astype(np.int8), [], [], [], [], [], [], [],
                 e.astype(np.int64), e.astype(np.int16))


#: kind -> generator. Each generator's docstring is the kind's documentation.
KINDS: dict[str, Generator] = {
    "ordinary": gen_ordinary,
    "eval_harness": gen_eval_harness,
    "enterprise_batch": gen_enterprise_batch,
    "app_backend": gen_app_backend,
    "coding_agent": gen_coding_agent,
    "university": gen_university,
    "multi_key_org": gen_multi_key_org,
    "key_rotator": gen_key_rotator,
    "naive_harvester": gen_naive_harvester,
    "reasoning_hydra": gen_reasoning_hydra,
    "agentic_hydra": gen_agentic_hydra,
    "proxy_reseller": gen_proxy_reseller,
    "low_and_slow": gen_low_and_slow,
}


def describe_kinds() -> dict[str, tuple[str, str]]:
    """``{kind: (label, one-line summary)}`` taken from the generators' docstrings."""
    from distillguard.sim._scenario import ALL_CAMPAIGN_KINDS

    return {k: ("distill" if k in ALL_CAMPAIGN_KINDS else "benign",
                (g.__doc__ or "").strip().splitlines()[0]) for k, g in KINDS.items()}


# Kinds of the cross-world benchmark (``distillguard.sim.worlds``), kept in their own module.
# Imported last: ``_world_kinds`` builds on the helpers above.
from distillguard.sim._world_kinds import WORLD_KINDS  # noqa: E402

KINDS.update(WORLD_KINDS)
