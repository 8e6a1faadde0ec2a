"""A distribution over simulated *worlds*, for a cross-world benchmark.

One fixed scenario lets a detector be tuned to that scenario's quirks. A world here is a
whole simulated week drawn from a distribution over world *structure*: window length and
start weekday, model line-up and release days, account and request budget, which hard
negatives exist and how big they are, which proxy / VPN / carrier / card pools populations
share, and 3–8 campaigns drawn from a tactic space (account count, rate, infrastructure,
payment, user agents, account creation, capability focus, templating, elicitation share and
wording, languages, timing, camouflage, pivot), including an adaptive attacker that drops
the published evidence cheapest first and an imitator dressed as a benign kind.

Tune worlds and report worlds draw text from *disjoint sources* (not halves of the same
ones) and disjoint template phrasings; report worlds add extraction families that exist only
on the report side (``_heldout_text``). A detector tuned on tune worlds is reported on
report worlds.

>>> from distillguard.sim.worlds import draw_world, simulate_world
>>> spec = draw_world(3, "report", size="ci")                     # doctest: +SKIP
>>> res = simulate_world(spec, "out/w3")                          # doctest: +SKIP
>>> spec.campaigns["c01-agentic_hydra"]["elicit_share"]            # doctest: +SKIP
0.0
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from distillguard.errors import ConfigError
from distillguard.sim._corpus import (
    Corpus,
    Item,
    bundled_corpus,
    load_corpus,
    split_key,
    stable_unit,
)
from distillguard.sim._engine import Accounts, Ctx
from distillguard.sim._heldout_text import (
    HELDOUT_FAMILIES,
    coding_task_side,
    frameworks,
    perturb_text,
    reasoning_task_side,
)
from distillguard.sim._scenario import Population, Scenario
from distillguard.sim._simulate import SimResult, _generate, _scenario_json, _write
from distillguard.sim._text import TemplateBank
from distillguard.sim._timing import TimingTrace, load_timing

__all__ = [
    "ARCHETYPES",
    "BENIGN_MENU",
    "SIZES",
    "WorldSpec",
    "draw_world",
    "simulate_world",
    "world_corpora",
]

CorpusSpec = str | Path | Sequence[str | Path] | Corpus | None

# ---------------------------------------------------------------------------------------
# World sizes and the spec
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Size:
    accounts: tuple[float, float]
    requests: tuple[float, float]
    campaigns: tuple[int, int]
    pools: dict[str, tuple[float, float]]
    reseller_accounts: tuple[int, int]
    max_reply_chars: int


#: World size classes: target accounts, requests, number of campaigns, pool sizes. Targets
#: sit a little inside the advertised ranges (bench ~1,500-4,000 accounts and ~80k-250k
#: requests, ci ~150-400 and ~5k-15k): accounts that end up sending nothing are not in the
#: logs, and bursty streams scatter request counts by about +-10 %.
SIZES: dict[str, _Size] = {
    "bench": _Size((1800, 4300), (85_000, 235_000), (3, 8),
                   {"resi_proxy": (800, 12_000), "vpn_dc": (30, 300), "card_pool": (6, 60)},
                   (3, 40), 900),
    "ci": _Size((180, 430), (5_500, 14_000), (2, 4),
                {"resi_proxy": (100, 1500), "vpn_dc": (10, 60), "card_pool": (3, 15)},
                (2, 8), 500),
}


@dataclass(frozen=True)
class WorldSpec:
    """One world drawn by :func:`draw_world` (plain data; ``to_json`` for the record).

    Attributes
    ----------
    world_id : str
        ``<role>-<size>-<seed>``.
    role : {"tune", "report"}
    seed : int
        Seeds the draw and the simulation.
    scenario : Scenario
        What :func:`simulate_world` runs (populations with every drawn parameter).
    corpus_group : {"tune", "report"}
        Which disjoint group of text sources and phrasings the world uses.
    knobs : dict
        World-level draws: days, start, models, release days, target sizes, pool sizes,
        per-kind benign sizes and rates, text perturbation share, ...
    campaigns : dict
        ``campaign_id -> tactic knobs`` (numeric where possible: accounts, rate, infra
        shares, accounts per card, capability shares, elicitation share, non-English share,
        camouflage, pivot, adaptive level, ...; plus ``elicitation`` (bool: any elicitation
        wording by construction), ``dropped`` (adaptive) and ``imitates``).
    size : {"bench", "ci"}
    """

    world_id: str
    role: str
    seed: int
    scenario: Scenario
    corpus_group: str
    knobs: dict
    campaigns: dict[str, dict]
    size: str = "bench"

    def to_json(self) -> dict[str, Any]:
        return _py({"world_id": self.world_id, "role": self.role, "seed": self.seed,
                    "size": self.size, "corpus_group": self.corpus_group,
                    "knobs": self.knobs, "campaigns": self.campaigns,
                    "scenario": _scenario_json(self.scenario)})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorldSpec:
        """Inverse of :meth:`to_json` (e.g. to re-run a world from its ``world.json``)."""
        s = dict(d["scenario"])
        pops = tuple(Population(**{**p, "params": dict(p.get("params") or {})})
                     for p in s.pop("populations"))
        s["models"] = tuple(s["models"])
        s["release_days"] = tuple(s.get("release_days") or ())
        s["shared_pools"] = tuple(tuple(p) for p in s.get("shared_pools") or ())
        return cls(d["world_id"], d["role"], int(d["seed"]), Scenario(populations=pops, **s),
                   d["corpus_group"], dict(d["knobs"]), dict(d["campaigns"]),
                   d.get("size", "bench"))


def _py(x: Any) -> Any:
    """Numpy scalars/arrays and tuples -> plain JSON-able Python."""
    if isinstance(x, dict):
        return {str(k): _py(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_py(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_py(v) for v in x.tolist()]
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


# ---------------------------------------------------------------------------------------
# Benign menu: kind -> presence probability, size, rate, params
# ---------------------------------------------------------------------------------------

#: Expected requests per (account x day x unit of ``rate``) of each kind, measured on
#: single-kind simulations (used only to size worlds, so approximate).
_VOLUME = {"ordinary": 0.85, "power_user": 0.94, "proxy_pool_user": 0.77,
           "cgnat_users": 0.97, "corporate_proxy": 0.62, "startup_shared_card": 0.98,
           "fast_adopter": 0.86, "agent_framework": 0.81, "tutoring_app": 1.27,
           "judge_lab": 0.83, "translation_batch": 1.15, "reseller_customers": 1.3,
           "coding_agent": 0.73, "university": 0.69, "multi_key_org": 3.1, "key_rotator": 0.79,
           "enterprise_batch": 1.1, "app_backend": 1.71}
_MACHINE = {"tutoring_app", "judge_lab", "translation_batch", "enterprise_batch",
            "app_backend", "eval_harness", "eval_cot", "reseller_customers"}

#: kind -> (presence probability, accounts: ("share", lo, hi, min) of benign accounts or
#: ("count", lo, hi), rate range (log-uniform), what it imitates)
BENIGN_MENU: dict[str, tuple[float, tuple, tuple[float, float], str]] = {
    "ordinary": (1.0, ("rest",), (4, 14), "baseline human traffic"),
    "power_user": (0.8, ("share", 0.005, 0.02, 1), (60, 300),
                   "volume, round-the-clock activity, VPN exits shared with campaigns"),
    "proxy_pool_user": (0.75, ("share", 0.02, 0.08, 2), (3, 12),
                        "shared rotating residential proxy / VPN exits"),
    "cgnat_users": (0.7, ("share", 0.03, 0.12, 5), (3, 10),
                    "hundreds of accounts on a few IPs (carrier NAT)"),
    "corporate_proxy": (0.7, ("share", 0.01, 0.05, 4), (6, 20),
                        "one egress IP and one user agent for many accounts"),
    "startup_shared_card": (0.7, ("share", 0.01, 0.04, 2), (8, 30),
                            "shared payment card, young accounts, startup signup"),
    "fast_adopter": (0.8, ("share", 0.005, 0.03, 1), (15, 120),
                     "capability-focused novel single-turn prompts, fast pivot"),
    "agent_framework": (0.75, ("share", 0.01, 0.08, 4), (10, 60),
                        "one system prompt and tool schema across many accounts"),
    "tutoring_app": (0.6, ("count", 1, 3), (150, 1500),
                     "chain-of-thought wording ('show your reasoning step by step'), volume"),
    "eval_cot": (0.7, ("count", 1, 4), (1, 1), "CoT prompting, pivot to every release, bursts"),
    "judge_lab": (0.6, ("count", 1, 5), (100, 1000), "rubric grading / pairwise preference"),
    "translation_batch": (0.6, ("count", 1, 3), (200, 3000),
                          "one template, volume, 24/7, long outputs"),
    "reseller_customers": (0.6, ("reseller",), (30, 200),
                           "account pool load-balanced from relays, shared cards"),
    "eval_harness": (0.6, ("count", 1, 4), (1, 1), "CoT math prompts, bursts, fast pivot"),
    "enterprise_batch": (0.6, ("count", 1, 4), (300, 3000), "one template, volume, 24/7"),
    "app_backend": (0.6, ("count", 1, 4), (200, 2000), "novel prompts 24/7 from one key"),
    "coding_agent": (0.75, ("share", 0.01, 0.05, 2), (20, 120), "agentic tool loops"),
    "university": (0.6, ("share", 0.03, 0.12, 5), (2, 8),
                   "new accounts, shared campus NAT and grant card, math homework"),
    "multi_key_org": (0.6, ("share", 0.005, 0.03, 3), (8, 25),
                      "many linked accounts on one org and card"),
    "key_rotator": (0.5, ("share", 0.002, 0.01, 1), (30, 100), "key rotation on one card"),
}

#: Campaign archetypes the tactic space is drawn around (kind, what it reproduces).
ARCHETYPES: dict[str, tuple[str, str]] = {
    "reasoning_hydra": ("tactic_campaign", "many accounts harvesting reasoning with "
                        "elicitation, rubric and censorship wording"),
    "agentic_hydra": ("tactic_campaign", "hundreds of accounts, shared rotating proxy pool, "
                      "one agent scaffold and tool schema, coding trajectories, no "
                      "elicitation wording"),
    "reseller": ("tactic_campaign", "account pool relaying real customers' browser traffic "
                 "with scripted harvest mixed in, cards shared with unrelated accounts"),
    "harvester": ("tactic_campaign", "one or two accounts at very high volume"),
    "low_and_slow": ("tactic_campaign", "quiet independent-looking accounts, human timing"),
    "sun_farm": ("tactic_campaign", "follow-the-sun shifts over mobile or proxy exits"),
    "adaptive": ("adaptive_attacker", "knows the published evidence list and drops what it "
                 "controls, cheapest first, to a drawn level"),
    "imitator": ("imitator", "dressed as a benign kind (eval harness, app backend, agent "
                 "framework users, tutoring app) while harvesting novel prompts"),
}

_LEGACY_PARAMS = {
    "eval_harness": lambda r: {"suite_size": int(r.integers(60, 300)),
                               "runs_per_day": round(float(r.uniform(0.5, 2.0)), 2)},
    "coding_agent": lambda r: {"max_steps": int(r.integers(15, 41))},
    "university": lambda r: {"n_orgs": int(r.integers(1, 4)),
                             "homework_share": round(float(r.uniform(0.1, 0.4)), 3)},
    "multi_key_org": lambda r: {"n_orgs": int(r.integers(1, 3)),
                                "service_share": round(float(r.uniform(0.1, 0.4)), 3)},
}

_CARRIER_COUNTRIES = ("IN", "NG", "ID", "BR", "PH", "MX", "EG", "VN", "TR", "ZA")
_MODEL_FAMILIES = ("atlas", "nova", "orion", "vega", "lumen", "sirius", "kestrel", "tern")
_START0 = date(2026, 1, 5)


def _lu(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform draw."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _r(x: float, k: int = 3) -> float:
    return round(float(x), k)


def _draw_lineup(rng: np.random.Generator, days: int) -> tuple[tuple[str, ...],
                                                               tuple[float | None, ...]]:
    fam = _MODEL_FAMILIES[int(rng.integers(len(_MODEL_FAMILIES)))]
    v = int(rng.integers(2, 6))
    n_models = int(rng.integers(2, 5))
    n_rel = 1 if n_models == 2 else int(rng.integers(1, 3))
    r1 = _r(rng.uniform(0.8, days - 1.5), 3)
    rel = [r1]
    if n_rel == 2:
        lo = r1 + 0.5
        if lo < days - 0.4:
            rel.append(_r(rng.uniform(lo, days - 0.4), 3))
        else:
            n_rel = 1
    n_est = n_models - n_rel
    est = [f"{fam}-{v}", f"{fam}-{v}-mini", f"{fam}-{v - 1}"][:n_est]
    new = [f"{fam}-{v + 1}", f"{fam}-{v + 1}-mini"] if rng.random() < 0.5 else \
        [f"{fam}-{v}.5", f"{fam}-{v + 1}"]
    models = tuple(est + new[:n_rel])
    return models, tuple([None] * n_est + rel)


def _langs(rng: np.random.Generator, side: str, en_lo: float = 0.4) -> dict[str, float]:
    en = float(rng.uniform(en_lo, 1.0))
    others = ["zh", "ru", "es", "de", "fr", "pt", "ja", "ko"] + (
        ["it", "tr", "vi"] if side == "report" else [])
    k = int(rng.integers(1, 4))
    pick = rng.choice(len(others), size=k, replace=False).tolist()
    w = rng.dirichlet(np.ones(k)) * (1 - en)
    out = {"en": _r(en)}
    for i, x in zip(pick, w.tolist(), strict=True):
        out[others[i]] = _r(x)
    return out


def _elicit_mix(rng: np.random.Generator, side: str, base: Sequence[str],
                heldout_share: float) -> dict[str, float]:
    fams = list(base)
    k = int(rng.integers(1, len(fams) + 1))
    chosen = rng.choice(len(fams), size=k, replace=False).tolist()
    w = rng.dirichlet(np.ones(k))
    mix = {fams[i]: float(x) for i, x in zip(chosen, w.tolist(), strict=True)}
    if side == "report" and heldout_share > 0:
        h = list(HELDOUT_FAMILIES)
        kh = int(rng.integers(1, len(h) + 1))
        hc = rng.choice(len(h), size=kh, replace=False).tolist()
        hw = rng.dirichlet(np.ones(kh))
        mix = {f: x * (1 - heldout_share) for f, x in mix.items()}
        for i, x in zip(hc, hw.tolist(), strict=True):
            mix[h[i]] = float(x) * heldout_share
    return {f: _r(x, 4) for f, x in mix.items()}


def _creation(rng: np.random.Generator, mode: str, days: int, n: int) -> dict[str, Any]:
    if mode == "burst":
        lo = float(rng.uniform(-0.6 * days, 6))
        return {"creation": "burst", "age_days": (_r(lo), _r(lo + rng.uniform(1, 25))),
                "n_bursts": int(rng.integers(1, max(2, n // 30 + 2))),
                "burst_hours": _r(rng.uniform(0.5, 6))}
    if mode == "spread":
        return {"creation": "spread", "age_days": (_r(rng.uniform(10, 60)),
                                                   _r(rng.uniform(90, 400)))}
    return {"creation": "aged", "age_days": (_r(rng.uniform(200, 500)),
                                             _r(rng.uniform(600, 1800)))}


_SUBSIDISED = {"education": 0.4, "startup": 0.35, "standard": 0.2, "research": 0.05}


def _signup(rng: np.random.Generator, subsidised: bool) -> dict[str, float]:
    if not subsidised:
        return {"standard": 0.9, "startup": 0.1}
    w = rng.dirichlet(np.array(list(_SUBSIDISED.values())) * 8)
    return {k: _r(x) for k, x in zip(_SUBSIDISED, w.tolist(), strict=True)}


def _cap(rng: np.random.Generator, base: dict[str, float], conc: float = 6.0
         ) -> dict[str, float]:
    keys = list(base)
    w = rng.dirichlet(np.maximum(np.array([base[k] for k in keys]) * conc, 0.05))
    return {k: _r(x) for k, x in zip(keys, w.tolist(), strict=True) if x > 0.005}


# ---------------------------------------------------------------------------------------
# Campaign archetypes -> Population
# ---------------------------------------------------------------------------------------


@dataclass
class _Draft:
    archetype: str
    kind: str
    n: int
    rate: float
    P: dict[str, Any] = field(default_factory=dict)
    camouflage: float = 0.0
    paraphrase: float = 0.0
    pivot: float = 0.0
    pivot_hours: float = 24.0
    dropped: list[str] = field(default_factory=list)
    level: int = 0
    imitates: str = ""


def _infra(rng: np.random.Generator, main: str, share: float, rest: Sequence[str]
           ) -> dict[str, float]:
    out = {main: share}
    if share < 1 and rest:
        out[rest[int(rng.integers(len(rest)))]] = 1 - share
    return {k: _r(v) for k, v in out.items()}


def _proxy_knobs(rng: np.random.Generator) -> dict[str, Any]:
    return {"proxy_pool": "resi_proxy",
            "sticky_minutes": 0.0 if rng.random() < 0.3 else _r(rng.uniform(2, 60))}


def _dc_knobs(rng: np.random.Generator, n: int) -> dict[str, Any]:
    if rng.random() < 0.3:
        return {"dc_pool": "vpn_dc"}
    return {"dc_ips": int(rng.integers(2, max(3, min(40, n + 3)))),
            "dc_blocks": int(rng.integers(1, 5))}


def _draft(rng: np.random.Generator, arche: str, n: int, side: str, days: int, world: dict,
           force_plain: bool = False) -> _Draft:
    """Tactic knobs of one campaign of archetype ``arche`` with ``n`` accounts."""
    ho = float(world["heldout_share"])
    base_fams = ("cot_reconstruct", "cot_trace", "rubric", "censor")
    fw = int(world["framework"])
    d = _Draft(arche, ARCHETYPES[arche][0], n, 1.0)
    P = d.P
    if arche == "reasoning_hydra":
        d.rate = _lu(rng, 10, 80)
        P.update(_creation(rng, "burst", days, n))
        P.update(signup=_signup(rng, True),
                 cards="pool" if rng.random() < 0.2 else "group",
                 pay_group=int(rng.integers(3, 16)),
                 infra=_infra(rng, "proxy", _r(rng.uniform(0.6, 1.0)), ["dc", "own"]),
                 **_proxy_knobs(rng), **_dc_knobs(rng, n),
                 ua="one_sdk" if rng.random() < 0.5 else "varied",
                 capability=_cap(rng, {"math": 0.45, "reasoning": 0.2, "general": 0.35}),
                 style="templated" if rng.random() < 0.5 else "paraphrased",
                 elicit_share=_r(rng.uniform(0.3, 0.95)),
                 elicit_mix=_elicit_mix(rng, side, base_fams, ho), languages=_langs(rng, side),
                 system="campaign" if rng.random() < 0.4 else "none", timing="sync",
                 shift_hours=_r(rng.uniform(8, 20)) if rng.random() < 0.6 else None,
                 pause_hours=_r(rng.uniform(0, 3)), high_effort=_r(rng.uniform(0.4, 0.9)),
                 burn_share=_r(rng.uniform(0, 0.25)))
        d.paraphrase = _r(rng.uniform(0.1, 0.9))
        d.pivot, d.pivot_hours = _r(rng.uniform(0.2, 0.7)), _r(rng.uniform(6, 48))
    elif arche == "agentic_hydra":
        d.rate = _lu(rng, 10, 60)
        use_fw = rng.random() < 0.4
        P.update(_creation(rng, "burst" if rng.random() < 0.7 else "spread", days, n))
        P.update(signup=_signup(rng, rng.random() < 0.7),
                 cards="pool" if rng.random() < 0.3 else "group",
                 pay_group=int(rng.integers(3, 11)), card_pool="card_pool",
                 infra=_infra(rng, "proxy", _r(rng.uniform(0.7, 1.0)), ["own"]),
                 **_proxy_knobs(rng),
                 ua="framework" if use_fw else ("one_sdk" if rng.random() < 0.5 else "varied"),
                 capability=_cap(rng, {"agentic": 0.85, "coding": 0.15}, 10),
                 steps=_r(rng.uniform(3, 10)), style="natural", elicit_share=0.0,
                 system="framework" if use_fw else "scaffold", framework=fw,
                 scaffold="framework" if use_fw else "own",
                 timing="sync" if rng.random() < 0.6 else "jitter",
                 duty=_r(rng.uniform(0.5, 0.9)) if rng.random() < 0.5 else None,
                 pause_hours=_r(rng.uniform(0, 2)), high_effort=_r(rng.uniform(0.3, 0.8)),
                 burn_share=_r(rng.uniform(0, 0.2)))
        d.pivot, d.pivot_hours = _r(rng.uniform(0.3, 0.8)), _r(rng.uniform(4, 36))
    elif arche == "reseller":
        d.rate = _lu(rng, 50, 300)
        plain = force_plain or rng.random() < 0.5
        P.update(_creation(rng, "spread" if rng.random() < 0.6 else "burst", days, n))
        P.update(signup=_signup(rng, rng.random() < 0.5), cards="pool",
                 card_pool="card_pool", pool_card_share=_r(rng.uniform(0.4, 1.0)),
                 infra={"dc": 1.0}, **_dc_knobs(rng, n), reseller=True,
                 customer_tz=float(rng.choice([8.0, 1.0, -5.0, 5.5, 9.0])),
                 ua="browser" if rng.random() < 0.5 else "one_sdk",
                 capability=_cap(rng, {"general": 0.5, "coding": 0.3, "math": 0.2}),
                 style="natural" if rng.random() < 0.6 else "templated",
                 elicit_share=0.0 if plain else _r(rng.uniform(0.1, 0.4)),
                 elicit_mix=_elicit_mix(rng, side, base_fams, ho), languages=_langs(rng, side),
                 timing="sync", pause_hours=0.0, high_effort=_r(rng.uniform(0.1, 0.5)),
                 burn_share=0.0)
        d.camouflage = _r(rng.uniform(0.3, 0.8))
        d.paraphrase = _r(rng.uniform(0.0, 0.6))
        d.pivot, d.pivot_hours = _r(rng.uniform(0.1, 0.4)), _r(rng.uniform(12, 72))
    elif arche == "harvester":
        d.rate = _lu(rng, 300, 3000)
        P.update(_creation(rng, "burst", days, n))
        P.update(signup={"standard": 1.0}, cards="own", infra={"dc": 1.0},
                 dc_ips=int(rng.integers(1, 4)), dc_blocks=1, ua="one_sdk", sdk="requests",
                 capability=_cap(rng, {"general": 0.5, "math": 0.25, "coding": 0.25}),
                 style="templated" if rng.random() < 0.7 else "natural",
                 elicit_share=0.0 if rng.random() < 0.5 else _r(rng.uniform(0.1, 0.5)),
                 elicit_mix=_elicit_mix(rng, side, base_fams, ho),
                 languages=_langs(rng, side, 0.7),
                 timing="jitter" if rng.random() < 0.5 else "sync", sleep_hours=0.0,
                 pause_hours=0.0, high_effort=_r(rng.uniform(0, 0.5)), burn_share=0.0)
        d.paraphrase = _r(rng.uniform(0, 0.3))
        d.pivot, d.pivot_hours = _r(rng.uniform(0, 0.5)), _r(rng.uniform(6, 48))
    elif arche == "low_and_slow":
        d.rate = _lu(rng, 3, 15)
        P.update(_creation(rng, "spread" if rng.random() < 0.5 else "aged", days, n))
        P.update(signup=_signup(rng, False), cards="own", infra={"own": 1.0},
                 ua="browser" if rng.random() < 0.3 else "varied",
                 countries=None,
                 capability=_cap(rng, {"math": 0.35, "general": 0.35, "reasoning": 0.15,
                                       "coding": 0.15}),
                 style="paraphrased" if rng.random() < 0.5 else "natural",
                 elicit_share=_r(rng.uniform(0.2, 0.8)),
                 elicit_mix=_elicit_mix(rng, side, base_fams, ho), languages=_langs(rng, side),
                 timing="human", high_effort=_r(rng.uniform(0, 0.4)),
                 burn_share=_r(rng.uniform(0, 0.1)))
        d.paraphrase = _r(rng.uniform(0.6, 1.0))
        d.pivot, d.pivot_hours = _r(rng.uniform(0, 0.4)), _r(rng.uniform(24, 96))
    elif arche == "sun_farm":
        d.rate = _lu(rng, 15, 80)
        main = "mobile" if rng.random() < 0.5 else "proxy"
        P.update(_creation(rng, "burst", days, n))
        P.update(signup=_signup(rng, rng.random() < 0.5),
                 cards="pool" if rng.random() < 0.3 else "group",
                 pay_group=int(rng.integers(2, 12)),
                 infra=_infra(rng, main, _r(rng.uniform(0.6, 1.0)), ["own", "proxy"]),
                 **_proxy_knobs(rng), mobile_pools=list(world["cgnat"]), ua="varied",
                 capability=_cap(rng, {"coding": 0.4, "math": 0.35, "reasoning": 0.25}),
                 style="templated" if rng.random() < 0.5 else "natural",
                 elicit_share=0.0 if rng.random() < 0.4 else _r(rng.uniform(0.1, 0.7)),
                 elicit_mix=_elicit_mix(rng, side, base_fams, ho), languages=_langs(rng, side),
                 timing="sun", work_hours=_r(rng.uniform(8, 12)),
                 high_effort=_r(rng.uniform(0.2, 0.7)), burn_share=_r(rng.uniform(0, 0.2)))
        d.paraphrase = _r(rng.uniform(0.1, 0.7))
        d.pivot, d.pivot_hours = _r(rng.uniform(0.2, 0.6)), _r(rng.uniform(6, 36))
    elif arche == "adaptive":
        d = _adaptive(rng, n, side, days, world)
    elif arche == "imitator":
        d = _imitator(rng, n, side, days, world, str(world["imitates"]))
    else:  # pragma: no cover - guarded by ARCHETYPES
        raise ConfigError(f"unknown archetype {arche!r}")
    if force_plain:
        d.P.update(elicit_share=0.0)
        if d.P.get("style") in ("eval_format", "tutor"):
            d.P["style"] = "natural"
        if d.P.get("system") in ("campaign", "tutor"):
            d.P["system"] = "none"
    return d


#: What an adaptive attacker controls, cheapest to give up first: (evidence, change).
ADAPTIVE_STEPS: tuple[tuple[str, str], ...] = (
    ("elicitation", "plain prompts: no chain-of-thought, rubric or censorship wording"),
    ("shared_cards", "one card per account"),
    ("sync_timing", "independent jittered streams instead of one dealt stream"),
    ("one_ua", "a different SDK/version per account"),
    ("templates", "no wrapper, fresh paraphrase or raw prompts"),
    ("high_effort", "default reasoning effort"),
    ("subsidised_signup", "standard signups"),
    ("new_accounts", "aged (bought) accounts"),
    ("shared_ips", "own residential IP per account"),
    ("volume", "three times the accounts at a third of the rate"),
    ("single_turn", "conversational follow-ups on a third of the answers"),
    ("fast_pivot", "half the pivot, over four days"),
    ("round_the_clock", "human-like sessions in the personas' time zones"),
    ("focus", "30% cover traffic of ordinary prompts"),
)


def _adaptive(rng: np.random.Generator, n: int, side: str, days: int, world: dict) -> _Draft:
    """Full-evidence reasoning harvest, then drop evidence cheapest first to a drawn level."""
    base = _draft(rng, "reasoning_hydra", max(1, n // 3), side, days, world)
    d = _Draft("adaptive", "adaptive_attacker", base.n, base.rate * 3, dict(base.P),
               paraphrase=base.paraphrase, pivot=base.pivot, pivot_hours=base.pivot_hours)
    P = d.P
    P.update(cards="group", timing="sync", ua="one_sdk", style="templated",
             signup=_signup(rng, True), infra={"proxy": 1.0},
             elicit_share=max(0.5, float(P.get("elicit_share", 0.5))), system="campaign",
             **_creation(rng, "burst", days, base.n))
    d.level = int(rng.integers(1, len(ADAPTIVE_STEPS) + 1))
    for name, _ in ADAPTIVE_STEPS[: d.level]:
        d.dropped.append(name)
        if name == "elicitation":
            P.update(elicit_share=0.0, system="none")
        elif name == "shared_cards":
            P["cards"] = "own"
        elif name == "sync_timing":
            P.update(timing="jitter", sleep_hours=_r(rng.uniform(4, 9)))
        elif name == "one_ua":
            P["ua"] = "varied"
        elif name == "templates":
            P["style"] = "natural" if rng.random() < 0.5 else "paraphrased"
            d.paraphrase = 1.0
        elif name == "high_effort":
            P["high_effort"] = 0.05
        elif name == "subsidised_signup":
            P["signup"] = _signup(rng, False)
        elif name == "new_accounts":
            P.update(_creation(rng, "aged", days, d.n))
        elif name == "shared_ips":
            P["infra"] = {"own": 1.0}
        elif name == "volume":
            d.n, d.rate = n, d.rate / 3
        elif name == "single_turn":
            P["followup"] = _r(rng.uniform(0.25, 0.45))
        elif name == "fast_pivot":
            d.pivot, d.pivot_hours = _r(d.pivot / 2), 96.0
        elif name == "round_the_clock":
            P["timing"] = "human"
        elif name == "focus":
            d.camouflage = 0.3
    return d


def _imitator(rng: np.random.Generator, n: int, side: str, days: int, world: dict,
              what: str) -> _Draft:
    """A harvest dressed as benign kind ``what`` (novel prompts: no fixed suite re-run)."""
    d = _Draft("imitator", "imitator", n, 1.0, imitates=what)
    P = d.P
    if what == "eval_harness":
        d.rate = _lu(rng, 200, 1500)
        P.update(_creation(rng, "aged", days, n))
        P.update(signup={"research": 0.7, "standard": 0.3}, cards="own", infra={"dc": 1.0},
                 dc_ips=3, dc_blocks=1, ua="one_sdk", sdk="httpx", style="eval_format",
                 capability=_cap(rng, {"math": 0.5, "coding": 0.3, "reasoning": 0.2}),
                 elicit_share=0.0, timing="bursts", high_effort=0.2, burn_share=0.0)
    elif what == "app_backend":
        d.rate = _lu(rng, 300, 2000)
        P.update(_creation(rng, "aged", days, n))
        P.update(signup={"standard": 1.0}, cards="own", infra={"dc": 1.0}, dc_ips=3,
                 dc_blocks=1, ua="one_sdk", system="product", style="natural",
                 capability=_cap(rng, {"coding": 0.35, "math": 0.25, "general": 0.25,
                                       "reasoning": 0.15}),
                 elicit_share=0.0, timing="swell", high_effort=0.1, burn_share=0.0)
        d.pivot, d.pivot_hours = _r(rng.uniform(0, 0.4)), _r(rng.uniform(24, 96))
    elif what == "agent_framework":
        d.rate = _lu(rng, 8, 40)
        P.update(_creation(rng, "spread" if rng.random() < 0.5 else "aged", days, n))
        P.update(signup=_signup(rng, False),
                 cards="pool" if rng.random() < 0.3 else "own",
                 infra=_infra(rng, "own", _r(rng.uniform(0.3, 1.0)), ["proxy"]),
                 **_proxy_knobs(rng), ua="framework", system="framework",
                 framework=int(world["framework"]), scaffold="framework",
                 capability=_cap(rng, {"agentic": 0.9, "coding": 0.1}, 10),
                 steps=_r(rng.uniform(3, 10)), style="natural", elicit_share=0.0,
                 timing="human", high_effort=_r(rng.uniform(0.1, 0.5)),
                 burn_share=_r(rng.uniform(0, 0.1)))
        d.pivot, d.pivot_hours = _r(rng.uniform(0.2, 0.6)), _r(rng.uniform(12, 48))
    else:  # tutoring_app
        d.rate = _lu(rng, 300, 1500)
        P.update(_creation(rng, "aged", days, n))
        P.update(signup={"education": 0.7, "startup": 0.3}, cards="own", infra={"dc": 1.0},
                 dc_ips=3, dc_blocks=1, ua="one_sdk", sdk="openai-node", system="tutor",
                 style="tutor", capability=_cap(rng, {"math": 0.85, "reasoning": 0.15}),
                 elicit_share=0.0, timing="school", high_effort=0.2, burn_share=0.0)
    return d


_FIXED_N = {"harvester": (1, 2), "reseller": None, "imitator_small": (1, 6)}
_ELASTIC_W = {"reasoning_hydra": 3.0, "agentic_hydra": 3.0, "low_and_slow": 1.5,
              "sun_farm": 1.0, "adaptive": 1.5, "imitator": 2.0}
_ARCH_W = {"reasoning_hydra": 1.0, "agentic_hydra": 1.0, "reseller": 0.8, "harvester": 0.6,
           "low_and_slow": 0.9, "sun_farm": 0.6}


def _campaign_sizes(rng: np.random.Generator, arches: list[str], imit: list[str], budget: int,
                    S: _Size) -> list[int]:
    sizes = [0] * len(arches)
    elastic = []
    for i, a in enumerate(arches):
        if a == "harvester":
            sizes[i] = int(rng.integers(1, 3))
        elif a == "reseller":
            sizes[i] = int(rng.integers(S.reseller_accounts[0], S.reseller_accounts[1] + 1))
        elif a == "imitator" and imit[i] != "agent_framework":
            sizes[i] = int(rng.integers(1, 7))
        else:
            elastic.append(i)
    rest = budget - sum(sizes)
    if elastic:
        w = rng.dirichlet([_ELASTIC_W[arches[i]] * 2 for i in elastic])
        for i, x in zip(elastic, w.tolist(), strict=True):
            sizes[i] = max(3, int(round(max(rest, 3 * len(elastic)) * x)))
    return sizes


def _draw_campaigns(rng: np.random.Generator, S: _Size, side: str, days: int, budget: int,
                    world: dict, bench: bool) -> list[_Draft]:
    k = int(rng.integers(S.campaigns[0], S.campaigns[1] + 1))
    # the first campaign carries no elicitation wording at all: the classes a detector tuned
    # on elicitation missed (an agentic hydra behind a shared proxy pool, or a reseller)
    arches = ["agentic_hydra" if rng.random() < 0.6 else "reseller"]
    p_adapt, p_imit = (0.5, 0.5) if bench else (0.35, 0.35)
    if k > 1 and rng.random() < p_adapt:
        arches.append("adaptive")
    if len(arches) < k and rng.random() < p_imit:
        arches.append("imitator")
    names = list(_ARCH_W)
    w = np.array([_ARCH_W[a] for a in names])
    while len(arches) < k:
        arches.append(names[int(rng.choice(len(names), p=w / w.sum()))])
    imit = [str(rng.choice(["eval_harness", "app_backend", "agent_framework",
                            "tutoring_app"])) if a == "imitator" else "" for a in arches]
    # the account budget (5-30 % of the world) needs a campaign that can absorb it
    if not any(a in _ELASTIC_W and imit[i] in ("", "agent_framework")
               for i, a in enumerate(arches)):
        j = len(arches) - 1 if len(arches) > 1 else len(arches)
        el = ["reasoning_hydra", "low_and_slow", "sun_farm"][int(rng.integers(3))]
        arches[j:] = [el]
        imit[j:] = [""]
    sizes = _campaign_sizes(rng, arches, imit, budget, S)
    out = []
    for j, (a, n) in enumerate(zip(arches, sizes, strict=True)):
        d = _draft(rng, a, n, side, days, {**world, "imitates": imit[j]}, force_plain=j == 0)
        out.append(d)
    return out


def _record(d: _Draft, days: int) -> dict[str, Any]:
    """Numeric-where-possible record of a campaign's tactic knobs."""
    P = d.P
    infra = P.get("infra", {})
    caps = P.get("capability", {})
    tot = sum(caps.values()) or 1.0
    mix = P.get("elicit_mix", {}) if P.get("elicit_share", 0) > 0 else {}
    cards = P.get("cards", "group")
    # accounts per card: 1 (own), the group size, or None (cards from the world's pool)
    per_card = {"own": 1.0, "pool": None, "group": float(P.get("pay_group", 8))}[cards]
    langs = P.get("languages", {"en": 1.0})
    signup = P.get("signup", {"standard": 1.0})
    wording = (P.get("elicit_share", 0) > 0 or P.get("style") in ("eval_format", "tutor")
               or P.get("system") in ("campaign", "tutor"))
    age = P.get("age_days", (0, 0))
    return {
        "archetype": d.archetype, "kind": d.kind, "imitates": d.imitates,
        "n_accounts": d.n, "rate": _r(d.rate, 2),
        "requests_expected": int(d.n * d.rate * days),
        "infra_own": infra.get("own", 0.0), "infra_proxy": infra.get("proxy", 0.0),
        "infra_dc": infra.get("dc", 0.0), "infra_mobile": infra.get("mobile", 0.0),
        "sticky_minutes": P.get("sticky_minutes") if infra.get("proxy") else None,
        "dc_shared_pool": int(bool(P.get("dc_pool"))) if infra.get("dc") else 0,
        "cards": cards, "accounts_per_card": per_card,
        "card_pool_shared": int(cards == "pool"),
        "ua": P.get("ua", "one_sdk"),
        "creation": P.get("creation", "burst"), "age_days_lo": age[0], "age_days_hi": age[1],
        "nonstandard_signup": _r(1 - signup.get("standard", 0.0) / (sum(signup.values()) or 1)),
        **{f"cap_{c}": _r(caps.get(c, 0.0) / tot)
           for c in ("coding", "math", "agentic", "reasoning", "general")},
        "style": P.get("style", "natural"), "paraphrase": d.paraphrase,
        "elicit_share": float(P.get("elicit_share", 0.0)), "elicitation": bool(wording),
        "elicit_families": sorted(mix),
        "heldout_family_share": _r(sum(v for f, v in mix.items() if f in HELDOUT_FAMILIES)
                                   / (sum(mix.values()) or 1)),
        "languages": langs, "non_english": _r(1 - langs.get("en", 1.0)),
        "system": P.get("system", "none"), "steps": float(P.get("steps", 1.0)),
        "followup": float(P.get("followup", 0.0)),
        "timing": P.get("timing", "sync"), "sync": int(P.get("timing", "sync") == "sync"),
        "camouflage": d.camouflage, "reseller": int(bool(P.get("reseller"))),
        "pivot": d.pivot, "pivot_hours": d.pivot_hours,
        "high_effort": float(P.get("high_effort", 0.5)),
        "adaptive_level": d.level, "dropped": list(d.dropped),
    }


