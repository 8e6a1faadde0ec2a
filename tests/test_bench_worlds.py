"""Cross-world benchmark: the protocol (fit on tune worlds only) and its outputs, on small
"ci" worlds from the bundled corpus."""

from __future__ import annotations

import json

import polars as pl
import pytest

from distillguard.bench.worlds import aggregate, bench_worlds, world_seeds


def test_world_seeds_independent_per_role():
    assert world_seeds(3, "tune", 2) == world_seeds(3, "tune", 2)
    assert set(world_seeds(3, "tune", 4)).isdisjoint(world_seeds(3, "report", 4))
    assert world_seeds(3, "report", 2) != world_seeds(4, "report", 2)


def test_aggregate_directions():
    rows = [{"detector": "d", "pr_auc": v, "flag_fpr": f}
            for v, f in ((1.0, 0.0), (0.5, 0.01), (0.8, 0.002))]
    a = aggregate(rows)["d"]
    assert a["pr_auc"]["worst"] == 0.5 and a["flag_fpr"]["worst"] == 0.01
    assert a["pr_auc"]["mean"] == pytest.approx(2.3 / 3)
    assert a["pr_auc"]["p10"] < a["pr_auc"]["mean"] < 1.0


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tune worlds with two different sets of report worlds."""
    out = []
    for rs in (11, 12):
        d = tmp_path_factory.mktemp(f"worlds{rs}")
        res = bench_worlds(d, n_worlds=3, n_tune=1, worlds_seed=5, report_seed=rs, size="ci",
                           baselines=("volume",), replay=(rs == 11), jobs=1)
        out.append((d, res))
    return out


def _close(a, b, path=""):
    """Equal up to float noise: DuckDB's parallel aggregates may sum in another order."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), path
    else:
        assert a == b, path


def test_fit_does_not_depend_on_report_worlds(two_runs):
    (d1, r1), (d2, r2) = two_runs
    _close(json.loads((d1 / "fitted.json").read_text()),
           json.loads((d2 / "fitted.json").read_text()))
    ids1 = {r["world_id"] for r in r1["rows"]}
    ids2 = {r["world_id"] for r in r2["rows"]}
    assert ids1.isdisjoint(ids2)  # the report worlds did change
    fitted = json.loads((d1 / "fitted.json").read_text())
    assert fitted["tune_worlds"] and all(t not in ids1 for t in fitted["tune_worlds"])
    assert fitted["calibration"]["n_benign"] > 0


def test_tune_and_report_text_groups_disjoint(two_runs):
    (d1, _), _ = two_runs
    tune = [json.loads(p.read_text()) for p in (d1 / "tune").glob("*/world.json")]
    rep = [json.loads(p.read_text()) for p in (d1 / "report").glob("*/traffic/world.json")]
    assert tune and rep
    assert {w["corpus_group"] for w in tune}.isdisjoint({w["corpus_group"] for w in rep})


def test_outputs_written(two_runs):
    (d1, r1), _ = two_runs
    for name in ("worlds.csv", "worlds.md", "worlds.json", "campaigns.csv",
                 "fpr-promised-vs-measured.png"):
        assert (d1 / name).exists(), name
    assert {"distillguard", "as-shipped", "volume"} <= set(r1["aggregate"])
    agg = r1["aggregate"]["distillguard"]
    assert 0.0 <= agg["pr_auc"]["worst"] <= agg["pr_auc"]["mean"] <= 1.0
    row = next(r for r in r1["rows"] if r["detector"] == "distillguard")
    assert row["largest_community"] is not None and "ttd_worst_share" in row
    md = (d1 / "worlds.md").read_text()
    assert "recall at 0.1% FPR" in md and "Per report world" in md


