"""Time to detect: how much of a campaign was served before the first alert.

The online scorer (the one the gateway runs) replays the reporting traffic in time order;
a campaign counts as detected at the first request on which any of its accounts scores at
or above the flag threshold. Reported per campaign: the share of its requests served before
that moment and the hours since its first request. The volume baseline gets the same
treatment (first request at which an account's running count passes its threshold); the
embedding baselines score whole accounts and have no per-request stream here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from distillguard.config import Config, load_config
from distillguard.ingest import ingest_files
from distillguard.store import connect


def _campaign_requests(con, labels: pl.DataFrame) -> pl.DataFrame:
    lab = labels.filter(pl.col("label") == "distill").select("account_id", "campaign_id")
    con.register("_lab", lab.to_arrow())
    try:
        return con.sql("""
            SELECT l.campaign_id, r.account_id, epoch(r.ts) AS t,
                   row_number() OVER (PARTITION BY r.account_id ORDER BY r.ts, r.request_id)
                     AS n_acct
            FROM requests r JOIN _lab l USING (account_id)""").pl()
    finally:
        con.unregister("_lab")


def _summarise(req: pl.DataFrame, first: dict[str, float | None]) -> list[dict[str, Any]]:
    out = []
    for cid, grp in req.group_by("campaign_id"):
        cid = cid[0]
        t0, n = float(grp["t"].min()), grp.height
        t_det = first.get(cid)
        if t_det is None:
            out.append({"campaign_id": cid, "requests": n, "detected": False,
                        "share_served_before": 1.0, "hours_to_detect": None})
            continue
        before = int((grp["t"] < t_det).sum())
        out.append({"campaign_id": cid, "requests": n, "detected": True,
                    "share_served_before": round(before / n, 4),
                    "hours_to_detect": round((t_det - t0) / 3600, 2)})
    return sorted(out, key=lambda r: r["campaign_id"])


def time_to_detect(logs: list[Path], labels: pl.DataFrame, out_dir: str | Path, *,
                   volume_threshold: float | None = None,
                   config: Config | None = None) -> dict[str, Any]:
    from distillguard.respond.online import replay

    cfg = config or load_config()
    out = Path(out_dir)
    summary = replay(logs, out, config=cfg)
    thr = float(cfg["scoring"]["threshold"])
    camp_of = dict(labels.filter(pl.col("label") == "distill")
                   .select("account_id", "campaign_id").iter_rows())
    first: dict[str, float] = {}
    benign = set(labels.filter(pl.col("label") != "distill")["account_id"].to_list())
    benign_alerted: set[str] = set()
    with (out / "alerts.jsonl").open("rb") as fh:
        for line in fh:
            a = orjson.loads(line)
            if a["score"] >= thr and a["account_id"] in benign:
                benign_alerted.add(a["account_id"])
            cid = camp_of.get(a["account_id"])
            if cid is None or a["score"] < thr:
                continue
            t = float(a["ts"]) if not isinstance(a["ts"], str) else _parse(a["ts"])
            first[cid] = min(first.get(cid, t), t)
    con = connect(None)
    try:
        ingest_files(logs, con, limits=cfg["ingest"])
        req = _campaign_requests(con, labels)
    finally:
        con.close()
    result: dict[str, Any] = {
        "online": _summarise(req, first), "replay": summary,
        # The price of early detection: legitimate accounts that crossed the threshold at
        # some point of the replay (batch scoring sees the whole week at once).
        "online_benign_alerted": len(benign_alerted), "n_benign": len(benign)}
    if volume_threshold is not None:
        hit = (req.filter(pl.col("n_acct") > volume_threshold)
               .group_by("campaign_id").agg(pl.col("t").min()))
        result["volume"] = _summarise(req, dict(hit.iter_rows()))
    (out / "time_to_detect.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _parse(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
