"""End to end on simulated traffic: planted campaigns are linked and flagged, hard negatives
are not, outputs are complete, and the CLI behaves."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from distillguard import api
from distillguard.cli import app
from distillguard.errors import NotFittedError
from distillguard.scoring import Calibrator
from distillguard.sim import simulate

HARD_NEGATIVES = ("eval_harness", "enterprise_batch", "coding_agent", "university",
                  "multi_key_org", "key_rotator")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    sim = simulate(d / "traffic", scenario="tiny", seed=3)
    res = api.detect(sim.logs, d / "results", db=d / "store.duckdb")
    labels = pl.read_csv(sim.labels, infer_schema_length=0).rename({"campaign_id": "true_cid"})
    return sim, res, res.accounts.join(labels, on="account_id"), d


def test_hydra_is_one_flagged_campaign(run):
    _, _, acc, _ = run
    hydra = acc.filter(pl.col("kind") == "reasoning_hydra")
    assert hydra.height >= 10
    assert hydra["flagged"].all()
    assert hydra["campaign_id"].n_unique() == 1 and hydra["campaign_id"][0] is not None


def test_every_campaign_account_flagged_with_reasons(run):
    _, _, acc, _ = run
    distill = acc.filter(pl.col("label") == "distill")
    assert distill["flagged"].mean() >= 0.9
    assert all(r for r in distill.filter(pl.col("flagged"))["reasons"])


def test_hard_negatives_stay_unflagged(run):
    _, _, acc, _ = run
    hn = acc.filter(pl.col("kind").is_in(HARD_NEGATIVES))
    assert set(hn["kind"]) == set(HARD_NEGATIVES)
    assert not hn["flagged"].any(), hn.filter(pl.col("flagged")).select("kind", "reasons")
    ordinary = acc.filter(pl.col("kind") == "ordinary")
    assert ordinary["flagged"].sum() <= 1


def test_outputs(run):
    sim, res, acc, d = run
    out = d / "results"
    with (out / "accounts.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["account_id", "score", "flagged", "campaign_id", "reasons"]
    assert len(rows) == sim.n_accounts
    assert all(0.0 <= float(r["score"]) <= 1.0 and r["flagged"] in ("true", "false")
               for r in rows)
    campaigns = json.loads((out / "campaigns.json").read_text())
    assert campaigns, "no campaign found"
    need = {"campaign_id", "accounts", "score", "requests", "first_seen", "last_seen",
            "capabilities", "indicators", "example_prompts", "reasons"}
    for c in campaigns:
        assert need <= set(c)
        assert {"ip_prefixes", "user_agents", "payment_fingerprints", "templates",
                "synchronized_timing"} <= set(c["indicators"])
        assert all(len(p) <= 300 for p in c["example_prompts"])
    flagged_cids = {r["campaign_id"] for r in rows if r["campaign_id"]}
    assert flagged_cids == {c["campaign_id"] for c in campaigns}
    # what each campaign's community shows against the null, and the reason that says so
    for c in campaigns:
        co = c["coordination"]
        assert set(co["channels"]) == {"infrastructure", "client", "rotation",
                                       "creation_burst", "timing"}
        assert co["community_accounts"] >= c["n_accounts"]
    timed = [c for c in campaigns if (c["coordination"]["channels"]["timing"] or 0) >= 0.3]
    assert timed, "no campaign synchronized in the scenario"
    for c in timed:
        z = c["coordination"]["timing_z_vs_shifted"]
        assert z >= 3.0
        said = re.search(r"active together, ([0-9.]+) standard deviations above the same "
                         r"accounts shifted in time", c["reasons"][0])
        assert said and abs(float(said.group(1)) - z) <= 0.051
    html = (out / "report.html").read_text()
    assert "<script" not in html.lower()
    assert campaigns[0]["campaign_id"] in html


def test_rerun_on_same_store_is_idempotent(run):
    sim, res, _, d = run
    again = api.detect(sim.logs, None, db=d / "store.duckdb")
    assert again.ingest.rows_ok == 0 and again.ingest.rows_dup == res.ingest.rows_ok
    a = res.accounts.sort("account_id")
    b = again.accounts.sort("account_id")
    assert np.allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-12)


def test_cli_detect_and_errors(run, tmp_path):
    sim, _, _, _ = run
    runner = CliRunner()
    r = runner.invoke(app, ["detect", *map(str, sim.logs), "--out", str(tmp_path / "o"),
                            "--db", str(tmp_path / "s.duckdb"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "accounts.csv").exists()
    r = runner.invoke(app, ["detect", str(tmp_path / "missing.jsonl"), "--out",
                            str(tmp_path / "o2"), "--db", str(tmp_path / "s2.duckdb")])
    assert r.exit_code == 2
    assert "no such file" in r.output


def test_calibrator_meets_budget_and_requires_fit():
    rng = np.random.default_rng(0)
    benign = rng.normal(0, 1, 5000)
    cal = Calibrator(target_fpr=0.01).fit(benign)
    assert (cal.transform(benign) >= 0.5).mean() <= 0.01
    with pytest.raises(NotFittedError):
        Calibrator().transform(benign)


def test_detect_reads_a_directory_of_every_format(tmp_path):
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures" / "adapters"
    res = api.detect([fixtures], tmp_path / "out", db=None)
    formats = {f.format for f in res.ingest.files}
    assert formats == {"canonical", "openai", "litellm", "otel"}
    assert res.ingest.rows_bad == 0
    assert res.ingest.rows_ok >= res.accounts.height > 0
    assert (tmp_path / "out" / "accounts.csv").exists()


def test_output_tokens_fall_back_to_the_logged_response(cfg):
    """Logs without usage fields: output tokens are estimated from the response text, in
    batch features and in the online replay alike."""
    from distillguard.features import compute_features
    from distillguard.respond.online import iter_store_rows
    from distillguard.signals import compute_signals
    from distillguard.store import connect

    con = connect(None)
    con.executemany(
        "INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools, "
        "output_tokens, response) VALUES (?, TIMESTAMP '2026-01-01', ?, 'm', 'hi', 0, ?, ?)",
        [("r1", "a", 30, None), ("r2", "a", None, "x" * 398), ("r3", "b", None, None)])
    compute_signals(con, cfg)
    compute_features(con, cfg)
    got = dict(con.execute("SELECT account_id, mean_output_tokens FROM features").fetchall())
    assert got["a"] == pytest.approx((30 + 100) / 2)    # 398 characters: 100 tokens
    assert got["b"] is None                             # nothing logged: unknown, not 0
    rows = {r["request_id"]: r["output_tokens"] for r in iter_store_rows(con)}
    assert rows == {"r1": 30, "r2": 100, "r3": None}


def test_cli_default_store_is_per_output_folder(run, tmp_path, monkeypatch):
    """Two detections in one working directory do not mix: each --out has its own store."""
    sim, _, _, _ = run
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    half = len(sim.logs) // 2
    for name, logs in (("a", sim.logs[:half]), ("b", sim.logs[half:])):
        r = runner.invoke(app, ["detect", *map(str, logs), "--out", name, "--quiet"])
        assert r.exit_code == 0, r.output
        assert (tmp_path / name / "store.duckdb").exists()
    assert not list(tmp_path.glob("*.duckdb"))
    ids = {n: set(pl.read_csv(tmp_path / n / "accounts.csv")["account_id"]) for n in "ab"}
    seen = {n: {json.loads(x)["account_id"] for f in (sim.logs[:half] if n == "a"
                                                      else sim.logs[half:])
                for x in _lines(f)} for n in "ab"}
    assert ids == seen
    # a re-run into the same folder adds nothing
    r = runner.invoke(app, ["detect", *map(str, sim.logs[:half]), "--out", "a", "--quiet"])
    assert r.exit_code == 0 and set(pl.read_csv(tmp_path / "a" / "accounts.csv")[
        "account_id"]) == ids["a"]


def _lines(path):
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.readlines()


def test_campaigns_from_the_linked_keys_equal_those_derived_again(run):
    """describe_campaigns reads the account keys linking left (LINK_KEYS) instead of deriving
    them from every request a second time; both give the same campaigns.json."""
    from distillguard.config import load_config
    from distillguard.linking import LINK_KEYS, compute_links
    from distillguard.scoring import score_accounts
    from distillguard.scoring.campaigns import describe_campaigns
    from distillguard.store import connect

    _, _, _, d = run
    cfg = load_config()
    con = connect(str(d / "store.duckdb"))
    try:
        compute_links(con, cfg, keys_table=LINK_KEYS)
        scores, flagged = score_accounts(con, cfg)
        assert flagged.height
        reused = describe_campaigns(con, cfg, flagged, scores, keys_table=LINK_KEYS)
        derived = describe_campaigns(con, cfg, flagged, scores)
    finally:
        con.close()
    assert reused == derived
    assert any(c["indicators"]["ip_prefixes"] or c["indicators"]["payment_fingerprints"]
               for c in reused)
