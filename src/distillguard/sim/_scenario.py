"""Scenarios: which populations to simulate, how big, and how strong the attacks are.

A :class:`Scenario` is plain data (a frozen dataclass) so a benchmark can build variants
with :meth:`Scenario.with_knobs` — e.g. sweep ``camouflage=0.0 … 0.8`` over every campaign —
and record exactly what it ran. :data:`SCENARIOS` holds the named presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from distillguard.errors import ConfigError

__all__ = [
    "ALL_BENIGN_KINDS",
    "ALL_CAMPAIGN_KINDS",
    "BENIGN_KINDS",
    "CAMPAIGN_KINDS",
    "GLOBAL_KNOBS",
    "Population",
    "SCENARIOS",
    "Scenario",
    "WORLD_BENIGN_KINDS",
    "WORLD_CAMPAIGN_KINDS",
]

#: Population kinds labelled ``benign`` (ordinary use and hard negatives).
BENIGN_KINDS = ("ordinary", "eval_harness", "enterprise_batch", "app_backend", "coding_agent",
                "university", "multi_key_org", "key_rotator")
#: Population kinds labelled ``distill`` (each population is one or more campaigns).
CAMPAIGN_KINDS = ("naive_harvester", "reasoning_hydra", "agentic_hydra", "proxy_reseller",
                  "low_and_slow")
#: Benign kinds added for the cross-world benchmark (``distillguard.sim.worlds``); generators
#: in ``_world_kinds``. Kept apart from :data:`BENIGN_KINDS` so the fixed presets, which do
#: not use them, still cover every kind of that tuple.
WORLD_BENIGN_KINDS = ("power_user", "fast_adopter", "agent_framework", "tutoring_app",
                      "eval_cot", "judge_lab", "translation_batch", "cgnat_users",
                      "corporate_proxy", "startup_shared_card", "reseller_customers",
                      "proxy_pool_user")
#: Campaign kinds of the cross-world benchmark: one general tactic-space generator, the
#: adaptive attacker that drops published evidence, and the imitator of a benign kind.
WORLD_CAMPAIGN_KINDS = ("tactic_campaign", "adaptive_attacker", "imitator")
ALL_BENIGN_KINDS = BENIGN_KINDS + WORLD_BENIGN_KINDS
ALL_CAMPAIGN_KINDS = CAMPAIGN_KINDS + WORLD_CAMPAIGN_KINDS


@dataclass(frozen=True)
class Population:
    """One population of accounts of a single kind.

    Parameters
    ----------
    kind : str
        One of :data:`BENIGN_KINDS` or :data:`CAMPAIGN_KINDS` (see ``distillguard.sim``
        docs for what each kind does).
    n_accounts : int
        Accounts in the population. For ``naive_harvester`` each account is its own
        campaign; for ``key_rotator`` it is the number of *people* (three accounts each); for
        ``multi_key_org``/``university`` the accounts are spread over ``params["n_orgs"]``.
    rate : float
        Mean requests per account per active day.
    camouflage : float in [0, 1]
        Campaigns only: share of the campaign's requests that are ordinary prompts replayed
        from the legitimate corpus (a reseller's real customers, or deliberate cover).
    paraphrase : float in [0, 1]
        Campaigns only: probability that a request uses a freshly paraphrased template
        instead of the campaign's fixed house phrasing.
    ip_pool : int or None
        Campaigns only: addresses in the campaign's egress pool (proxy exits or relay
        servers). ``None`` = the kind's default. Ignored by ``low_and_slow``, which by
        definition shares no infrastructure.
    pivot : float in [0, 1]
        Share of traffic moved to the newly released model once the pivot is complete.
    pivot_hours : float
        Hours after release by which the pivot is complete (ramps linearly from release).
    name : str or None
        Campaign id (campaign kinds); default ``<kind>-<n>``.
    params : mapping
        Kind-specific extras (documented on each generator in ``_populations``).
    """

    kind: str
    n_accounts: int
    rate: float
    camouflage: float = 0.0
    paraphrase: float = 0.0
    ip_pool: int | None = None
    pivot: float = 0.0
    pivot_hours: float = 24.0
    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "distill" if self.kind in ALL_CAMPAIGN_KINDS else "benign"

    def validate(self) -> None:
        if self.kind not in ALL_BENIGN_KINDS + ALL_CAMPAIGN_KINDS:
            raise ConfigError(f"unknown population kind {self.kind!r}")
        if self.n_accounts < 0 or self.rate < 0:
            raise ConfigError(f"{self.kind}: n_accounts and rate must be >= 0")
        for k in ("camouflage", "paraphrase", "pivot"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{self.kind}: {k} must be in [0, 1], got {v}")


#: Simple knob names accepted by ``simulate(**knobs)`` and :meth:`Scenario.with_knobs`,
#: applied to every campaign population.
GLOBAL_KNOBS = {
    "camouflage": "absolute share in [0, 1] of ordinary prompts mixed into campaign traffic",
    "paraphrase": "absolute probability in [0, 1] of a freshly paraphrased template",
    "accounts": "multiplier on every campaign's n_accounts (naive_harvester stays >= 1)",
    "rate": "multiplier on every campaign's per-account request rate",
    "ip_pool": "absolute egress-pool size for campaigns that use a pool",
    "pivot": "absolute share of campaign traffic moved to the new model",
    "scale": "multiplier on n_accounts of *every* population (benign too)",
}


@dataclass(frozen=True)
class Scenario:
    """A complete simulation setup: time span, models, and populations.

    Parameters
    ----------
    name : str
    populations : tuple of Population
    start : str
        RFC 3339 UTC midnight where the simulated window starts (a Monday by default so
        weekday/weekend structure is visible).
    days : float
        Length of the window.
    models : tuple of str
        The established model and the newly released one (two names), or a longer line-up
        when ``release_days`` is given.
    release_day : float
        Days after ``start`` at which the new model is released (3.7 = day 4, ~17:00 UTC);
        no request uses it earlier. With ``release_days`` it must be the earliest release.
    tune_fraction : float
        Share of every corpus (by conversation) that goes to ``split="tune"``.
    max_reply_chars : int
        Assistant turns carried in multi-turn ``messages`` are cut to this length (file size).
    gzip_level : int
        Compression level of the output files.
    release_days : tuple of (float or None)
        Optional model line-up, aligned with ``models``: ``None`` = available from the start
        (established), a number = released that many days after ``start``. Empty (default):
        ``models[0]`` established, ``models[1]`` released at ``release_day``. Kinds written
        for two models are lifted onto the line-up (``Ctx.lift_models``).
    shared_pools : tuple of (name, kind, size, n_blocks)
        World-level pools several populations draw from, built deterministically from the
        simulation seed and the pool name: ``residential`` (proxy exits, one /24 each),
        ``datacenter`` (VPN / cloud exits over ``n_blocks`` /24s), ``cgnat`` (a few carrier
        addresses in one /24) and ``card`` (payment fingerprints).
    """

    name: str
    populations: tuple[Population, ...]
    start: str = "2026-03-02T00:00:00Z"
    days: float = 7.0
    models: tuple[str, ...] = ("model-a", "model-b")
    release_day: float = 3.7
    tune_fraction: float = 0.5
    max_reply_chars: int = 900
    gzip_level: int = 4
    release_days: tuple[float | None, ...] = ()
    shared_pools: tuple[tuple[str, str, int, int], ...] = ()

    def validate(self) -> None:
        if self.days <= 0 or not 0 < self.release_day < self.days:
            raise ConfigError("need days > 0 and 0 < release_day < days")
        if len(self.models) < 2:
            raise ConfigError("need at least two models")
        if self.release_days:
            rel = [d for d in self.release_days if d is not None]
            if len(self.release_days) != len(self.models) or not rel or \
                    len(rel) == len(self.release_days):
                raise ConfigError("release_days must align with models and hold at least one "
                                  "established (None) and one released model")
            if not all(0 < d < self.days for d in rel) or abs(min(rel) - self.release_day) > 1e-9:
                raise ConfigError("release days must lie in (0, days); release_day must equal "
                                  "the earliest of them")
        for name, kind, size, _ in self.shared_pools:
            if kind not in ("residential", "datacenter", "cgnat", "card") or size < 1:
                raise ConfigError(f"shared pool {name!r}: bad kind {kind!r} or size {size}")
        for p in self.populations:
            p.validate()

    def with_knobs(self, **knobs: Any) -> Scenario:
        """Return a copy with knob overrides applied.

        Accepts the simple names in :data:`GLOBAL_KNOBS`, any :class:`Scenario` field
        (``days=3``), and per-kind overrides ``<kind>__<field>`` (``reasoning_hydra__n_accounts
        =50``, ``proxy_reseller__camouflage=0.6``) or ``<kind>__<param>`` for ``params``.
        """
        scen_fields = {f.name for f in fields(Scenario)} - {"populations"}
        pop_fields = {f.name for f in fields(Population)} - {"kind", "params"}
        top = {k: v for k, v in knobs.items() if k in scen_fields}
        pops = list(self.populations)
        for key, val in knobs.items():
            if key in top:
                continue
            if "__" in key:
                kind, attr = key.split("__", 1)
                if kind not in ALL_BENIGN_KINDS + ALL_CAMPAIGN_KINDS:
                    raise ConfigError(f"unknown population kind in knob {key!r}")
                for i, p in enumerate(pops):
                    if p.kind != kind:
                        continue
                    if attr in pop_fields:
                        pops[i] = replace(p, **{attr: val})
                    else:
                        pops[i] = replace(p, params={**p.params, attr: val})
                continue
            if key not in GLOBAL_KNOBS:
                raise ConfigError(f"unknown knob {key!r}; known: {sorted(GLOBAL_KNOBS)}, "
                                  f"Scenario fields, or <kind>__<field>")
            for i, p in enumerate(pops):
                if key == "scale":
                    n = round(p.n_accounts * float(val))
                    pops[i] = replace(p, n_accounts=max(1 if p.n_accounts else 0, n))
                    continue
                if p.label != "distill":
                    continue
                if key == "accounts":
                    n = round(p.n_accounts * float(val))
                    pops[i] = replace(p, n_accounts=max(1 if p.n_accounts else 0, n))
                elif key == "rate":
                    pops[i] = replace(p, rate=p.rate * float(val))
                elif key == "ip_pool":
                    pops[i] = replace(p, ip_pool=int(val))
                else:
                    pops[i] = replace(p, **{key: float(val)})
        out = replace(self, populations=tuple(pops), **top)
        out.validate()
        return out


def _populations(acc: float, rate: float = 1.0, machine: float = 1.0
                 ) -> tuple[Population, ...]:
    """The standard mix.

    ``acc`` multiplies account counts, ``rate`` per-account rates of multi-account
    populations, ``machine`` the volume of single-account machine clients (harvester,
    batch jobs, eval suites) so small presets are not dominated by them.
    """
    n = lambda x, lo=1: max(lo, round(x * acc))  # noqa: E731
    return (
        # --- benign ---------------------------------------------------------------------
        Population("ordinary", n(1500), 9.0 * rate),
        Population("eval_harness", n(4), 1.0,
                   params={"suite_size": max(20, round(240 * min(1.0, machine * 2)))}),
        Population("enterprise_batch", n(3), 1500.0 * machine),
        Population("coding_agent", n(40), 70.0 * rate),
        Population("university", n(300), 5.0 * rate, params={"n_orgs": 2}),
        Population("multi_key_org", n(30, 3), 15.0 * rate, params={"n_orgs": 1}),
        Population("key_rotator", n(3), 60.0 * rate),
        # --- campaigns ------------------------------------------------------------------
        Population("naive_harvester", 1, 3000.0 * machine, ip_pool=2),
        Population("reasoning_hydra", n(400, 8), 25.0 * rate, camouflage=0.1,
                   paraphrase=0.5, ip_pool=n(600, 20), pivot=0.25, pivot_hours=36.0),
        Population("agentic_hydra", n(200, 6), 25.0 * rate, camouflage=0.05,
                   paraphrase=0.3, ip_pool=n(300, 12), pivot=0.5, pivot_hours=20.0),
        Population("proxy_reseller", n(30, 3), 100.0 * rate, camouflage=0.3,
                   paraphrase=0.3, ip_pool=12, pivot=0.2, pivot_hours=48.0),
        Population("low_and_slow", n(60, 4), 6.0, camouflage=0.15, paraphrase=0.9,
                   pivot=0.3, pivot_hours=48.0),
        # --- benign, added later (last, so earlier populations' random streams stay) ----
        Population("app_backend", n(4), 800.0 * machine),
    )


#: Named presets. ``default`` is the benchmark; ``demo`` is what the README shows;
#: ``tiny`` is for unit tests.
SCENARIOS: dict[str, Scenario] = {
    "default": Scenario("default", _populations(1.0)),
    "demo": Scenario("demo", _populations(0.2, 0.9, 0.25)),
    "tiny": Scenario("tiny", _populations(0.035, 0.28, 0.04), max_reply_chars=400),
}