# ---------------------------------------------------------------------------------------
# draw_world
# ---------------------------------------------------------------------------------------


def draw_world(seed: int, role: str, size: str = "bench") -> WorldSpec:
    """Draw one world from the distribution (deterministic in ``(seed, role, size)``).

    Parameters
    ----------
    seed : int
    role : {"tune", "report"}
        Tune worlds use the tune corpus group and phrasings; report worlds the disjoint
        report group plus the report-only extraction families.
    size : {"bench", "ci"}
        ``bench``: ~1,500–4,000 accounts and ~80k–250k requests; ``ci``: ~150–400 accounts
        and ~5k–15k requests (targets; the simulated counts scatter around them).
    """
    if role not in ("tune", "report"):
        raise ConfigError(f"role must be tune or report, not {role!r}")
    if size not in SIZES:
        raise ConfigError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    S = SIZES[size]
    rng = np.random.default_rng([int(seed), zlib.crc32(role.encode()),
                                 zlib.crc32(size.encode()), 0x5EED])
    world_id = f"{role}-{size}-{int(seed)}"
    side = role
    days = int(rng.integers(4, 10))
    start = _START0 + timedelta(days=int(rng.integers(0, 300)))
    models, release_days = _draw_lineup(rng, days)
    A = int(round(_lu(rng, *S.accounts)))
    # requests per account-day between 3 and 40 (sparse to busy user bases)
    R = _lu(rng, max(S.requests[0], 3.0 * A * days), min(S.requests[1], 40.0 * A * days))
    cshare = float(rng.uniform(0.05, 0.30))
    # world-level shared pools
    pool_sizes = {k: int(round(_lu(rng, *v))) for k, v in S.pools.items()}
    n_carriers = int(rng.integers(1, 4))
    carriers = [f"cgnat_{i}" for i in range(n_carriers)]
    ccountries = [str(c) for c in rng.choice(_CARRIER_COUNTRIES, size=n_carriers,
                                             replace=False).tolist()]
    pools: list[tuple[str, str, int, int]] = [
        ("resi_proxy", "residential", pool_sizes["resi_proxy"], 1),
        ("vpn_dc", "datacenter", pool_sizes["vpn_dc"], int(rng.integers(3, 21))),
        ("card_pool", "card", pool_sizes["card_pool"], 1)]
    for c in carriers:
        pools.append((c, "cgnat", int(rng.integers(2, 9)), 1))
    framework = int(rng.integers(0, len(frameworks(side))))
    heldout_share = _r(rng.uniform(0.15, 0.6)) if side == "report" else 0.0
    world = {"framework": framework, "heldout_share": heldout_share, "cgnat": carriers}
    # ---- campaigns ------------------------------------------------------------------
    drafts = _draw_campaigns(rng, S, side, days, max(3, int(round(cshare * A))), world,
                             size == "bench")
    Vc = sum(d.n * d.rate * days for d in drafts)
    cap_share = float(rng.uniform(0.15, 0.4))
    if Vc > cap_share * R:
        f = cap_share * R / Vc
        for d in drafts:
            d.rate = max(1.0, d.rate * f)
        Vc = sum(d.n * d.rate * days for d in drafts)
    C = sum(d.n for d in drafts)
    # ---- benign ---------------------------------------------------------------------
    Ab = max(20, A - C)
    Rb = max(R - Vc, 0.4 * R)
    benign: dict[str, dict[str, Any]] = {}
    fixed = 0
    for kind, (p, acc, (rlo, rhi), _) in BENIGN_MENU.items():
        if kind == "ordinary" or rng.random() >= p:
            continue
        if acc[0] == "share":
            n = max(int(acc[3]), int(round(Ab * rng.uniform(acc[1], acc[2]))))
        elif acc[0] == "count":
            n = int(rng.integers(acc[1], acc[2] + 1))
        else:
            n = int(rng.integers(S.reseller_accounts[0], S.reseller_accounts[1] + 1))
        rate = _lu(rng, rlo, rhi) if rhi > rlo else rlo
        n_acc = 3 * n if kind == "key_rotator" else n
        benign[kind] = {"n_accounts": n, "accounts": n_acc, "rate": rate}
        fixed += n_acc
    n_ord = max(10, Ab - fixed)
    benign = {"ordinary": {"n_accounts": n_ord, "accounts": n_ord,
                           "rate": _lu(rng, *BENIGN_MENU["ordinary"][2])}, **benign}
    params = _benign_params(rng, benign, side, carriers, ccountries, framework, S)
    vol = {k: _benign_volume(k, v, params.get(k, {}), days, models, release_days)
           for k, v in benign.items()}
    for k in list(vol):  # no machine kind may be more than 8% of the world
        if k in _MACHINE and vol[k] > 0.08 * R:
            _scale_kind(benign[k], params.setdefault(k, {}), 0.08 * R / vol[k])
            vol[k] = _benign_volume(k, benign[k], params.get(k, {}), days, models,
                                    release_days)
    s = float(np.clip(Rb / max(sum(vol.values()), 1.0), 0.15, 4.0))
    for k in benign:
        _scale_kind(benign[k], params.setdefault(k, {}), s)
    # ---- assemble -------------------------------------------------------------------
    pops: list[Population] = []
    for k, v in benign.items():
        pops.append(Population(k, int(v["n_accounts"]), _r(v["rate"], 3),
                               params=params.get(k, {})))
    campaigns: dict[str, dict] = {}
    for j, d in enumerate(drafts):
        cid = f"c{j + 1:02d}-{d.archetype}"
        P = {k: v for k, v in d.P.items() if v is not None}
        pops.append(Population(d.kind, d.n, _r(d.rate, 3), camouflage=d.camouflage,
                               paraphrase=d.paraphrase, pivot=d.pivot,
                               pivot_hours=d.pivot_hours, name=cid, params=P))
        campaigns[cid] = _record(d, days)
    r1 = min(x for x in release_days if x is not None)
    scen = Scenario(world_id, tuple(pops), start=f"{start.isoformat()}T00:00:00Z",
                    days=float(days), models=models, release_day=r1,
                    release_days=release_days, shared_pools=tuple(pools),
                    max_reply_chars=S.max_reply_chars, gzip_level=2)
    scen.validate()
    Vb = sum(_benign_volume(k, v, params.get(k, {}), days, models, release_days)
             for k, v in benign.items())
    n_total = sum(v["accounts"] for v in benign.values()) + C
    knobs = {
        "days": days, "start": start.isoformat(), "start_weekday": start.weekday(),
        "models": list(models), "release_days": list(release_days),
        "n_models": len(models), "n_releases": sum(x is not None for x in release_days),
        "target_accounts": A, "target_requests": int(R),
        "expected_accounts": n_total, "expected_requests": int(Vb + Vc),
        "campaign_account_share": _r(C / max(n_total, 1)),
        "campaign_request_share": _r(Vc / max(Vb + Vc, 1.0)),
        "n_campaigns": len(drafts), "pools": {p[0]: p[2] for p in pools},
        "carrier_countries": ccountries, "framework": framework,
        "heldout_family_share": heldout_share,
        "text_perturb": _r(rng.uniform(0.2, 0.6)) if side == "report" else 0.0,
        "benign": {k: {"n_accounts": int(v["n_accounts"]), "rate": _r(v["rate"], 3),
                       **params.get(k, {})} for k, v in benign.items()},
    }
    return WorldSpec(world_id, role, int(seed), scen, side, _py(knobs), _py(campaigns), size)


