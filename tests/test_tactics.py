"""The attacker-tactic presets are valid simulator knobs and change only the campaigns."""

from __future__ import annotations

import pytest

from distillguard.bench.tactics import TACTICS, markdown, resolve
from distillguard.errors import ConfigError
from distillguard.sim._scenario import SCENARIOS


@pytest.mark.parametrize("name", list(TACTICS))
def test_each_tactic_applies_to_the_default_scenario(name):
    base = SCENARIOS["default"]
    scen = base.with_knobs(**TACTICS[name][1])
    for before, after in zip(base.populations, scen.populations, strict=True):
        if before.label != "distill":
            assert after == before, f"{name} changed benign population {before.kind}"
    if name != "baseline":
        assert scen != base


def test_no_elicitation_leaves_only_plain_prompts():
    scen = SCENARIOS["default"].with_knobs(**TACTICS["no_elicitation"][1])
    fams = {p.kind: p.params.get("families") for p in scen.populations}
    assert fams["reasoning_hydra"] == fams["proxy_reseller"] == fams["low_and_slow"] == {
        "plain": 1.0}


def test_resolve():
    assert resolve("all") == list(TACTICS)
    assert resolve("slow, paraphrased") == ["slow", "paraphrased"]
    with pytest.raises(ConfigError, match="unknown tactic"):
        resolve("teleport")


def test_markdown_has_a_row_per_tactic_and_detector():
    row = {"pr_auc": 1.0, "recall@0.1%fpr": 0.5, "flag_recall": 0.5, "flag_precision": None,
           "worst_hard_neg_fpr": 0.0, "by_campaign": {"reasoning_hydra-01": 0.5}}
    md = markdown({"slow": {"description": "d", "knobs": {},
                            "detectors": {"distillguard": row, "volume": row}}})
    assert md.count("| slow |") == 2 and "reasoning_hydra 0.500" in md and "| – |" in md
