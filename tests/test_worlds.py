"""Tests of the world distribution (``distillguard.sim.worlds``) and its population kinds.

Everything runs on the bundled corpus and "ci"-size worlds; the test that reads the real
corpora under ``../shared/data`` is skipped when that folder is absent.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from distillguard.errors import ConfigError
from distillguard.sim import (
    ALL_BENIGN_KINDS,
    ALL_CAMPAIGN_KINDS,
    WORLD_BENIGN_KINDS,
    Population,
    Scenario,
    WorldSpec,
    draw_world,
    simulate,
    simulate_world,
    world_corpora,
)
from distillguard.sim._corpus import split_key
from distillguard.sim._heldout_text import (
    EVAL_COT_FORMATS,
    FRAMEWORKS,
    HELDOUT_FAMILIES,
    JUDGE_TEMPLATES,
    TRANSLATE_TEMPLATES,
    TUNE_REASONING_FRAMEWORKS,
    TUTOR_TEMPLATES,
    coding_task_side,
    frameworks,
    half,
    reasoning_task_side,
)
from distillguard.sim._text import FAMILIES, TemplateBank
from distillguard.sim.worlds import ARCHETYPES, SIZES

SHARED = Path(os.environ.get("DISTILLGUARD_SHARED_DATA")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
needs_shared = pytest.mark.skipif(not (SHARED / "legit").is_dir(),
                                  reason=f"real corpora not found at {SHARED}")

_SIG = yaml.safe_load((resources.files("distillguard") / "data" / "signals.yaml").read_text())
ELICIT = {f["name"]: re.compile("|".join(f"(?:{p})" for p in f["patterns"]), re.I)
          for f in _SIG["flags"]}


def _read(res) -> tuple[list[dict], dict[str, dict]]:
    recs = []
    for p in res.logs:
        recs.extend(orjson.loads(ln) for ln in gzip.decompress(p.read_bytes()).split(b"\n")
                    if ln)
    with res.labels.open() as fh:
        labels = {r["account_id"]: r for r in csv.DictReader(fh)}
    return recs, labels


def _user_lines(recs: list[dict]) -> set[str]:
    out: set[str] = set()
    for r in recs:
        for m in r["messages"]:
            if m["role"] == "user" and m.get("content"):
                out.update(ln.strip() for ln in m["content"].split("\n") if len(ln.strip()) > 40)
    return out


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """One tune and one report ci world on the bundled corpus, with simulate timings."""
    out = {}
    for role, seed in (("tune", 11), ("report", 12)):
        spec = draw_world(seed, role, "ci")
        t = time.perf_counter()
        res = simulate_world(spec, tmp_path_factory.mktemp(role))
        out[role] = (spec, res, time.perf_counter() - t, *_read(res))
    return out


# ---------------------------------------------------------------------------------------
# the draw
# ---------------------------------------------------------------------------------------


def test_draw_world_is_deterministic_and_round_trips():
    a, b = draw_world(5, "report", "ci"), draw_world(5, "report", "ci")
    assert a.to_json() == b.to_json()
    assert a.scenario == b.scenario
    assert draw_world(6, "report", "ci").to_json() != a.to_json()
    assert draw_world(5, "tune", "ci").to_json() != a.to_json()
    back = WorldSpec.from_json(json.loads(json.dumps(a.to_json())))
    assert back.to_json() == a.to_json()
    with pytest.raises(ConfigError):
        draw_world(1, "nope")
    with pytest.raises(ConfigError):
        draw_world(1, "tune", "huge")


def test_world_sizes_and_structure():
    for size in ("ci", "bench"):
        S = SIZES[size]
        for seed in range(12):
            for role in ("tune", "report"):
                w = draw_world(seed, role, size)
                k = w.knobs
                assert w.world_id == f"{role}-{size}-{seed}" and w.corpus_group == role
                assert 4 <= k["days"] <= 9 and 2 <= k["n_models"] <= 4
                assert 1 <= k["n_releases"] <= 2 < k["n_models"] + 1
                assert S.accounts[0] <= k["target_accounts"] <= S.accounts[1]
                assert S.requests[0] <= k["target_requests"] <= S.requests[1]
                assert 0.6 * k["target_requests"] <= k["expected_requests"] <= \
                    1.4 * k["target_requests"]
                assert 0.03 <= k["campaign_account_share"] <= 0.31
                assert S.campaigns[0] <= len(w.campaigns) <= S.campaigns[1]
                assert {p.name for p in w.scenario.populations if p.label == "distill"} == \
                    set(w.campaigns)
                w.scenario.validate()


def test_every_kind_and_archetype_appears_in_the_distribution():
    benign, camp, arch, imit = set(), set(), Counter(), set()
    for seed in range(30):
        for role in ("tune", "report"):
            w = draw_world(seed, role, "bench")
            benign |= {p.kind for p in w.scenario.populations if p.label == "benign"}
            camp |= {p.kind for p in w.scenario.populations if p.label == "distill"}
            arch.update(c["archetype"] for c in w.campaigns.values())
            imit |= {c["imitates"] for c in w.campaigns.values() if c["imitates"]}
    assert benign == set(ALL_BENIGN_KINDS)
    assert camp == set(ALL_CAMPAIGN_KINDS) - {"naive_harvester", "reasoning_hydra",
                                               "agentic_hydra", "proxy_reseller",
                                               "low_and_slow"}
    assert set(arch) == set(ARCHETYPES)
    assert imit == {"eval_harness", "app_backend", "agent_framework", "tutoring_app"}


def test_every_world_has_a_campaign_without_elicitation():
    for seed in range(40):
        for role in ("tune", "report"):
            w = draw_world(seed, role, "ci" if seed % 2 else "bench")
            plain = [c for c in w.campaigns.values() if not c["elicitation"]]
            assert plain and all(c["elicit_share"] == 0.0 for c in plain)
            assert all(c["style"] in ("natural", "templated", "paraphrased") for c in plain)


def test_adaptive_attacker_records_what_it_dropped():
    seen = []
    for seed in range(40):
        for c in draw_world(seed, "report", "bench").campaigns.values():
            if c["archetype"] == "adaptive":
                assert len(c["dropped"]) == c["adaptive_level"] >= 1
                if "elicitation" in c["dropped"]:
                    assert c["elicit_share"] == 0.0
                if "shared_cards" in c["dropped"]:
                    assert c["cards"] == "own"
                seen.append(c["adaptive_level"])
    assert len(set(seen)) >= 5


def test_tune_and_report_phrasings_are_disjoint():
    t, r = TemplateBank("tune"), TemplateBank("report")
    for fam in FAMILIES:
        assert not set(t.families[fam]) & set(r.families[fam])
    assert not set(HELDOUT_FAMILIES) & set(t.families)
    for lst in (EVAL_COT_FORMATS, TUTOR_TEMPLATES, JUDGE_TEMPLATES, TRANSLATE_TEMPLATES,
                FRAMEWORKS):
        assert half(lst, "tune") and half(lst, "report")
        assert not set(half(lst, "tune")) & set(half(lst, "report"))
    # the reasoning-scratchpad frameworks are tune-side hard negatives only
    assert set(TUNE_REASONING_FRAMEWORKS) <= set(frameworks("tune"))
    assert not set(TUNE_REASONING_FRAMEWORKS) & set(frameworks("report"))
    assert frameworks("report") == half(FRAMEWORKS, "report")
    rng = np.random.default_rng(0)
    tune = {coding_task_side(rng, "tune") for _ in range(400)} | {
        reasoning_task_side(rng, "tune") for _ in range(200)}
    rep = {coding_task_side(rng, "report") for _ in range(400)} | {
        reasoning_task_side(rng, "report") for _ in range(200)}
    assert not tune & rep
    # no tune world ever draws a report-only family
    for seed in range(20):
        for c in draw_world(seed, "tune", "bench").campaigns.values():
            assert not set(c["elicit_families"]) & set(HELDOUT_FAMILIES)
            assert c["heldout_family_share"] == 0.0
    held = [c["heldout_family_share"] for s in range(20)
            for c in draw_world(s, "report", "bench").campaigns.values() if c["elicit_families"]]
    assert held and max(held) > 0.3


def test_corpus_groups_share_no_source_and_no_prompt():
    lt, dt = world_corpora("tune")
    lr, dr = world_corpora("report")
    assert not set(lt.sources()) & set(lr.sources())
    # only GSM8K is split by halves between the groups; every other source is one-sided
    shared = set(dt.sources()) & set(dr.sources())
    assert shared <= {"gsm8k"}
    assert not {split_key(i) for i in lt.items + dt.items} & {
        split_key(i) for i in lr.items + dr.items}
    assert any(i.category == "coding" for i in dt.items)
    assert any(i.category == "coding" for i in dr.items)


@needs_shared
def test_corpus_groups_on_the_real_corpora():
    kw = {"legit_corpus": SHARED / "legit", "distill_corpus": SHARED / "distill"}
    lt, dt = world_corpora("tune", **kw)
    lr, dr = world_corpora("report", **kw)
    assert set(lt.sources()) == {"sharegpt", "mt_bench"}
    assert set(lr.sources()) == {"oasst1", "hh_rlhf", "alpaca_eval", "vicuna"}
    assert {"alpaca", "code_alpaca"} <= set(dt.sources())
    assert not {"alpaca", "code_alpaca"} & set(dr.sources())
    assert {"self_instruct", "code_alpaca_seed"} <= set(dr.sources())
    assert not {split_key(i) for i in lt.items + dt.items} & {
        split_key(i) for i in lr.items + dr.items}


# ---------------------------------------------------------------------------------------
# simulated ci worlds
# ---------------------------------------------------------------------------------------


def test_ci_world_simulates_quickly_with_labels_for_every_account(worlds):
    for role, (spec, res, secs, recs, labels) in worlds.items():
        assert secs < 8.0, (role, secs)
        assert 3_000 <= res.n_requests <= 20_000
        assert res.n_requests == len(recs) and res.n_accounts == len(labels)
        assert {r["account_id"] for r in recs} == set(labels)
        camp = {r["campaign_id"] for r in labels.values() if r["label"] == "distill"}
        assert camp and camp <= set(spec.campaigns)
        for r in labels.values():
            assert (r["label"] == "distill") == bool(r["campaign_id"])
            assert r["kind"] in ALL_BENIGN_KINDS + ALL_CAMPAIGN_KINDS
        out = res.labels.parent
        assert json.loads((out / "world.json").read_text()) == spec.to_json()
        man = json.loads(res.manifest.read_text())
        assert man["world_id"] == spec.world_id and man["split"] == role
        assert [r["ts"] for r in recs] == sorted(r["ts"] for r in recs)


def test_world_models_respect_releases(worlds):
    for spec, _, _, recs, _ in (w[:5] for w in worlds.values()):
        k = spec.knobs
        start = np.datetime64(k["start"]).astype("datetime64[s]").astype(float)
        rel = {m: start + d * 86400 for m, d in zip(k["models"], k["release_days"],
                                                     strict=True) if d is not None}
        used = Counter(r["model"] for r in recs)
        assert set(used) <= set(k["models"]) and set(rel) & set(used)
        for r in recs:
            if r["model"] in rel:
                t = np.datetime64(r["ts"][:-1]).astype("datetime64[ms]").astype(float) / 1000
                assert t >= rel[r["model"]] - 1e-3


def test_no_tune_text_in_report_world(worlds):
    lt, dt = world_corpora("tune")
    tune_lines = {ln.strip() for it in lt.items + dt.items for ln in it.turns[0].split("\n")
                  if len(ln.strip()) > 40}
    _, _, _, recs, _ = worlds["report"]
    hits = _user_lines(recs) & tune_lines
    assert len(hits) <= 2, sorted(hits)[:5]
    lr, dr = world_corpora("report")
    rep_lines = {ln.strip() for it in lr.items + dr.items for ln in it.turns[0].split("\n")
                 if len(ln.strip()) > 40}
    _, _, _, trecs, _ = worlds["tune"]
    assert len(_user_lines(trecs) & rep_lines) <= 2
    # and the report-only families never reach a tune world
    markers = [re.sub(r"\{\w+\}", "", t).strip()[:45] for v in HELDOUT_FAMILIES.values()
               for _, t in v]
    tune_text = "\n".join(m["content"] for r in trecs for m in r["messages"]
                          if m["role"] == "user" and m.get("content"))
    assert not [m for m in markers if len(m) > 30 and m in tune_text]


def test_campaigns_without_elicitation_carry_no_elicitation_wording(worlds):
    checked = 0
    for spec, _, _, recs, labels in (w[:5] for w in worlds.values()):
        plain = {cid for cid, c in spec.campaigns.items() if not c["elicitation"]}
        by: dict[str, list[str]] = {}
        for r in recs:
            cid = labels[r["account_id"]]["campaign_id"]
            if cid in plain:
                user = [m for m in r["messages"] if m["role"] == "user"][-1]["content"] or ""
                by.setdefault(cid, []).append(user + "\n" + (r.get("system") or ""))
        for cid, texts in by.items():
            hit = sum(any(rx.search(t) for rx in ELICIT.values()) for t in texts)
            # natural prompts occasionally contain "rate this answer"-like wording
            assert hit <= max(2, 0.03 * len(texts)), (cid, hit, len(texts))
            checked += 1
    assert checked


def test_world_kinds_meet_on_shared_pools(tmp_path):
    pools = (("resi_proxy", "residential", 40, 1), ("card_pool", "card", 3, 1),
             ("cgnat_0", "cgnat", 3, 1))
    scen = Scenario("pools", (
        Population("proxy_pool_user", 30, 8.0, params={"sticky_minutes": 5}),
        Population("reseller_customers", 6, 40.0, params={"card_pool_share": 1.0}),
        Population("cgnat_users", 40, 5.0, params={"carriers": ["cgnat_0"]}),
        Population("tactic_campaign", 12, 30.0, name="hydra", params={
            "infra": {"proxy": 1.0}, "cards": "pool", "pool_card_share": 1.0,
            "capability": {"agentic": 1.0}, "steps": 4, "system": "scaffold"}),
        Population("tactic_campaign", 6, 20.0, name="mobile", params={
            "infra": {"mobile": 1.0}, "mobile_pools": ["cgnat_0"], "timing": "sun"}),
    ), days=3, release_day=1.5, models=("m", "m-mini", "m2"), release_days=(None, None, 1.5),
        shared_pools=pools)
    recs, labels = _read(simulate(tmp_path, scen, seed=4))
    ip = {k: set() for k in ("proxy_pool_user", "hydra", "cgnat_users", "mobile")}
    card = {k: set() for k in ("reseller_customers", "hydra")}
    for r in recs:
        lab = labels[r["account_id"]]
        key = lab["campaign_id"] or lab["kind"]
        if key in ip:
            ip[key].add(r["ip"])
        if key in card:
            card[key].add(r["payment_fingerprint"])
    assert ip["proxy_pool_user"] & ip["hydra"]
    assert ip["cgnat_users"] & ip["mobile"]
    assert card["reseller_customers"] & card["hydra"]
    hydra = [r for r in recs if labels[r["account_id"]]["campaign_id"] == "hydra"]
    assert all(r.get("tools") for r in hydra) and max(len(r["messages"]) for r in hydra) > 3
    assert {r["model"] for r in recs} <= {"m", "m-mini", "m2"}


def test_new_benign_kinds_look_like_campaigns_on_one_signal(tmp_path):
    """Each new hard negative carries the naive trait it is meant to carry."""
    scen = Scenario("hn", tuple(Population(k, n, r, params=p) for k, n, r, p in (
        ("power_user", 4, 150.0, {"night_share": 1.0}),
        ("fast_adopter", 4, 60.0, {}),
        ("agent_framework", 12, 30.0, {}),
        ("tutoring_app", 1, 400.0, {}),
        ("eval_cot", 1, 1.0, {"suite_size": 40, "samples": 2}),
        ("judge_lab", 2, 200.0, {}),
        ("translation_batch", 1, 400.0, {}),
        ("corporate_proxy", 15, 10.0, {}),
        ("startup_shared_card", 8, 10.0, {"team_size": (4, 4)}),
        ("reseller_customers", 6, 40.0, {}),
        ("proxy_pool_user", 10, 6.0, {}),
        ("cgnat_users", 30, 5.0, {}),
    )), days=4, release_day=1.5, models=("m", "m2"), release_days=(None, 1.5))
    recs, labels = _read(simulate(tmp_path, scen, seed=2, split="report"))
    by: dict[str, list[dict]] = {}
    for r in recs:
        by.setdefault(labels[r["account_id"]]["kind"], []).append(r)
    assert set(by) == set(WORLD_BENIGN_KINDS)
    # round-the-clock power users
    hours = {int(r["ts"][11:13]) for r in by["power_user"]}
    assert len(hours) >= 20
    # fast adopters move most traffic to the new model within a day of release
    late = [r for r in by["fast_adopter"] if r["ts"] >= "2026-03-03T12"]
    assert late and sum(r["model"] == "m2" for r in late) / len(late) > 0.5
    # one framework: identical system prompt and tool schema across unrelated accounts
    fw = by["agent_framework"]
    assert len({r["system"] for r in fw}) == 1 and len({json.dumps(r["tools"]) for r in fw}) == 1
    assert len({r["payment_fingerprint"] for r in fw}) == len({r["account_id"] for r in fw})
    # chain-of-thought wording in the tutoring app and the eval harness
    for kind in ("tutoring_app", "eval_cot"):
        text = " ".join(r["messages"][0]["content"].lower() for r in by[kind])
        assert "step by step" in text or "step-by-step" in text
    assert any(ELICIT["rubric_grading"].search(r["messages"][0]["content"])
               for r in by["judge_lab"])
    # one template, long outputs
    tr = by["translation_batch"]
    assert np.median([r["output_tokens"] for r in tr]) > 60
    # one egress IP range and one UA for a whole company
    cp = by["corporate_proxy"]
    assert len({r["user_agent"] for r in cp}) == 1 and len({r["ip"] for r in cp}) <= 3
    # a startup team on one card
    sc = Counter(r["payment_fingerprint"] for r in by["startup_shared_card"])
    assert max(len({r["account_id"] for r in by["startup_shared_card"]
                    if r["payment_fingerprint"] == c}) for c in sc) >= 3
    # CGNAT: many accounts per address
    per_ip = Counter(r["ip"] for r in by["cgnat_users"])
    accts = {ip: {r["account_id"] for r in by["cgnat_users"] if r["ip"] == ip}
             for ip in per_ip}
    assert max(len(a) for a in accts.values()) >= 5
    # the legitimate reseller relays browser traffic over a pool of accounts
    rs = by["reseller_customers"]
    assert all(r["user_agent"].startswith("Mozilla") for r in rs)
    assert len({r["account_id"] for r in rs}) >= 5