def _benign_params(rng: np.random.Generator, benign: dict, side: str, carriers: list[str],
                   ccountries: list[str], framework: int, S: _Size) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for k in benign:
        if k in _LEGACY_PARAMS:
            out[k] = _LEGACY_PARAMS[k](rng)
        elif k == "power_user":
            out[k] = {"night_share": _r(rng.uniform(0.1, 0.5)),
                      "vpn_share": _r(rng.uniform(0, 0.3)),
                      "card_pool_share": _r(rng.uniform(0, 0.1))}
        elif k == "proxy_pool_user":
            dc = rng.random() < 0.3
            out[k] = {"pool": "vpn_dc" if dc else "resi_proxy",
                      "pool_kind": "datacenter" if dc else "residential",
                      "sticky_minutes": _r(rng.uniform(5, 60))}
        elif k == "cgnat_users":
            out[k] = {"carriers": carriers, "carrier_countries": ccountries}
        elif k == "corporate_proxy":
            out[k] = {"n_companies": int(rng.integers(1, 6)), "egress_ips": int(rng.integers(1, 4))}
        elif k == "startup_shared_card":
            out[k] = {"team_size": (2, int(rng.integers(3, 9))),
                      "backend_share": _r(rng.uniform(0, 0.3))}
        elif k == "fast_adopter":
            lo = _r(rng.uniform(0.6, 0.8))
            out[k] = {"share": (lo, _r(min(0.98, lo + rng.uniform(0.05, 0.3)))),
                      "delay_hours": (0.2, _r(rng.uniform(2, 12))),
                      "cot_share": _r(rng.uniform(0, 0.25))}
        elif k == "agent_framework":
            out[k] = {"framework": framework, "max_steps": int(rng.integers(10, 31))}
        elif k == "tutoring_app":
            out[k] = {"followup_share": _r(rng.uniform(0.05, 0.35))}
        elif k == "eval_cot":
            out[k] = {"suite_size": int(rng.integers(80, 401)),
                      "runs_per_day": _r(rng.uniform(0.5, 2.0)),
                      "samples": int(rng.integers(1, 6))}
        elif k == "judge_lab":
            out[k] = {"jobs_per_day": _r(rng.uniform(0.5, 4))}
        elif k == "reseller_customers":
            out[k] = {"customer_tz": float(rng.choice([8.0, 1.0, -5.0, 5.5, 9.0, -3.0])),
                      "card_pool_share": _r(rng.uniform(0.2, 0.8)),
                      "relay_pool": "vpn_dc" if rng.random() < 0.3 else None}
    return {k: {a: b for a, b in v.items() if b is not None} for k, v in out.items()}


