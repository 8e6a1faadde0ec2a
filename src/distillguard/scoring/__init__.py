"""Scoring: calibrated per-account scores with group evidence, campaigns, reasons (``scores``)."""

from __future__ import annotations

import hashlib
import json

import duckdb
import polars as pl

from distillguard.config import Config
from distillguard.scoring.calibrate import Calibrator
from distillguard.scoring.campaigns import COORDINATION_CHANNELS
from distillguard.scoring.evidence import evidence_frame, reasons_for, scoring_input_sql
from distillguard.scoring.selfcal import SelfCalibration, self_calibrate

__all__ = ["Calibrator", "SelfCalibration", "calibrator_from_config", "calibration_used",
           "evidence_frame", "score_accounts"]


def calibrator_from_config(cfg: Config) -> Calibrator:
    c = cfg["scoring"]["calibration"]
    return Calibrator.from_params(c["raw_threshold"], c["raw_scale"],
                                  float(cfg["scoring"]["target_fpr"]))


def calibration_used(con: duckdb.DuckDBPyConnection) -> dict:
    """The calibration the last scoring run used (``SelfCalibration.to_json``)."""
    return json.loads(con.execute("SELECT j FROM calibration").fetchall()[0][0])


def _campaign_id(members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()
    return f"cmp-{digest[:10]}"


#: Coordination channels of ``groups`` shown in campaign reasons as shares, with their
#: wording; the timing channel is a test and is worded by its standard score instead.
_CHANNELS = tuple((col, text) for name, col, text in COORDINATION_CHANNELS if name != "timing")


def _group_reason(g: dict) -> str:
    parts = [f"{g[c]:.0%} {text}" for c, text in _CHANNELS if (g.get(c) or 0) >= 0.3]
    # the timing channel is a test, not a share: say how far the group is from its null
    if (g.get("g_sync") or 0) >= 0.3 and g.get("g_sync_z") is not None:
        parts.append(f"active together, {g['g_sync_z']:.1f} standard deviations above the "
                     "same accounts shifted in time")
    return (f"coordinated group of {int(g['g_size'])} linked accounts"
            + (": " + "; ".join(parts) if parts else ""))


def score_accounts(con: duckdb.DuckDBPyConnection, cfg: Config,
                   calibrator: Calibrator | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write the ``scores`` table; returns (scores, flagged campaigns).

    An account's score is its own evidence plus the evidence of its link community as a
    whole (``group: true`` items over the ``groups`` table), calibrated. A flagged campaign
    is a community with at least ``min_campaign_accounts`` flagged accounts; its members
    are its flagged accounts.
    """
    sc = cfg["scoring"]
    con.execute(f"CREATE OR REPLACE TEMP TABLE _score_in AS {scoring_input_sql(cfg)}")
    ev = evidence_frame(con, cfg, "_score_in")
    inp = con.sql("SELECT * FROM _score_in").pl()
    # The threshold: re-estimated on this traffic (self-calibration, with the config's
    # calibration as prior) unless a calibrator is given or self_calibrate is off.
    prior = calibrator_from_config(cfg)
    given = calibrator if calibrator is not None else (
        None if sc.get("self_calibrate", True) else prior)
    selfcal = self_calibrate(ev["final_raw"].to_numpy(), prior,
                             sc["calibration"].get("benign_sketch"), use=given)
    cal = selfcal.calibrator
    con.execute("CREATE OR REPLACE TABLE calibration AS SELECT * FROM "
                "(SELECT unnest([?]) AS j)", [json.dumps(selfcal.to_json())])
    score = cal.transform(ev["final_raw"].to_numpy())
    df = ev.with_columns(pl.Series("score", score),
                         (pl.Series("score", score) >= float(sc["threshold"])).alias("flagged"))
    df = df.join(inp.select("account_id", "community"), on="account_id", how="left")

    min_acc = int(cfg["linking"]["min_campaign_accounts"])
    camp = (df.filter(pl.col("flagged") & (pl.col("community") >= 0))
            .group_by("community")
            .agg(pl.col("account_id").sort().alias("members"),
                 pl.col("score").mean().alias("campaign_score"),
                 pl.col("final_raw").median().alias("campaign_raw"))
            .filter(pl.col("members").list.len() >= min_acc))
    camp = camp.with_columns(
        pl.col("members").map_elements(_campaign_id, return_dtype=pl.Utf8).alias("campaign_id"),
        pl.col("members").list.len().alias("size"))
    groups = con.sql("SELECT * FROM groups").pl() if camp.height else None
    if groups is not None:
        camp = camp.join(groups, on="community", how="left").with_columns(
            pl.col("g_cover_infra").fill_null(0.0).alias("coord_share"))
    else:
        camp = camp.with_columns(pl.lit(0.0).alias("coord_share"))
    member_of = {a: cid for cid, ms in zip(camp["campaign_id"].to_list(),
                                            camp["members"].to_list(), strict=True) for a in ms}
    df = df.with_columns(pl.col("account_id").replace_strict(member_of, default=None,
                                                              return_dtype=pl.Utf8)
                         .alias("campaign_id"))

    rows = {r["account_id"]: r for r in inp.iter_rows(named=True)}
    k = int(sc["max_reasons"])
    reasons = []
    for row in df.iter_rows(named=True):
        fr = rows[row["account_id"]]
        rs = reasons_for(fr, row, cfg, k)
        if row.get("ev_partner", 0) > 0 and fr.get("partner_reasons"):
            rs.insert(0, fr["partner_reasons"][:200])
        if row["campaign_id"] is not None:
            rs.insert(0, f"member of campaign {row['campaign_id']}")
        reasons.append("; ".join(rs[:k]))
    out = df.select("account_id", "score", "flagged", "campaign_id", "raw", "final_raw").with_columns(
        pl.Series("reasons", reasons, dtype=pl.Utf8)
    ).sort(["score", "account_id"], descending=[True, False])   # ties: a stable, engine-free order
    # Campaign reasons: the group's coordination, then its members' evidence on average.
    ev_cols = [c for c in df.columns if c.startswith("ev_")]
    camp_reasons: dict[str, list[str]] = {}
    members = df.filter(pl.col("campaign_id").is_not_null())
    if members.height:
        mean_ev = members.group_by("campaign_id").agg(pl.col(ev_cols).mean())
        num = [c for c, t in inp.schema.items() if t.is_numeric()]
        mean_ft = (inp.select("account_id", *num).join(members.select("account_id",
                   "campaign_id"), on="account_id").group_by("campaign_id").agg(pl.col(num).mean()))
        ft_rows = {r["campaign_id"]: r for r in mean_ft.iter_rows(named=True)}
        for r in mean_ev.iter_rows(named=True):
            # the group's own reason says what g_coordination's item would say
            camp_reasons[r["campaign_id"]] = [_group_reason(ft_rows[r["campaign_id"]])] + [
                x for x in reasons_for(ft_rows[r["campaign_id"]], r, cfg, k)
                if not x.startswith("member of a group of")]
    camp = camp.with_columns(pl.col("campaign_id").replace_strict(
        camp_reasons, default=[], return_dtype=pl.List(pl.Utf8)).alias("reasons"))
    con.register("_scores", out.to_arrow())
    con.execute("CREATE OR REPLACE TABLE scores AS SELECT * FROM _scores")
    con.unregister("_scores")
    return out, camp
