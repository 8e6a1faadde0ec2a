"""`distillguard fit LOGS --labels`: weights, calibration and the online margin from
labelled traffic (a provider's confirmed campaigns and known-good customers)."""

from __future__ import annotations

import polars as pl

from distillguard import api
from distillguard.respond.online import OnlineScorer
from distillguard.scoring.fit import with_overlay
from distillguard.sim import simulate


def test_fit_on_labelled_logs_gives_a_usable_overlay(tmp_path):
    sim = simulate(tmp_path / "traffic", scenario="tiny", seed=3)
    labels = pl.read_csv(sim.labels, infer_schema_length=0)
    over = api.fit(sim.logs, labels)
    sc = over["scoring"]
    assert set(sc) >= {"weights", "calibration", "online_margin"}
    assert isinstance(sc["online_margin"], float) and sc["online_margin"] >= 0.0
    assert sc["calibration"]["raw_scale"] > 0
    cfg = with_overlay(api.load_config(), over)
    assert OnlineScorer(config=cfg).margin == sc["online_margin"]
    without = api.fit(sim.logs, labels, online=False)
    assert "online_margin" not in without["scoring"]
    assert without["scoring"]["weights"] == sc["weights"]