def _benign_volume(kind: str, v: dict, params: dict, days: int, models: Sequence[str],
                   release_days: Sequence[float | None]) -> float:
    rel = [d for d in release_days if d is not None]
    n_est = len(release_days) - len(rel)
    n = float(v["accounts"])
    if kind == "eval_cot":
        runs = float(params.get("runs_per_day", 1.0)) * 1.25
        per = runs * (days * n_est + sum(days - r for r in rel)) + len(rel) * int(
            params.get("samples", 3))
        return n * int(params.get("suite_size", 300)) * per
    if kind == "eval_harness":
        runs = float(params.get("runs_per_day", 1.0)) * 1.37
        return n * int(params.get("suite_size", 240)) * 1.25 * (runs * (2 * days - rel[0]) + 1)
    if kind == "key_rotator":
        return float(v["n_accounts"]) * v["rate"] * days * _VOLUME[kind]
    return n * v["rate"] * days * _VOLUME.get(kind, 1.0)


def _scale_kind(v: dict, params: dict, f: float) -> None:
    """Scale a benign population's volume by ``f`` (suite size for eval kinds)."""
    if "suite_size" in params:
        params["suite_size"] = max(10, int(round(params["suite_size"] * f)))
    else:
        v["rate"] = max(0.5, v["rate"] * f)