def test_lowo_scores_each_tune_world_with_what_the_others_fitted(tmp_path):
    from distillguard.bench.worlds import lowo_worlds

    with pytest.raises(ValueError):
        lowo_worlds(tmp_path / "one", n_worlds=4, n_tune=1, size="ci")
    res = lowo_worlds(tmp_path, n_worlds=8, worlds_seed=5, size="ci", jobs=1,
                      windows=(12, 100_000), dump_scores=True, replay=True)
    assert res["n_tune"] == 2 and len(res["rows"]) == 2
    names = [r["world_id"] for r in res["rows"]]
    # the tune worlds a bench of the same draw fits on, nothing of the report side
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == sorted(names)
    assert not (tmp_path / "report").exists()
    for r, other in zip(res["rows"], reversed(names), strict=True):
        assert f"held out: {r['world_id']}" in r["fitted_on"]
        fitted = r["fitted_on"].split(" (held out")[0]
        assert other in fitted and r["world_id"] not in fitted
        assert 0 < r["n_distill"] < r["n_accounts"]
        assert r["tp"] <= r["n_distill"] and r["fp"] == sum(r["fp_by_kind"].values())
        assert r["pr_auc"] is None or 0.0 <= r["pr_auc"] <= 1.0
        assert 0 <= r["n_recovered"] <= r["n_campaigns"]
        # the dump holds every account with its verdict, truth and features
        dump = pl.read_parquet(tmp_path / "scores" / f"{r['world_id']}.parquet")
        assert dump.height == r["n_accounts"]
        legit = dump.filter(pl.col("label") != "distill")
        assert int(legit["flagged"].sum()) == r["fp"]
        assert int(dump.filter(pl.col("label") == "distill")["flagged"].sum()) == r["tp"]
        assert {"reasons", "kind", "true_campaign", "n_requests", "raw", "community",
                "g_size", "ev_cot", "ev_g_coordination"} <= set(dump.columns)
        # the items' contributions add up to the score's raw evidence
        ev = [c for c in dump.columns if c.startswith("ev_")]
        assert (dump.select(pl.sum_horizontal(ev)).to_series() - dump["final_raw"]
                ).abs().max() < 1e-6
        assert r["largest_community"] == max(
            [0, *dump.filter(pl.col("community") >= 0).group_by("community").len()["len"]])
        assert r["min_reported_purity"] is None or 0.0 <= r["min_reported_purity"] <= 1.0
        # the threshold the held-out run used, and how far the traffic moved it
        assert r["calibration"]["method"] == "self" and r["n_legit"] == legit.height
        assert abs(r["calibration"]["raw_threshold"] - r["calibration"]["prior_threshold"]
                   - r["calibration"]["delta"]) < 1e-4
        # a batch run over the first 12 hours sees part of the world; one over more hours
        # than the world has is the whole-world run
        early, whole = r["windows"]
        assert early["n_legit"] + early["n_distill"] < r["n_accounts"]
        assert early["fp"] == sum(early["fp_by_kind"].values())
        assert (whole["n_legit"] + whole["n_distill"], whole["fp"], whole["tp"],
                whole["fp_by_kind"]) == (r["n_accounts"], r["fp"], r["tp"], r["fp_by_kind"])
    sm = res["summary"]
    assert sm["tp"] == sum(r["tp"] for r in res["rows"])
    assert sm["flagged_fpr_worst"] == max(r["fp"] / r["n_legit"] for r in res["rows"])
    # every held-out campaign is in the per-archetype table and campaigns.csv
    n_camp = sum(r["n_campaigns"] for r in res["rows"])
    assert sum(a["campaigns"] for a in res["archetypes"]) == n_camp > 0
    assert sm["recovered"] == sum(r["n_recovered"] for r in res["rows"]) / n_camp
    assert pl.read_csv(tmp_path / "campaigns.csv").height == n_camp
    assert [w["hours"] for w in sm["windows"]] == [12.0, 100_000.0]
    assert sm["windows"][1]["fp"] == sm["fp"] and sm["windows"][1]["tp"] == sm["tp"]
    assert json.loads((tmp_path / "lowo.json").read_text())["summary"] == json.loads(
        json.dumps(sm))
    # the online replay of each held-out world, at a margin the other world's replay fit
    on = sm["online"]
    assert [w["world_id"] for w in on["worlds"]] == names
    assert on["n_legit"] == sum(r["n_legit"] for r in res["rows"])
    assert on["legit_alerted"] == sum(on["legit_alerted_by_kind"].values()) == sum(
        w["legit_alerted"] for w in on["worlds"])
    assert on["n_campaigns"] == n_camp
    assert 0 <= on["campaigns_before_5%"] <= on["campaigns_alerted"] <= n_camp
    assert all(w["margin"] >= 0.0 for w in on["worlds"])


def test_online_at_margin_reads_any_margin_from_one_replay():
    """A legitimate account alerts at margin m iff its peak excess reaches m; a campaign's
    first alert is its first new high of excess at or above m, and the share of its
    requests served before that one is what counts."""
    from distillguard.bench.worlds import online_at_margin

    online = {"peaks": [-1.0, 0.2, 0.9, 1.5], "kinds": ["a", "a", "b", "b"],
              "campaigns": {"c1": {"excess": [-0.5, 0.3, 1.2], "share_before": [0.0, 0.02, 0.4]},
                            "c2": {"excess": [], "share_before": []}}}
    got = online_at_margin(online, 0.0)
    assert got["legit_alerted_by_kind"] == {"b": 2, "a": 1}
    assert (got["campaigns_alerted"], got["campaigns_before_5%"]) == (1, 1)
    assert got["worst_share_before"] == 1.0                    # c2 never alerted
    got = online_at_margin(online, 1.0)
    assert got["legit_alerted"] == 1 and got["campaigns_before_5%"] == 0
    assert got["campaigns_alerted"] == 1                        # c1 at 40% of its requests
    assert online_at_margin(online, 2.0)["campaigns_alerted"] == 0


def test_lowo_command_writes_the_table_json_and_dumps(tmp_path):
    """`distillguard bench --lowo --dump-scores --online` end to end through the CLI."""
    from typer.testing import CliRunner

    from distillguard.cli import app

    res = CliRunner().invoke(app, ["bench", "--worlds", "8", "--world-size", "ci", "--lowo",
                                   "--worlds-seed", "5", "--jobs", "1", "--dump-scores",
                                   "--online", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "tune worlds, each held out once" in res.output
    assert "online replay of each held-out world" in res.output
    rows = json.loads((tmp_path / "lowo.json").read_text())["rows"]
    assert sorted(p.stem for p in (tmp_path / "scores").glob("*.parquet")) == sorted(
        r["world_id"] for r in rows)
