"""Online (gateway/replay) and batch verdicts on the same traffic agree.

The comparison a deployment relies on: after the same traffic, with the campaigns of the
latest batch run loaded into the online scorer (``replay --campaigns campaigns.json``, as a
gateway loads them), each account's END-of-stream online score and flag against the batch
score and flag. Every account's flag must agree, and scores within a stated tolerance:

- ``RAW_TOL`` on the raw evidence sum: the only approximation left that moves the raw score
  on these scenarios is the median output/input ratio, read online from a histogram of
  log-ratios with 2 % bins (median within ~1 %): at most 0.01 x 8 x 0.5 / 6 ≈ 0.007 raw on
  the long_outputs ramp (2 → 8, weight 0.5). Measured: 0.0053 (tiny/3), 0.0036 (tiny/11).
- ``SCORE_TOL`` on the calibrated score: the logistic's slope is at most
  1 / (4 x raw_scale) ≈ 0.53, so ≈ 0.004; the campaign lift uses campaigns.json's score
  rounded to 1e-6. Measured: 0.0016 (tiny/3), 0.0009 (tiny/11).

Mid-stream threshold crossings of accounts that end below it (transient alerts: the online
scorer decides on each account's traffic so far) are a separate metric, pinned below, not a
disagreement.
"""

from __future__ import annotations

import orjson
import polars as pl
import pytest

from distillguard import api
from distillguard.respond.online import OnlineScorer, replay
from distillguard.sim import simulate

RAW_TOL = 0.01
SCORE_TOL = 0.005
#: (scenario, seed) → accounts whose online score crossed the threshold mid-stream but ended
#: below it, as measured when written (legitimate accounts; see the module docstring).
TRANSIENT = {("tiny", 3): 0, ("tiny", 11): 0}


@pytest.fixture(scope="module", params=sorted(TRANSIENT), ids=lambda p: f"{p[0]}-{p[1]}")
def run(request, tmp_path_factory):
    scenario, seed = request.param
    tmp = tmp_path_factory.mktemp(f"{scenario}{seed}")
    sim = simulate(tmp / "traffic", scenario=scenario, seed=seed)
    batch = api.detect(sim.logs, tmp / "results", db=None)
    summary = replay(sim.logs, tmp / "replay", campaigns=tmp / "results" / "campaigns.json")
    online = pl.read_csv(tmp / "replay" / "online_accounts.csv",
                         schema_overrides={"campaign_id": pl.Utf8})
    both = batch.accounts.join(
        online.select("account_id", pl.col("score").alias("o_score"),
                      pl.col("flagged").alias("o_flagged"), pl.col("raw").alias("o_raw"),
                      pl.col("campaign_id").alias("o_campaign"), "peak_score"),
        on="account_id", how="full", coalesce=True)
    labels = pl.read_csv(sim.labels, infer_schema_length=0)
    return request.param, both, summary, labels, tmp


def test_end_of_stream_flags_and_scores_agree(run):
    _, both, summary, _, _ = run
    assert both["o_score"].null_count() == 0 and both["score"].null_count() == 0
    differ = both.filter(pl.col("flagged") != pl.col("o_flagged"))
    assert differ.is_empty(), differ
    assert summary["flagged"] == int(both["flagged"].sum())
    d_raw = (both["o_raw"] - both["raw"]).abs()
    d_score = (both["o_score"] - both["score"]).abs()
    assert d_raw.max() <= RAW_TOL, both.with_columns(d=d_raw).sort("d").tail(3)
    assert d_score.max() <= SCORE_TOL, both.with_columns(d=d_score).sort("d").tail(3)
    # Batch campaign membership is what the online scorer carries (lifted members only).
    assert (both["campaign_id"].fill_null("") == both["o_campaign"].fill_null("")).all()


def test_campaign_lift_is_what_online_needs_from_batch(run):
    """Without the loaded campaigns, only lifted batch members may fall below threshold."""
    (scenario, seed), both, _, _, _ = run
    own = OnlineScorer().calibrator.transform(both["o_raw"].to_numpy()) >= 0.5
    differ = both.filter(pl.col("flagged") != pl.Series(own))
    assert differ["campaign_id"].null_count() == 0, differ
    assert (differ["final_raw"] > differ["raw"]).all()


def test_transient_alerts_are_separate_and_pinned(run):
    key, both, summary, labels, tmp = run
    transient = both.filter((pl.col("peak_score") >= 0.5) & ~pl.col("o_flagged"))
    assert transient.height == summary["transient"] == TRANSIENT[key], transient
    kinds = transient.join(labels, on="account_id")["label"].to_list()
    assert all(k == "benign" for k in kinds), kinds
    # Every flagged account was alerted during the stream (first alert = time to detection).
    alerted = {orjson.loads(x)["account_id"]
               for x in (tmp / "replay" / "alerts.jsonl").read_bytes().splitlines()}
    assert set(both.filter(pl.col("o_flagged"))["account_id"]) <= alerted
    hydra = both.join(labels, on="account_id").filter(pl.col("kind") == "reasoning_hydra")
    assert hydra["o_flagged"].all() and hydra["flagged"].all()


def test_replay_cli_loads_batch_campaigns(tmp_path):
    """``replay --campaigns``: members are lifted unless their own evidence looks human."""
    from typer.testing import CliRunner

    from distillguard.respond.cli import app

    recs = []
    for i in range(6):
        recs.append({"request_id": f"q{i}", "ts": f"2026-01-01T0{i}:00:00Z",
                     "account_id": "quiet", "model": "m1", "prompt": f"note {i}",
                     "input_tokens": 10, "output_tokens": 400})
        recs.append({"request_id": f"c{i}", "ts": f"2026-01-01T0{i}:30:00Z",
                     "account_id": "chatty", "model": "m1",
                     "messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": f"card ideas {i}"}],
                     "input_tokens": 30, "output_tokens": 60})
    logs = tmp_path / "logs.jsonl"
    logs.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    camp = tmp_path / "campaigns.json"
    camp.write_bytes(orjson.dumps([{"campaign_id": "cmp-x", "score": 0.93,
                                    "accounts": ["quiet", "chatty"]}]))
    r = CliRunner().invoke(app, ["replay", str(logs), "--out", str(tmp_path / "o"),
                                 "--campaigns", str(camp)])
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.output)["campaigns_loaded"] == 1
    rows = {x["account_id"]: x for x in pl.read_csv(tmp_path / "o" / "online_accounts.csv")
            .iter_rows(named=True)}
    assert rows["quiet"]["score"] == pytest.approx(0.93) and rows["quiet"]["flagged"]
    assert rows["quiet"]["reasons"].startswith("member of campaign cmp-x (2 linked accounts)")
    assert rows["chatty"]["raw"] < 0 and not rows["chatty"]["flagged"]   # not lifted
    assert rows["chatty"]["campaign_id"] == "cmp-x"                       # still a member
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    r = CliRunner().invoke(app, ["replay", str(logs), "--out", str(tmp_path / "o2"),
                                 "--campaigns", str(bad)])
    assert r.exit_code == 2 and "campaigns.json" in r.output