# ---------------------------------------------------------------------------------------
# Corpus groups
# ---------------------------------------------------------------------------------------

#: source -> group for the full shared-data corpora (sources of the other group are held
#: out completely; ``gsm8k`` and unknown sources are split in halves by conversation).
GROUPS_FULL = {
    "legit": {"tune": ("sharegpt", "mt_bench"),
              "report": ("oasst1", "hh_rlhf", "alpaca_eval", "vicuna")},
    "distill": {"tune": ("alpaca", "code_alpaca", "alpaca_generation_prompt"),
                "report": ("self_instruct", "code_alpaca_seed")},
}
#: Fallback for corpora without ShareGPT (the bundled one): still disjoint by source.
GROUPS_SMALL = {
    "legit": {"tune": ("hh_rlhf", "mt_bench"),
              "report": ("oasst1", "alpaca_eval", "vicuna")},
    "distill": GROUPS_FULL["distill"],
}


def _select(c: Corpus, mine: Sequence[str], other: Sequence[str], side: str) -> list[Item]:
    known = set(mine) | set(other)
    want_tune = side == "tune"
    return [it for it in c.items if it.source in mine or (
        it.source not in known and (stable_unit(split_key(it)) < 0.5) == want_tune)]


def _generated(side: str, n_code: int = 400, n_reason: int = 150) -> list[Item]:
    rng = np.random.default_rng([0x6E4, zlib.crc32(side.encode())])
    seen: dict[str, Item] = {}
    for i in range(n_code * 3):
        t = coding_task_side(rng, side)
        if t not in seen:
            seen[t] = Item((t,), (), f"generated_coding_{side}", str(i), "coding")
        if len(seen) >= n_code:
            break
    out = list(seen.values())
    seen_r: dict[str, Item] = {}
    for i in range(n_reason * 3):
        t = reasoning_task_side(rng, side)
        if t not in seen_r:
            seen_r[t] = Item((t,), (), f"generated_reasoning_{side}", str(i), "reasoning")
        if len(seen_r) >= n_reason:
            break
    return out + list(seen_r.values())


