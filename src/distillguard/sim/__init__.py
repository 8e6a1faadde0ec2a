"""Traffic simulator: a week of API request logs with labelled distillation campaigns.

No public log of a real distillation campaign exists, so distillguard is developed and
benchmarked on simulated traffic whose *text* is real (prompt sets written by people, and
prompt sets really used for distillation) and whose *structure* — accounts, infrastructure,
timing, templates — reproduces what public 2026 reports describe: hydra clusters of
hundreds of accounts mixed with ordinary customers, chain-of-thought elicitation, rubric
grading, censorship-safe rewrites, synchronized timing, shared payment methods, and a pivot
to a newly released model within a day.

>>> from distillguard.sim import simulate
>>> res = simulate("out/demo", scenario="demo", seed=7)          # doctest: +SKIP
>>> res.n_requests, res.labels                                   # doctest: +SKIP

Populations (see each ``gen_<kind>`` in ``_populations`` for details):

benign
    ``ordinary``, and the hard negatives ``eval_harness``, ``enterprise_batch``,
    ``coding_agent``, ``university``, ``multi_key_org``, ``key_rotator``.
distill (campaigns)
    ``naive_harvester``, ``reasoning_hydra``, ``agentic_hydra``, ``proxy_reseller``,
    ``low_and_slow``.

Cross-world benchmark (:mod:`distillguard.sim.worlds`; generators in ``_world_kinds``):
:func:`draw_world` draws a whole world — line-up, sizes, hard negatives (the kinds above plus
:data:`WORLD_BENIGN_KINDS`) and campaigns from a tactic space (:data:`WORLD_CAMPAIGN_KINDS`)
— and :func:`simulate_world` writes it, with disjoint text sources for tune and report
worlds.

Attack strength is set per :class:`Population` or, for every campaign at once, with the
knobs ``camouflage``, ``paraphrase``, ``accounts``, ``rate``, ``ip_pool`` and ``pivot``
passed to :func:`simulate`.
"""

from __future__ import annotations

from distillguard.sim._corpus import Corpus, Item, bundled_corpus, load_corpus
from distillguard.sim._populations import KINDS, describe_kinds
from distillguard.sim._scenario import (
    ALL_BENIGN_KINDS,
    ALL_CAMPAIGN_KINDS,
    BENIGN_KINDS,
    CAMPAIGN_KINDS,
    GLOBAL_KNOBS,
    SCENARIOS,
    WORLD_BENIGN_KINDS,
    WORLD_CAMPAIGN_KINDS,
    Population,
    Scenario,
)
from distillguard.sim._simulate import SimResult, simulate
from distillguard.sim._timing import TimingTrace, load_timing
from distillguard.sim.worlds import WorldSpec, draw_world, simulate_world, world_corpora

__all__ = [
    "ALL_BENIGN_KINDS",
    "ALL_CAMPAIGN_KINDS",
    "BENIGN_KINDS",
    "CAMPAIGN_KINDS",
    "Corpus",
    "GLOBAL_KNOBS",
    "Item",
    "KINDS",
    "Population",
    "SCENARIOS",
    "Scenario",
    "SimResult",
    "TimingTrace",
    "WORLD_BENIGN_KINDS",
    "WORLD_CAMPAIGN_KINDS",
    "WorldSpec",
    "bundled_corpus",
    "describe_kinds",
    "draw_world",
    "load_corpus",
    "load_timing",
    "simulate",
    "simulate_world",
    "world_corpora",
]
