"""Scoring: calibrated per-account scores, campaign lift, reasons (``scores`` table)."""

from __future__ import annotations

import hashlib

import duckdb
import numpy as np
import polars as pl

from distillguard.config import Config
from distillguard.scoring.calibrate import Calibrator
from distillguard.scoring.evidence import evidence_frame, reasons_for

__all__ = ["Calibrator", "calibrator_from_config", "evidence_frame", "score_accounts"]

_COORD_KINDS = ("payment", "template", "sync")


def calibrator_from_config(cfg: Config) -> Calibrator:
    c = cfg["scoring"]["calibration"]
    return Calibrator.from_params(c["raw_threshold"], c["raw_scale"],
                                  float(cfg["scoring"]["target_fpr"]))


def _campaign_id(members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()
    return f"cmp-{digest[:10]}"


def community_table(ev: pl.DataFrame, comm: pl.DataFrame, edges: pl.DataFrame,
                    cfg: Config) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per community: raw campaign score; per account: weighted degree inside its community."""
    sc = cfg["scoring"]
    acc = ev.select("account_id", "raw").join(comm, on="account_id", how="left")
    acc = acc.with_columns(pl.col("community").fill_null(-1))
    if edges.is_empty():
        deg = pl.DataFrame(schema={"account_id": pl.Utf8, "deg_in": pl.Float64})
        coord = pl.DataFrame(schema={"community": pl.Int64, "coord_share": pl.Float64})
    else:
        e = (edges.join(comm.rename({"account_id": "a", "community": "ca"}), on="a")
             .join(comm.rename({"account_id": "b", "community": "cb"}), on="b")
             .filter((pl.col("ca") == pl.col("cb")) & (pl.col("ca") >= 0)))
        # Lifting needs more than a shared SDK user agent: count edges carrying any other kind.
        strong = e.filter(pl.col("kinds") != "user_agent")
        deg = (pl.concat([strong.select(pl.col("a").alias("account_id"), "weight"),
                          strong.select(pl.col("b").alias("account_id"), "weight")])
               .group_by("account_id").agg(pl.col("weight").sum().alias("deg_in")))
        pattern = "|".join(_COORD_KINDS)
        # Share of members touched by a coordination edge (payment, template or sync).
        coord_acc = pl.concat([
            e.filter(pl.col("kinds").str.contains(pattern)).select(
                pl.col("a").alias("account_id"), pl.col("ca").alias("community")),
            e.filter(pl.col("kinds").str.contains(pattern)).select(
                pl.col("b").alias("account_id"), pl.col("ca").alias("community")),
        ]).unique()
        sizes = comm.group_by("community").len("size")
        coord = (coord_acc.group_by("community").len("n_coord").join(sizes, on="community")
                 .select("community", (pl.col("n_coord") / pl.col("size")).alias("coord_share")))
    camp = (acc.filter(pl.col("community") >= 0).group_by("community")
            .agg(pl.col("raw").median().alias("median_raw"), pl.len().alias("size"),
                 pl.col("account_id").sort().alias("members"))
            .join(coord, on="community", how="left")
            .with_columns(pl.col("coord_share").fill_null(0.0))
            .with_columns(pl.when(pl.col("median_raw") > 0).then(
                pl.col("median_raw") * (1 + float(sc["campaign_coordination_weight"])
                                        * pl.col("coord_share")))
                .otherwise(pl.col("median_raw")).alias("campaign_raw")))
    return camp, deg


def score_accounts(con: duckdb.DuckDBPyConnection, cfg: Config,
                   calibrator: Calibrator | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write the ``scores`` table; returns (scores, flagged campaigns)."""
    sc = cfg["scoring"]
    cal = calibrator or calibrator_from_config(cfg)
    ev = evidence_frame(con, cfg)
    feats = con.sql("SELECT * FROM features").pl()
    comm = con.sql("SELECT account_id, community FROM communities").pl()
    edges = con.sql("SELECT a, b, weight, kinds FROM edges").pl()
    camp, deg = community_table(ev, comm, edges, cfg)
    camp = camp.with_columns(
        pl.Series("campaign_score", cal.transform(camp["campaign_raw"].to_numpy())
                  if camp.height else np.array([], dtype=float)))
    flagged_c = camp.filter(pl.col("campaign_score") >= float(sc["campaign_min_score"]))
    flagged_c = flagged_c.with_columns(
        pl.col("members").map_elements(_campaign_id, return_dtype=pl.Utf8).alias("campaign_id"))

    df = (ev.join(comm, on="account_id", how="left").join(deg, on="account_id", how="left")
          .with_columns(pl.col("deg_in").fill_null(0.0))
          .join(flagged_c.select("community", "campaign_id", "campaign_raw", "campaign_score"),
                on="community", how="left"))
    # A campaign lifts members that are linked to it strongly and do not look clearly human
    # on their own: a customer sharing a NAT with a hydra keeps its own score.
    lifted = (pl.col("campaign_id").is_not_null()
              & (pl.col("deg_in") >= float(sc["lift_min_degree"]))
              & (pl.col("raw") >= float(sc["lift_min_raw"])))
    df = df.with_columns(
        pl.when(lifted).then(pl.max_horizontal("raw", "campaign_raw")).otherwise(pl.col("raw"))
        .alias("final_raw"),
        pl.when(lifted).then(pl.col("campaign_id")).otherwise(None).alias("campaign_id"),
    )
    # A campaign is what it lifted: drop flagged communities left with too few linked members.
    kept = (df.filter(pl.col("campaign_id").is_not_null()).group_by("campaign_id").len()
            .filter(pl.col("len") >= int(cfg["linking"]["min_campaign_accounts"])))
    keep_ids = set(kept["campaign_id"].to_list())
    df = df.with_columns(pl.when(pl.col("campaign_id").is_in(list(keep_ids)))
                         .then(pl.col("campaign_id")).otherwise(None).alias("campaign_id"))
    flagged_c = flagged_c.filter(pl.col("campaign_id").is_in(list(keep_ids)))
    score = cal.transform(df["final_raw"].to_numpy())
    df = df.with_columns(pl.Series("score", score),
                         (pl.Series("score", score) >= float(sc["threshold"])).alias("flagged"))

    sizes = dict(zip(flagged_c["campaign_id"].to_list(), flagged_c["size"].to_list(),
                     strict=True))
    feat_rows = {r["account_id"]: r for r in feats.iter_rows(named=True)}
    k = int(sc["max_reasons"])
    reasons = []
    for row in df.iter_rows(named=True):
        fr = feat_rows[row["account_id"]]
        rs = reasons_for(fr, row, cfg, k)
        if row.get("ev_partner", 0) > 0 and fr.get("partner_reasons"):
            rs.insert(0, fr["partner_reasons"][:200])
        if row["campaign_id"] is not None and row["campaign_raw"] is not None and \
                row["campaign_raw"] > row["raw"]:
            rs.insert(0, f"member of campaign {row['campaign_id']} "
                         f"({sizes[row['campaign_id']]} linked accounts)")
        reasons.append("; ".join(rs[:k]))
    out = df.select("account_id", "score", "flagged", "campaign_id", "raw", "final_raw").with_columns(
        pl.Series("reasons", reasons, dtype=pl.Utf8)
    ).sort(["score", "account_id"], descending=[True, False])   # ties: a stable, engine-free order
    # Campaign reasons: the evidence of its members on average, with average feature values.
    ev_cols = [c for c in df.columns if c.startswith("ev_")]
    camp_reasons = {}
    members = df.filter(pl.col("campaign_id").is_not_null())
    if members.height:
        mean_ev = members.group_by("campaign_id").agg(pl.col(ev_cols).mean())
        num = [c for c, t in feats.schema.items() if t.is_numeric()]
        mean_ft = (feats.select("account_id", *num).join(members.select("account_id",
                   "campaign_id"), on="account_id").group_by("campaign_id").agg(pl.col(num).mean()))
        ft_rows = {r["campaign_id"]: r for r in mean_ft.iter_rows(named=True)}
        for r in mean_ev.iter_rows(named=True):
            camp_reasons[r["campaign_id"]] = reasons_for(ft_rows[r["campaign_id"]], r, cfg, k)
    flagged_c = flagged_c.with_columns(pl.col("campaign_id").replace_strict(
        camp_reasons, default=[], return_dtype=pl.List(pl.Utf8)).alias("reasons"))
    con.register("_scores", out.to_arrow())
    con.execute("CREATE OR REPLACE TABLE scores AS SELECT * FROM _scores")
    con.unregister("_scores")
    return out, flagged_c