@lru_cache(maxsize=8)
def _load(key: tuple[str, ...] | None, which: str) -> Corpus:
    return bundled_corpus(which) if key is None else load_corpus([Path(k) for k in key])


def _key(spec: CorpusSpec) -> tuple[str, ...] | None:
    if spec is None:
        return None
    specs = [spec] if isinstance(spec, str | Path) else list(spec)  # type: ignore[arg-type]
    return tuple(str(Path(s).resolve()) for s in specs)


@lru_cache(maxsize=8)
def _groups(lkey: tuple[str, ...] | None, dkey: tuple[str, ...] | None
            ) -> dict[str, tuple[Corpus, Corpus]]:
    return _build_groups(_load(lkey, "legit"), _load(dkey, "distill"))


def _build_groups(legit: Corpus, distill: Corpus) -> dict[str, tuple[Corpus, Corpus]]:
    g = GROUPS_FULL if "sharegpt" in legit.sources() else GROUPS_SMALL
    lt = _select(legit, g["legit"]["tune"], g["legit"]["report"], "tune")
    lr = _select(legit, g["legit"]["report"], g["legit"]["tune"], "report")
    dt = _select(distill, g["distill"]["tune"], g["distill"]["report"], "tune")
    dr = _select(distill, g["distill"]["report"], g["distill"]["tune"], "report")
    # report-side harvest seeds also include the report legit coding/math prompts
    dr += [it for it in lr if it.category in ("coding", "math")]
    dt += _generated("tune")
    dr += _generated("report")
    tune_keys = {split_key(it) for it in lt + dt}
    lr = [it for it in lr if split_key(it) not in tune_keys]
    dr = [it for it in dr if split_key(it) not in tune_keys]
    return {"tune": (Corpus(lt), Corpus(dt)), "report": (Corpus(lr), Corpus(dr))}


