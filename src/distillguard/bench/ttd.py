"""Time to detect: how much of a campaign was served before the first alert.

The online scorer (the one the gateway runs) replays the reporting traffic in time order;
a campaign counts as detected at the first request on which any of its accounts scores at
or above the flag threshold. As a deployment re-running batch detection on a schedule, the
replay re-runs the batch pipeline on the traffic seen so far every ``refresh_hours`` of
stream time (default :data:`REFRESH_HOURS`) and loads its groups (group evidence),
calibration and campaigns into the scorer; ``None`` replays without any batch context.
Reported per campaign: the share of its requests served before that moment and the hours
since its first request.

The baselines get the same treatment with their own threshold, the one calibrated on the
benign tuning traffic. The volume baseline alerts at the first request at which an
account's running count passes it. The embedding baselines (PRADA, stateful k-NN, MMD)
replay each account's requests in time order through
:meth:`~distillguard.bench.baselines._BaseDetector.first_alerts`: the account score is
evaluated on the account's request prefix at the detector's checkpoints — every request
for the stateful k-NN detector (a per-query detector, exact), PRADA's own Shapiro–Wilk tests
(every ``check_every`` = 10 requests) and the MMD window ends (every ``stride`` = 50
requests), plus each account's last request — and the account alerts at the first
checkpoint where that score exceeds the threshold. A campaign is detected at the earliest
alert among its accounts. The checkpoints are the detector's own tests, so the threshold
calibrated on them keeps its meaning; the spacing (reported per baseline as
``checkpoint_every``) can delay an alert by up to ``spacing - 1`` requests of the alerting
account compared with testing after every request, when the statistic stays over the
threshold once it crosses (see ``first_alerts``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from distillguard.config import Config, load_config
from distillguard.ingest import ingest_files
from distillguard.store import connect

#: Batch re-run interval of the replay (hours of stream time): 4 a day, 27 in a 7-day week.
REFRESH_HOURS = 6.0


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


def checkpoint_every(detector: Any) -> int:
    """Requests between a baseline's checkpoints (1 = every request)."""
    from distillguard.bench.baselines import PRADA, MMDWindow

    if isinstance(detector, PRADA):
        return int(detector.check_every)
    if isinstance(detector, MMDWindow):
        return int(detector.stride or detector.window)
    return 1


def baseline_time_to_detect(detectors: Mapping[str, Any], requests: pl.DataFrame,
                            labels: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Time to detect per campaign for fitted baselines, replaying ``requests``.

    Parameters
    ----------
    detectors : mapping of name to fitted baseline
        Each already fitted (threshold calibrated) on benign tuning traffic.
    requests : polars.DataFrame
        The reporting traffic as the baselines score it (``account_id``, ``ts`` and
        ``prompt`` or ``embedding``).
    labels : polars.DataFrame
        ``account_id``, ``label`` (``"distill"`` for campaign accounts), ``campaign_id``.

    Returns
    -------
    dict
        Per detector name: ``campaigns`` (one row per campaign, as for the online scorer),
        ``benign_alerted`` (legitimate accounts that alerted at some point), ``n_benign``,
        ``checkpoint_every`` and ``seconds`` (replay time).
    """
    lab = labels.select(pl.col("account_id").cast(pl.Utf8), "label", "campaign_id")
    camp = lab.filter(pl.col("label") == "distill").select("account_id", "campaign_id")
    benign = lab.filter(pl.col("label") != "distill").select("account_id")

    def epoch(col: str) -> pl.Expr:
        return pl.col(col).dt.epoch("us").cast(pl.Float64) / 1e6

    req = (requests.select(pl.col("account_id").cast(pl.Utf8), "ts")
           .join(camp, on="account_id").select("campaign_id", "account_id", epoch("ts").alias("t")))
    out: dict[str, dict[str, Any]] = {}
    for name, det in detectors.items():
        t0 = time.perf_counter()
        alerts = det.first_alerts(requests).filter(pl.col("alert_index").is_not_null())
        first = (alerts.join(camp, on="account_id").group_by("campaign_id")
                 .agg(epoch("alert_ts").min()))
        out[name] = {
            "campaigns": _summarise(req, dict(first.iter_rows())),
            "benign_alerted": alerts.join(benign, on="account_id").height,
            "n_benign": benign.height,
            "checkpoint_every": checkpoint_every(det),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    return out


def time_to_detect(logs: list[Path], labels: pl.DataFrame, out_dir: str | Path, *,
                   volume_threshold: float | None = None,
                   baselines: Mapping[str, Any] | None = None,
                   requests: pl.DataFrame | None = None,
                   config: Config | None = None,
                   refresh_hours: float | None = REFRESH_HOURS) -> dict[str, Any]:
    """Replay the online scorer (and, if given, the baselines) over the reporting traffic.

    ``volume_threshold`` adds the volume baseline; ``baselines`` (fitted detectors by name)
    with ``requests`` (the reporting traffic with embeddings, as the bench scored it) add
    one entry per detector under ``"baselines"`` (see :func:`baseline_time_to_detect`).
    ``refresh_hours``: batch re-run interval during the replay (``replay.refresh`` in the
    result reports each run and its cost).
    """
    from distillguard.respond.online import replay

    cfg = config or load_config()
    out = Path(out_dir)
    summary = replay(logs, out, config=cfg, refresh_hours=refresh_hours)
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
        # batch re-run interval and its cost (runs, seconds) during the replay
        "refresh_hours": refresh_hours,
        "refresh_seconds": (summary.get("refresh") or {}).get("seconds"),
        # The price of early detection: legitimate accounts that crossed the threshold at
        # some point of the replay (batch scoring sees the whole week at once).
        "online_benign_alerted": len(benign_alerted), "n_benign": len(benign)}
    if volume_threshold is not None:
        hit = (req.filter(pl.col("n_acct") > volume_threshold)
               .group_by("campaign_id").agg(pl.col("t").min()))
        result["volume"] = _summarise(req, dict(hit.iter_rows()))
    if baselines:
        if requests is None:
            raise ValueError("baselines need the reporting requests frame")
        result["baselines"] = baseline_time_to_detect(baselines, requests, labels)
    (out / "time_to_detect.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _parse(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
