"""Tests of the traffic simulator (``distillguard.sim``).

All tests run on the bundled corpus and the ``tiny`` scenario; tests that read the real
corpora under ``../shared/data`` are skipped when that folder is absent.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path

import numpy as np
import orjson
import pytest

from distillguard.errors import ConfigError
from distillguard.sim import (
    BENIGN_KINDS,
    CAMPAIGN_KINDS,
    SCENARIOS,
    Population,
    Scenario,
    bundled_corpus,
    load_corpus,
    load_timing,
    simulate,
)
from distillguard.sim._corpus import load_file, split_key
from distillguard.sim._text import FAMILIES, TemplateBank, paraphrase

SHARED = Path(os.environ.get("DISTILLGUARD_SHARED_DATA")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
needs_shared = pytest.mark.skipif(not (SHARED / "legit").is_dir(),
                                  reason=f"real corpora not found at {SHARED}")

SCHEMA_FIELDS = {"request_id", "ts", "account_id", "model", "messages", "org_id", "api_key_id",
                 "ip", "user_agent", "payment_fingerprint", "signup_channel",
                 "account_created", "country", "system", "tools", "reasoning_effort",
                 "input_tokens", "output_tokens", "status"}


def _read(res) -> tuple[list[dict], dict[str, dict]]:
    recs = []
    for p in res.logs:
        recs.extend(orjson.loads(ln) for ln in gzip.decompress(p.read_bytes()).split(b"\n")
                    if ln)
    with res.labels.open() as fh:
        labels = {r["account_id"]: r for r in csv.DictReader(fh)}
    return recs, labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    res = simulate(tmp_path_factory.mktemp("tiny"), "tiny", seed=11)
    recs, labels = _read(res)
    return res, recs, labels


# ---------------------------------------------------------------------------------------


def test_scenario_sizes(tiny):
    res, recs, labels = tiny
    assert 2000 <= res.n_requests <= 6000
    assert res.n_requests == len(recs)
    assert res.n_accounts == len(labels)
    assert len(res.logs) >= 7  # one file per simulated day
    assert {"tiny", "demo", "default"} <= set(SCENARIOS)


def test_deterministic_same_seed_identical_bytes(tmp_path):
    a = simulate(tmp_path / "a", "tiny", seed=3)
    b = simulate(tmp_path / "b", "tiny", seed=3)
    assert [p.name for p in a.logs] == [p.name for p in b.logs]
    for pa, pb in zip(a.logs + [a.labels, a.manifest], b.logs + [b.labels, b.manifest],
                      strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    c = simulate(tmp_path / "c", "tiny", seed=4)
    assert a.logs[0].read_bytes() != c.logs[0].read_bytes()
    assert a.labels.read_bytes() != c.labels.read_bytes()


def test_labels_match_logs(tiny):
    _, recs, labels = tiny
    in_logs = {r["account_id"] for r in recs}
    assert in_logs == set(labels)
    kinds = Counter(r["kind"] for r in labels.values())
    assert set(kinds) == set(BENIGN_KINDS) | set(CAMPAIGN_KINDS)
    camp_kind: dict[str, set[str]] = defaultdict(set)
    for r in labels.values():
        if r["kind"] in BENIGN_KINDS:
            assert r["label"] == "benign" and r["campaign_id"] == ""
        else:
            assert r["label"] == "distill" and r["campaign_id"]
            camp_kind[r["campaign_id"]].add(r["kind"])
    # a campaign id belongs to exactly one kind; a hydra is one campaign of many accounts
    assert all(len(k) == 1 for k in camp_kind.values())
    hydra = [r["campaign_id"] for r in labels.values() if r["kind"] == "reasoning_hydra"]
    assert len(set(hydra)) == 1 and len(hydra) >= 5


def test_records_follow_schema(tiny):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((resources.files("distillguard") / "data" /
                         "request-log.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    _, recs, _ = tiny
    rng = np.random.default_rng(0)
    for i in rng.choice(len(recs), size=400, replace=False).tolist():
        validator.validate(recs[i])
    ts_re = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    for r in recs:
        assert set(r) <= SCHEMA_FIELDS
        assert ts_re.match(r["ts"])
        assert r["messages"] and r["messages"][-1]["role"] in ("user", "tool")
        assert r["account_created"] <= r["ts"]
    assert len({r["request_id"] for r in recs}) == len(recs)
    assert [r["ts"] for r in recs] == sorted(r["ts"] for r in recs)


def test_new_model_released_on_day_four(tiny):
    _, recs, labels = tiny
    first_b = min(r["ts"] for r in recs if r["model"] == "model-b")
    assert first_b.startswith("2026-03-05")  # start Monday 03-02, release_day 3.7
    # the agentic hydra moves a large share of its traffic within a day of release
    late = [r for r in recs if labels[r["account_id"]]["kind"] == "agentic_hydra"
            and r["ts"] >= "2026-03-06T18"]
    assert late and sum(r["model"] == "model-b" for r in late) / len(late) > 0.3


def test_population_traits(tiny):
    _, recs, labels = tiny
    by: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by[labels[r["account_id"]]["kind"]].append(r)
    assert all("tools" in r for r in by["coding_agent"])
    assert max(len(r["messages"]) for r in by["coding_agent"]) > 5  # growing tool loops
    assert any("tools" in r for r in by["agentic_hydra"])
    hydra_ips = Counter(r["ip"] for r in by["reasoning_hydra"])
    assert len(hydra_ips) > 10  # rotating proxy pool
    org = {r["org_id"] for r in by["multi_key_org"]}
    assert len(org) == 1 and len({r["account_id"] for r in by["multi_key_org"]}) > 1
    assert any(len(r["messages"]) > 1 for r in by["ordinary"])  # multi-turn conversations
    text = " ".join(r["messages"][-1]["content"] or "" for r in by["eval_harness"])
    assert "step by step" in text.lower()


def test_split_disjoint_corpus_and_templates():
    for which in ("legit", "distill"):
        c = bundled_corpus(which)
        tune, rep = c.split("tune"), c.split("report")
        assert len(tune) + len(rep) == len(c) and len(tune) and len(rep)
        assert not {split_key(i) for i in tune.items} & {split_key(i) for i in rep.items}
    t, r = TemplateBank("tune"), TemplateBank("report")
    for fam in FAMILIES:
        assert t.families[fam] and r.families[fam]
        assert not set(t.families[fam]) & set(r.families[fam])


def test_split_disjoint_in_logs(tmp_path):
    firsts = {}
    for part in ("tune", "report"):
        recs, labels = _read(simulate(tmp_path / part, "tiny", seed=5, split=part))
        firsts[part] = {r["messages"][0]["content"] for r in recs
                        if labels[r["account_id"]]["kind"] == "ordinary"}
    legit = bundled_corpus("legit")
    tune_texts = {i.turns[0] for i in legit.split("tune").items}
    rep_texts = {i.turns[0] for i in legit.split("report").items}
    # human-like noise ("?" appended, a typo) can by chance turn one prompt into another's
    # exact text, so allow a stray collision; a split leak would give hundreds
    for part, right, wrong in (("tune", tune_texts, rep_texts), ("report", rep_texts,
                                                                  tune_texts)):
        hits = len(firsts[part] & right)
        assert hits > 50, part
        assert len(firsts[part] & wrong) <= max(2, hits // 50), part


def _reseller_ordinary_share(tmp_path: Path, camouflage: float) -> float:
    res = simulate(tmp_path / f"c{camouflage}", "tiny", seed=2, camouflage=camouflage)
    recs, labels = _read(res)
    legit_turns = {t for it in bundled_corpus("legit").items for t in it.turns}
    rs = [r for r in recs if labels[r["account_id"]]["kind"] == "proxy_reseller"]
    return sum(r["messages"][-1]["content"] in legit_turns for r in rs) / len(rs)


def test_camouflage_knob_raises_ordinary_share(tmp_path):
    lo = _reseller_ordinary_share(tmp_path, 0.0)
    hi = _reseller_ordinary_share(tmp_path, 0.6)
    assert lo < 0.02 and hi > 0.35


def test_knobs_accounts_ip_pool_paraphrase(tmp_path):
    base = SCENARIOS["tiny"]
    big = base.with_knobs(accounts=2.0)
    get = lambda s, k: next(p for p in s.populations if p.kind == k)  # noqa: E731
    assert get(big, "reasoning_hydra").n_accounts == 2 * get(base, "reasoning_hydra").n_accounts
    assert get(big, "ordinary").n_accounts == get(base, "ordinary").n_accounts
    per = base.with_knobs(reasoning_hydra__n_accounts=5, proxy_reseller__customer_tz=-5)
    assert get(per, "reasoning_hydra").n_accounts == 5
    assert get(per, "proxy_reseller").params["customer_tz"] == -5
    with pytest.raises(ConfigError):
        base.with_knobs(no_such_knob=1)
    with pytest.raises(ConfigError):
        base.with_knobs(camouflage=1.5)

    recs, labels = _read(simulate(tmp_path / "pool", "tiny", seed=1, ip_pool=4))
    ips = {r["ip"] for r in recs if labels[r["account_id"]]["kind"] == "reasoning_hydra"}
    assert len(ips) <= 4

    def openings(p: float) -> int:
        recs, labels = _read(simulate(tmp_path / f"p{p}", "tiny", seed=1, paraphrase=p,
                                      camouflage=0.0))
        return len({r["messages"][-1]["content"][:25] for r in recs
                    if labels[r["account_id"]]["kind"] == "reasoning_hydra"})

    assert openings(1.0) > 2 * openings(0.0)


def test_custom_scenario_dataclass(tmp_path):
    scen = Scenario("mini", (Population("ordinary", 20, 5.0),
                             Population("naive_harvester", 1, 200.0)), days=3, release_day=1.5)
    res = simulate(tmp_path, scen, seed=0)
    _, labels = _read(res)
    assert Counter(r["kind"] for r in labels.values()) .keys() == {"ordinary", "naive_harvester"}
    assert len(res.logs) == 3


def test_paraphrase_keeps_placeholders():
    rng = np.random.default_rng(0)
    for fam, variants in FAMILIES.items():
        for lang, t in variants:
            for _ in range(5):
                p = paraphrase(t, lang, rng, 1.0)
                assert set(re.findall(r"(?<!\{)\{(\w+)\}(?!\})", p)) == set(
                    re.findall(r"(?<!\{)\{(\w+)\}(?!\})", t)), (fam, p)


def test_loaders_each_format(tmp_path):
    def jl(name: str, rows: list[dict], gz: bool = False) -> Path:
        data = "\n".join(json.dumps(r) for r in rows) + "\n"
        p = tmp_path / name
        p.write_bytes(gzip.compress(data.encode()) if gz else data.encode())
        return p

    p = jl("sharegpt_x.jsonl.gz", [{"share_id": "a", "turn": 1, "text": "second"},
                                   {"share_id": "a", "turn": 0, "text": "first"},
                                   {"share_id": "b", "turn": 0, "text": "other"}], gz=True)
    items = load_file(p)
    assert [it.turns for it in items] == [("first", "second"), ("other",)]
    p = jl("oasst_x.jsonl", [
        {"message_id": "1", "parent_id": None, "user_id": "u", "text": "hi", "role": "prompter",
         "message_tree_id": "1"},
        {"message_id": "2", "parent_id": "1", "user_id": "v", "text": "hello", "role":
         "assistant", "message_tree_id": "1"},
        {"message_id": "3", "parent_id": "2", "user_id": "u", "text": "more", "role": "prompter",
         "message_tree_id": "1"}])
    (it,) = load_file(p)
    assert it.turns == ("hi", "more") and it.replies == ("hello",)
    p = jl("hh_rlhf_x.jsonl.gz", [{"chosen": "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2"
                                   "\n\nAssistant: a2", "rejected": ""}], gz=True)
    (it,) = load_file(p)
    assert it.turns == ("q1", "q2") and it.replies == ("a1",)
    (tmp_path / "alpaca_eval_x.json").write_text(json.dumps(
        [{"instruction": "write code in python", "output": "x", "dataset": "oasst"}]))
    assert load_file(tmp_path / "alpaca_eval_x.json")[0].category == "coding"
    p = jl("mt_bench_x.jsonl", [{"question_id": 1, "category": "w", "turns": ["a", "b"]}])
    assert load_file(p)[0].turns == ("a", "b")
    (tmp_path / "alpaca_x.json").write_text(json.dumps(
        [{"instruction": "Sum", "input": "1 2", "output": "3"}]))
    assert load_file(tmp_path / "alpaca_x.json")[0].turns == ("Sum\n\n1 2",)
    (tmp_path / "code_alpaca_x.json").write_text(json.dumps(
        [{"instruction": "Reverse a list", "input": "", "output": "x[::-1]"}]))
    assert load_file(tmp_path / "code_alpaca_x.json")[0].category == "coding"
    p = jl("seed_tasks_x.jsonl", [{"id": "s0", "instruction": "Do", "instances":
                                   [{"input": "", "output": "done"}]}])
    assert load_file(p)[0].answer == "done"
    p = jl("gsm8k_x.jsonl", [{"question": "2+2?", "answer": "#### 4"}])
    assert load_file(p)[0].category == "math"
    (tmp_path / "prompts.txt").write_text("one\n\ntwo\n")
    assert [i.turns[0] for i in load_file(tmp_path / "prompts.txt")] == ["one", "two"]
    p = jl("mine.jsonl", [{"prompt": "p1"}, {"question": "p2"}, {"text": "p3"}])
    assert [i.turns[0] for i in load_file(p)] == ["p1", "p2", "p3"]
    c = load_corpus([tmp_path / "prompts.txt", p])
    assert len(c) == 5 and len(c.only_sources(["prompts"])) == 2


def test_timing_trace_and_sources_filter(tmp_path):
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = 0.0
    rng = np.random.default_rng(0)
    for _ in range(500):
        t += float(rng.exponential(0.2))
        ctx_tok, gen_tok = rng.integers(50, 900), rng.integers(1, 300)
        lines.append(f"2023-11-16 18:{int(t // 60):02d}:{t % 60:010.7f},{ctx_tok},{gen_tok}")
    (tmp_path / "azure_llm_conv.csv").write_text("\n".join(lines) + "\n")
    tr = load_timing(tmp_path / "azure_llm_conv.csv")
    assert len(tr.gaps) == 499 and len(tr.out_tokens_chat) == 500
    res = simulate(tmp_path / "out", "tiny", seed=1, timing=tr,
                   exclude_sources=["hh_rlhf"])
    recs, _ = _read(res)
    hh = {t for it in bundled_corpus("legit").only_sources(["hh_rlhf"]).items
          for t in it.turns}
    assert not any(m["content"] in hh for r in recs for m in r["messages"]
                   if m["role"] == "user")


# ---------------------------------------------------------------------------------------
# real corpora (CI has them at ../shared/data)
# ---------------------------------------------------------------------------------------


@needs_shared
def test_real_corpora_load_and_split():
    legit = load_corpus(SHARED / "legit")
    distill = load_corpus(SHARED / "distill")
    assert {"sharegpt", "oasst1", "hh_rlhf", "alpaca_eval", "mt_bench", "vicuna"} <= set(
        legit.sources())
    assert {"alpaca", "gsm8k", "code_alpaca", "self_instruct"} <= set(distill.sources())
    sg = [i for i in legit.items if i.source == "sharegpt"]
    assert sum(len(i.turns) > 1 for i in sg) > len(sg) // 4  # real multi-turn data
    for c in (legit, distill):
        a, b = c.split("tune"), c.split("report")
        assert not {split_key(i) for i in a.items} & {split_key(i) for i in b.items}
        assert 0.4 < len(a) / len(c) < 0.6


@needs_shared
def test_real_corpora_simulate(tmp_path):
    res = simulate(tmp_path, "tiny", seed=1, legit_corpus=SHARED / "legit",
                   distill_corpus=[SHARED / "distill"], timing=SHARED / "traces",
                   split="report")
    recs, labels = _read(res)
    assert set(labels) == {r["account_id"] for r in recs}
    src = json.loads(res.manifest.read_text())["legit_sources"]
    assert "sharegpt" in src