def world_corpora(group: str, legit_corpus: CorpusSpec = None,
                  distill_corpus: CorpusSpec = None) -> tuple[Corpus, Corpus]:
    """The (legit, distill) corpora of a corpus group; tune and report share no source.

    With the shared-data corpora: tune = ShareGPT + MT-Bench / Alpaca + Code Alpaca + half of
    GSM8K; report = OpenAssistant + HH-RLHF + AlpacaEval + Vicuna / Self-Instruct seeds +
    Code Alpaca seeds + the other half of GSM8K + the report side's legit coding/math
    prompts. Without ShareGPT (the bundled corpus): tune legit = HH-RLHF + MT-Bench, report
    legit = OpenAssistant + AlpacaEval + Vicuna. Each side also gets its own generated
    coding and reasoning tasks. Any item whose opening prompt also occurs on the tune side is
    dropped from the report side. Loaded corpora are cached per path.
    """
    if group not in ("tune", "report"):
        raise ConfigError(f"corpus group must be tune or report, not {group!r}")
    if isinstance(legit_corpus, Corpus) or isinstance(distill_corpus, Corpus):
        lc = legit_corpus if isinstance(legit_corpus, Corpus) else _load(_key(legit_corpus),
                                                                         "legit")
        dc = distill_corpus if isinstance(distill_corpus, Corpus) else _load(
            _key(distill_corpus), "distill")
        return _build_groups(lc, dc)[group]
    return _groups(_key(legit_corpus), _key(distill_corpus))[group]


def _perturbed(c: Corpus, share: float, seed: int) -> Corpus:
    if share <= 0:
        return c
    rng = np.random.default_rng([int(seed), 0x9E27])
    u = rng.random(len(c.items))
    out = []
    for it, x in zip(c.items, u.tolist(), strict=True):
        if x < share:
            it = replace(it, turns=(perturb_text(it.turns[0], it.category, rng),) + it.turns[1:])
        out.append(it)
    return Corpus(out)


@lru_cache(maxsize=4)
def _trace(key: tuple[str, ...]) -> TimingTrace:
    return load_timing([Path(k) for k in key])


def simulate_world(spec: WorldSpec, out_dir: str | Path, *, legit_corpus: CorpusSpec = None,
                   distill_corpus: CorpusSpec = None,
                   timing: str | Path | list[str | Path] | TimingTrace | None = None
                   ) -> SimResult:
    """Simulate a drawn world; writes ``logs/``, ``labels.csv``, ``manifest.json``, ``world.json``.

    ``legit_corpus`` / ``distill_corpus`` default to the bundled corpus; pass
    ``../shared/data/legit`` and ``../shared/data/distill`` (and ``timing=../shared/data/
    traces``) for benchmark numbers. The world's corpus group picks the sources
    (:func:`world_corpora`); report worlds perturb a drawn share of their seed prompts and add
    the report-only extraction families to the template bank.
    """
    legit, distill = world_corpora(spec.corpus_group, legit_corpus, distill_corpus)
    if spec.corpus_group == "report":
        distill = _perturbed(distill, float(spec.knobs.get("text_perturb", 0.0)), spec.seed)
    if timing is None or isinstance(timing, TimingTrace):
        trace = timing
    else:
        trace = _trace(_key(timing if isinstance(timing, list) else [timing]) or ())
    bank = TemplateBank(spec.corpus_group)
    if spec.corpus_group == "report":
        bank.families.update({k: list(v) for k, v in HELDOUT_FAMILIES.items()})
    scen = spec.scenario
    scen.validate()
    ctx = Ctx(scen, legit, distill, bank, trace, Accounts(), spec.seed)
    allb, order = _generate(ctx, spec.seed)
    out = Path(out_dir)
    res = _write(out, scen, spec.seed, spec.corpus_group, ctx, allb, order, extra={
        "world_id": spec.world_id, "role": spec.role, "size": spec.size,
        "corpus_group": spec.corpus_group})
    (out / "world.json").write_bytes(orjson.dumps(
        spec.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return res
