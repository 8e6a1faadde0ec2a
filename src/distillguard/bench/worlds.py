"""Cross-world benchmark: detection judged on worlds, tactics and text it was never tuned on.

``distillguard bench --worlds N`` draws N simulated worlds from a distribution over world
*structure* (:func:`distillguard.sim.draw_world`: population mix and sizes, models and
releases, campaigns drawn from a tactic space, text from corpus groups). A quarter of them
(at least one) are **tune** worlds, the rest **report** worlds.

Protocol:

1. Everything a detector fits is fitted on the tune worlds only (:func:`fit_tune`): our
   calibration (the benign raw-score quantile) and every baseline's threshold and reference
   sample. :func:`fit_tune` is given the tune worlds' traffic and nothing else, and what it
   fitted is written to ``fitted.json`` before any report world is simulated;
   ``tests/test_bench_worlds.py`` checks that changing the report worlds leaves it unchanged.
2. Tune and report worlds draw their text from disjoint corpus groups and template
   phrasings (``corpus_group`` in each ``world.json``).
3. Every figure is measured on report worlds, per world and aggregated (mean, 10th
   percentile, worst).

Per report world: PR-AUC, recall at 0.1% and 1% FPR, flagged precision, flagged FPR (promised
vs measured), FPR per legitimate kind, campaigns recovered (>= 90% of accounts flagged) and
recovered as one (purity, ARI), the purity of every reported campaign, the community size
distribution (largest community and its label mix), and, with ``replay``, time to detect from
the online scorer and its alerts per legitimate kind. The same for the baselines.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distillguard.api import Progress
from distillguard.config import Config, load_config

__all__ = ["Fitted", "bench_worlds", "fit_tune", "lowo_worlds", "run_report_world",
           "world_seeds"]

#: Detectors whose figures the tables show, in order (baselines appended when run).
OURS = ("distillguard", "as-shipped")


def world_seeds(worlds_seed: int, role: str, n: int) -> list[int]:
    """Seeds of the ``n`` worlds of one role: independent streams per role, so the report
    worlds can change without touching the tune worlds (and vice versa)."""
    return [zlib.crc32(f"distillguard-worlds:{worlds_seed}:{role}:{i}".encode())
            for i in range(n)]


@dataclass
class Fitted:
    """What the detectors fitted on the tune worlds (and nothing else)."""

    tune_worlds: list[str]
    calibration: dict[str, Any]
    overlay: dict[str, Any] = field(default_factory=dict)      # our fitted config overlay
    baselines: dict[str, Any] = field(default_factory=dict)   # name -> fitted estimator
    baseline_params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        sc = self.overlay.get("scoring", {})
        return {"tune_worlds": self.tune_worlds, "calibration": self.calibration,
                "weights": sc.get("weights", {}), "online_margin": sc.get("online_margin"),
                "baselines": self.baseline_params}


# ---------------------------------------------------------------------------------------
# tune
# ---------------------------------------------------------------------------------------


def _simulate(spec: Any, out: Path, corpora: dict[str, Any]) -> tuple[list[Path], pl.DataFrame]:
    from distillguard.sim import simulate_world

    res = simulate_world(spec, out, **corpora)
    return list(res.logs), pl.read_csv(res.labels, infer_schema_length=0)


def _store(logs: list[Path], cfg: Config):
    from distillguard.ingest import ingest_files
    from distillguard.store import connect

    con = connect(None)
    ingest_files(logs, con, limits=cfg["ingest"])
    return con


def _baseline_params(det: Any) -> dict[str, Any]:
    out = {}
    for k, v in vars(det).items():
        if k.endswith("_") and not k.startswith("_") and isinstance(v, int | float | str):
            out[k] = v
    return out


def _exit_with_parent(parent: int, every: float) -> None:
    """Worker initializer: end this process once ``parent`` is gone. A bench or fit that is
    killed (SIGKILL, an OOM kill) cannot shut its pool down, and spawned workers would go on
    simulating worlds into the same folders a rerun writes (seen: two orphans ran 45 minutes
    after their fit was killed)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def world_pool(jobs: int, every: float = 1.0) -> ProcessPoolExecutor:
    """The bench's process pool (spawned workers that end when this process ends)."""
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(), every))


def map_worlds(fn: Any, args: Sequence[Any], jobs: int) -> list[Any]:
    """``[fn(a) for a in args]``, in a :func:`world_pool` of ``jobs`` workers when > 1."""
    if jobs > 1:
        with world_pool(jobs) as ex:
            return list(ex.map(fn, args))
    return [fn(a) for a in args]


def simulate_tune_worlds(out: Path, worlds_seed: int, n: int, size: str,
                         corpora: dict[str, Any]) -> list[Path]:
    """Draw and simulate the ``n`` tune worlds of ``worlds_seed`` into ``out/tune``."""
    from distillguard.sim import draw_world

    dirs = []
    for s in world_seeds(worlds_seed, "tune", n):
        spec = draw_world(s, "tune", size=size)
        _simulate(spec, out / "tune" / spec.world_id, corpora)
        dirs.append(out / "tune" / spec.world_id)
    return dirs


def _tune_job(args: tuple) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None, float]:
    """One tune world through the pipeline: (design frame, labels, benign requests, s)."""
    from distillguard.api import analyse
    from distillguard.bench.run import requests_frame
    from distillguard.scoring.fit import design_frame

    d, cfg, with_requests, threads = args
    if threads:
        os.environ["DISTILLGUARD_THREADS"] = str(threads)
    t0 = time.perf_counter()
    logs = sorted((d / "logs").glob("requests-*.jsonl.gz"))
    labels = pl.read_csv(d / "labels.csv", infer_schema_length=0)
    con = _store(logs, cfg)
    try:
        analyse(con, cfg)
        design = design_frame(con, cfg)
        req = (requests_frame(con).join(labels.filter(pl.col("label") != "distill")
                                        .select("account_id"), on="account_id")
               if with_requests else None)
    finally:
        con.close()
    return design, labels, req, time.perf_counter() - t0


def _replay_no_margin(logs: list[Path], labels: pl.DataFrame, cfg: Config,
                      records: bool = False) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Replay a world through the online scorer at ``cfg`` without online margin, with the
    batch refreshes a report world's replay has. Returns the legitimate accounts' peak raw
    evidence over the threshold (account_id, peak_excess, kind; what ``online_margin_for``
    fits on) and, with ``records``, every account's new highs of it (``excess_records``)."""
    from distillguard.bench.ttd import REFRESH_HOURS
    from distillguard.respond.online import replay
    from distillguard.scoring.fit import with_overlay

    c0 = with_overlay(cfg, {"scoring": {"online_margin": 0.0}})
    with tempfile.TemporaryDirectory(prefix="dg-replay-") as tmp:
        replay(logs, tmp, config=c0, refresh_hours=REFRESH_HOURS, excess_records=records)
        acc = pl.read_csv(Path(tmp) / "online_accounts.csv",
                          columns=["account_id", "peak_excess"])
        rec = pl.read_parquet(Path(tmp) / "excess_records.parquet") if records else None
    legit = labels.filter(pl.col("label") != "distill").select("account_id", "kind")
    return acc.join(legit, on="account_id"), rec


def _tune_replay_job(args: tuple) -> np.ndarray:
    """Replay one tune world through the online scorer (no margin); the legitimate
    accounts' peak raw evidence over the threshold (see ``online_margin_for``)."""
    d, cfg, threads = args
    if threads:
        os.environ["DISTILLGUARD_THREADS"] = str(threads)
    logs = sorted((d / "logs").glob("requests-*.jsonl.gz"))
    labels = pl.read_csv(d / "labels.csv", infer_schema_length=0)
    return _replay_no_margin(logs, labels, cfg)[0]["peak_excess"].to_numpy()


def fit_online_margin(tune_dirs: Sequence[Path], cfg: Config, jobs: int = 1) -> float:
    """Replay every tune world at ``cfg`` (margin 0) and fit ``scoring.online_margin``."""
    from distillguard.scoring.fit import online_margin_for, with_overlay

    c0 = with_overlay(cfg, {"scoring": {"online_margin": 0.0}})
    parts = map_worlds(_tune_replay_job,
                       [(Path(d), c0, 1 if jobs > 1 else 0) for d in tune_dirs], jobs)
    return online_margin_for(np.concatenate(parts),
                             float(cfg["scoring"].get("online_target_fpr", 0.002)))


def fit_tune(tune_dirs: Sequence[Path], cfg: Config, baselines: Sequence[str] = (),
             progress: Progress | None = None, fit_weights: bool = True,
             jobs: int = 1, online: bool = True) -> Fitted:
    """Fit our evidence weights and calibration, and the baselines, on the tune worlds.

    Each tune world runs the pipeline up to linking; the evidence weights are fitted on the
    labelled accounts of all tune worlds (:func:`distillguard.scoring.fit.fit_detector`) and
    the calibration on their legitimate accounts at those weights. With ``fit_weights``
    False only the calibration is fitted (the config's weights stay). With ``online`` every
    tune world is then replayed through the online scorer at those weights to fit the
    online margin (``scoring.online_margin``). Baselines fit on the pooled legitimate
    requests.
    """
    from distillguard.bench.run import make_baseline
    from distillguard.scoring import Calibrator
    from distillguard.scoring.evidence import item_weight
    from distillguard.scoring.fit import (
        FittedWeights,
        fit_detector,
        overlay,
        raw_scores,
        with_overlay,
    )

    say = progress.done if progress else (lambda *a, **k: None)
    parts = map_worlds(_tune_job, [(Path(d), cfg, bool(baselines), 1 if jobs > 1 else 0)
                                   for d in tune_dirs], jobs)
    designs = [p[0] for p in parts]
    labels_l = [p[1] for p in parts]
    req_frames = [p[2] for p in parts if p[2] is not None]
    names = [Path(d).name for d in tune_dirs]
    for n, p in zip(names, parts, strict=True):
        say(f"tune {n}", p[3])
    target = float(cfg["scoring"]["target_fpr"])
    if fit_weights:
        fw, cal = fit_detector(designs, labels_l, cfg)
        over = overlay(fw, cal, f"tune worlds {', '.join(names)}")
    else:
        w = {it["name"]: item_weight(cfg, it) for it in cfg["scoring"]["evidence"]}
        fw = FittedWeights(w, 0.0, 0, 0, 0.0)
        ben = [raw_scores(dz, w).join(lab.filter(pl.col("label") != "distill")
                                       .select("account_id"), on="account_id")["final_raw"]
               .to_numpy() for dz, lab in zip(designs, labels_l, strict=True)]
        cal = Calibrator(target).fit(np.concatenate(ben))
        over = overlay(fw, cal, f"tune worlds {', '.join(names)} (calibration only)")
    if online:
        # at the weights and calibration just fitted, as the report worlds will be scored
        t0 = time.perf_counter()
        over["scoring"]["online_margin"] = fit_online_margin(
            tune_dirs, with_overlay(cfg, over), jobs=jobs)
        say("online margin (tune replays)", time.perf_counter() - t0)
    fitted = Fitted(names, {**cal.params(), "n_benign": cal.n_benign_, "target_fpr": target},
                    over)
    if baselines:
        from distillguard.bench.run import _with_embeddings

        fit_req = _with_embeddings([pl.concat(req_frames)])[0]
        for name in baselines:
            det = make_baseline(name, target).fit(fit_req)
            fitted.baselines[name] = det
            fitted.baseline_params[name] = _baseline_params(det)
    return fitted


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


def community_summary(con: Any, labels: pl.DataFrame) -> dict[str, Any]:
    """Sizes of the link communities and the label mix of the largest one."""
    comm = con.sql("SELECT account_id, community FROM communities WHERE community >= 0").pl()
    if comm.is_empty():
        return {"n_communities": 0, "largest": 0, "largest_mix": {}, "sizes_p50": None,
                "sizes_p90": None, "sizes_max": 0}
    lab = labels.select("account_id", pl.when(pl.col("label") == "distill")
                        .then(pl.col("campaign_id")).otherwise(pl.col("kind")).alias("who"))
    sizes = comm.group_by("community").len()
    big = sizes.sort(["len", "community"], descending=[True, False])["community"][0]
    mix = (comm.filter(pl.col("community") == big).join(lab, on="account_id", how="left")
           .group_by("who").len().sort("len", descending=True))
    s = sizes["len"].to_numpy()
    return {"n_communities": int(sizes.height), "largest": int(s.max()),
            "largest_mix": {str(r["who"]): int(r["len"]) for r in mix.head(8).iter_rows(named=True)},
            "sizes_p50": float(np.median(s)), "sizes_p90": float(np.quantile(s, 0.9)),
            "sizes_max": int(s.max())}


def reported_purity(labels: pl.DataFrame, accounts: pl.DataFrame) -> list[dict[str, Any]]:
    """Per reported campaign: size and the share of its accounts from its majority true
    campaign (legitimate accounts count as foreign)."""
    if "campaign_id" not in accounts.columns:
        return []
    rep = accounts.filter(pl.col("campaign_id").is_not_null() & (pl.col("campaign_id") != ""))
    if rep.is_empty():
        return []
    df = rep.select("account_id", pl.col("campaign_id").alias("pred")).join(
        labels.select("account_id", "label", pl.col("campaign_id").alias("true")),
        on="account_id", how="left")
    df = df.with_columns(pl.when(pl.col("label") == "distill").then(pl.col("true"))
                         .otherwise(pl.lit("\x00benign")).alias("true"))
    out = []
    for (pred,), g in df.group_by("pred"):
        counts = g.group_by("true").len().sort("len", descending=True)
        top, n_top = counts["true"][0], int(counts["len"][0])
        out.append({"campaign": pred, "n_accounts": g.height,
                    "purity": n_top / g.height if top != "\x00benign" else 0.0,
                    "majority": None if top == "\x00benign" else top,
                    "n_benign": int(g.filter(pl.col("true") == "\x00benign").height)})
    return sorted(out, key=lambda r: -r["n_accounts"])


def _online_by_kind(alerts_path: Path, labels: pl.DataFrame, threshold: float) -> list[dict]:
    """Legitimate accounts that crossed the flag threshold at any point of the replay."""
    import orjson

    hit: set[str] = set()
    if alerts_path.exists():
        with alerts_path.open("rb") as fh:
            for line in fh:
                a = orjson.loads(line)
                if a["score"] >= threshold:
                    hit.add(a["account_id"])
    ben = labels.filter(pl.col("label") != "distill")
    ben = ben.with_columns(pl.col("account_id").is_in(list(hit)).alias("alerted"))
    return (ben.group_by("kind").agg(pl.len().alias("n"), pl.col("alerted").sum().alias("n_alerted"))
            .with_columns((pl.col("n_alerted") / pl.col("n")).alias("share")).sort("kind")
            .to_dicts())


def run_report_world(spec: Any, out: Path, corpora: dict[str, Any], fitted: Fitted,
                     cfg: Config, *, replay: bool = True) -> dict[str, Any]:
    """Simulate one report world, run every detector on it, return its figures."""
    from distillguard.api import analyse
    from distillguard.bench.metrics import evaluate
    from distillguard.bench.run import _with_embeddings, requests_frame
    from distillguard.scoring import calibration_used, score_accounts
    from distillguard.scoring.fit import with_overlay
    from distillguard.store import scalar

    out.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    logs, labels = _simulate(spec, out / "traffic", corpora)
    secs["simulate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    con = _store(logs, cfg)
    # The tune-fitted weights and calibration are the prior; the threshold self-calibrates
    # on this world's (unlabelled) traffic, as `distillguard detect` does.
    fcfg = with_overlay(cfg, fitted.overlay)
    scores, campaigns = analyse(con, fcfg)
    secs["detect"] = time.perf_counter() - t0
    calib = calibration_used(con)
    n_requests = scalar(con, "SELECT count(*) FROM requests")
    runs: dict[str, pl.DataFrame] = {
        "distillguard": scores.select("account_id", "score", "flagged", "campaign_id")}
    shipped, _ = score_accounts(con, cfg, None)
    runs["as-shipped"] = shipped.select("account_id", "score", "flagged", "campaign_id")
    calib_shipped = calibration_used(con)
    comm = community_summary(con, labels)
    if fitted.baselines:
        t0 = time.perf_counter()
        req = _with_embeddings([requests_frame(con)])[0]
        for name, det in fitted.baselines.items():
            runs[name] = det.predict(req).select("account_id", "score", "flagged")
        secs["baselines"] = time.perf_counter() - t0
    con.close()
    scores.join(labels, on="account_id", how="left").write_csv(out / "accounts_scored.csv")

    detectors = {}
    for name, acc in runs.items():
        m = evaluate(labels, acc)
        m["reported_campaigns"] = reported_purity(labels, acc)
        detectors[name] = m
    ttd = None
    if replay:
        from distillguard.bench.ttd import time_to_detect

        t0 = time.perf_counter()
        ttd = time_to_detect(logs, labels, out / "replay", config=fcfg)
        ttd["online_by_kind"] = _online_by_kind(out / "replay" / "alerts.jsonl", labels,
                                                float(cfg["scoring"]["threshold"]))
        secs["replay"] = time.perf_counter() - t0
    spec_json = spec.to_json() if hasattr(spec, "to_json") else dict(spec)
    res = {"world_id": spec_json.get("world_id"), "spec": spec_json,
           "n_requests": int(n_requests), "n_accounts": labels.height,
           "target_fpr": fitted.calibration["target_fpr"], "communities": comm,
           "calibration": {"distillguard": calib, "as-shipped": calib_shipped},
           "detectors": detectors, "time_to_detect": ttd,
           "seconds": {k: round(v, 2) for k, v in secs.items()}}
    (out / "world_result.json").write_text(json.dumps(res, indent=2, default=str))
    return res


def _report_job(args: tuple) -> dict[str, Any]:
    spec, out, corpora, fitted, cfg, replay, threads = args
    if threads:
        os.environ["DISTILLGUARD_THREADS"] = str(threads)
    return run_report_world(spec, out, corpora, fitted, cfg, replay=replay)


# ---------------------------------------------------------------------------------------
# aggregate, tables, plots
# ---------------------------------------------------------------------------------------


def _fin(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def world_row(res: dict[str, Any], name: str) -> dict[str, Any]:
    """One flat row of figures for one detector on one world."""
    m = res["detectors"][name]
    r = m["recall_at_fpr"]
    legit_kinds = [k for k in m["fpr_by_kind"] if k["n"]]
    worst = max(legit_kinds, key=lambda k: (k["fpr"] or 0.0), default=None)
    camps = m["campaigns"]
    rep = m.get("reported_campaigns") or []
    row: dict[str, Any] = {
        "world_id": res["world_id"], "detector": name, "n_accounts": res["n_accounts"],
        "n_requests": res["n_requests"], "n_campaigns": m["n_campaigns"],
        "pr_auc": _fin(m["pr_auc"]),
        "recall_at_0.1%": _fin(r["0.001"]["recall"]), "recall_at_1%": _fin(r["0.01"]["recall"]),
        "flag_precision": _fin(m["flagged"]["precision"]),
        "flag_recall": _fin(m["flagged"]["recall"]),
        "flag_fpr": _fin(m["flagged"]["fpr"]),
        "promised_fpr": res["target_fpr"] if name in OURS else None,
        "estimated_fpr": (res.get("calibration", {}).get(name) or {}).get("estimated_fpr")
        if name in OURS else None,
        "worst_kind": worst["kind"] if worst else None,
        "worst_kind_fpr": _fin(worst["fpr"]) if worst else None,
        "campaigns_recovered": sum(1 for c in camps if (c["flagged_share"] or 0) >= 0.9),
        "campaigns_recovered_share": (sum(1 for c in camps if (c["flagged_share"] or 0) >= 0.9)
                                      / len(camps)) if camps else None,
        "recovered_as_one": sum(1 for c in camps if c["recovered_as_one"]),
        "ari": _fin(m["campaign_ari"]),
        "n_reported_campaigns": len(rep),
        "min_reported_purity": min((c["purity"] for c in rep), default=None),
    }
    if name == "distillguard":
        row["largest_community"] = res["communities"]["largest"]
        ttd = res.get("time_to_detect")
        if ttd:
            shares = [c["share_served_before"] for c in ttd["online"]]
            row["ttd_worst_share"] = max(shares) if shares else None
            row["ttd_mean_share"] = float(np.mean(shares)) if shares else None
            kinds = [k for k in ttd["online_by_kind"] if k["n"]]
            row["online_alerted_legit"] = sum(k["n_alerted"] for k in kinds)
            row["online_worst_kind_share"] = max((k["share"] for k in kinds), default=None)
    return row


#: metric -> (direction of "worse", shown name); aggregated as mean, 10th percentile, worst.
AGG_METRICS = {
    "pr_auc": ("low", "PR-AUC"),
    "recall_at_0.1%": ("low", "recall at 0.1% FPR"),
    "recall_at_1%": ("low", "recall at 1% FPR"),
    "flag_precision": ("low", "flagged precision"),
    "flag_fpr": ("high", "flagged FPR"),
    "worst_kind_fpr": ("high", "worst legitimate kind's FPR"),
    "campaigns_recovered_share": ("low", "campaigns recovered (>=90% flagged)"),
    "ari": ("low", "campaign ARI"),
    "min_reported_purity": ("low", "lowest reported-campaign purity"),
    "largest_community": ("high", "largest community (accounts)"),
    "ttd_worst_share": ("high", "replay: worst share served before first alert"),
    "online_worst_kind_share": ("high", "replay: worst legitimate kind's share alerted"),
}


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """detector -> metric -> {mean, p10, worst, n} over report worlds (None values skipped).

    ``p10`` is the 10th percentile on the bad side (the 90th for metrics where high is bad).
    """
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for det in dict.fromkeys(r["detector"] for r in rows):
        rs = [r for r in rows if r["detector"] == det]
        out[det] = {}
        for key, (bad, _) in AGG_METRICS.items():
            vals = np.array([r[key] for r in rs if r.get(key) is not None], dtype=float)
            if not vals.size:
                continue
            q = 10 if bad == "low" else 90
            out[det][key] = {"mean": float(vals.mean()),
                             "p10": float(np.percentile(vals, q)),
                             "worst": float(vals.min() if bad == "low" else vals.max()),
                             "n": int(vals.size)}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The cross-world table (aggregates per detector) and the per-world table."""
    agg = result["aggregate"]
    dets = list(agg)

    def f(v: float | None) -> str:
        return "–" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}")

    lines = [f"{result['n_report']} report worlds ({result['n_tune']} tune worlds fitted "
             f"first), worlds seed {result['worlds_seed']}, size {result['size']}, config "
             f"{result['config_version']}; mean / 10th percentile / worst over report worlds:",
             "", "| metric | " + " | ".join(dets) + " |", "|---|" + "---:|" * len(dets)]
    for key, (_, label) in AGG_METRICS.items():
        cells = []
        for d in dets:
            a = agg[d].get(key)
            cells.append("–" if a is None else f"{f(a['mean'])} / {f(a['p10'])} / {f(a['worst'])}")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per report world (distillguard):", "",
              "| world | accounts | requests | campaigns | PR-AUC | recall@0.1% | recall@1% | "
              "flag prec | flag FPR | worst kind (FPR) | recovered | as one | ARI | largest comm. "
              "| replay worst share | online legit alerted |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if r["detector"] != "distillguard":
            continue
        lines.append(
            f"| {r['world_id']} | {r['n_accounts']:,} | {r['n_requests']:,} | {r['n_campaigns']} "
            f"| {f(r['pr_auc'])} | {f(r['recall_at_0.1%'])} | {f(r['recall_at_1%'])} | "
            f"{f(r['flag_precision'])} | {f(r['flag_fpr'])} | {r['worst_kind']} "
            f"({f(r['worst_kind_fpr'])}) | {r['campaigns_recovered']}/{r['n_campaigns']} | "
            f"{r['recovered_as_one']} | {f(r['ari'])} | {r.get('largest_community', '–')} | "
            f"{f(r.get('ttd_worst_share'))} | {r.get('online_alerted_legit', '–')} |")
    if result.get("archetypes"):
        lines += ["", "Per campaign archetype (distillguard, all report worlds):", "",
                  "| archetype | campaigns | accounts | mean flagged share | recovered "
                  "(>=90%) | mean purity |", "|---|---:|---:|---:|---:|---:|"]
        for a in result["archetypes"]:
            lines.append(f"| {a['archetype']} | {a['campaigns']} | {a['accounts']:,} | "
                         f"{f(a['mean_flagged_share'])} | {f(a['recovered_share'])} | "
                         f"{f(a['mean_purity'])} |")
    lines += ["", "FPR per legitimate kind (distillguard; max over report worlds, and worlds "
              "where the kind is present):", "", "| kind | worlds | accounts | max FPR | "
              "mean FPR | online alerted (max share) |", "|---|---:|---:|---:|---:|---:|"]
    for k in result["kinds"]:
        lines.append(f"| {k['kind']} | {k['worlds']} | {k['accounts']:,} | {f(k['max_fpr'])} | "
                     f"{f(k['mean_fpr'])} | {f(k.get('max_online_share'))} |")
    return "\n".join(lines) + "\n"


def kinds_table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[str, dict[str, Any]] = {}
    for res in results:
        online = {k["kind"]: k for k in (res.get("time_to_detect") or {}).get("online_by_kind", [])}
        for k in res["detectors"]["distillguard"]["fpr_by_kind"]:
            if not k["n"]:
                continue
            e = by.setdefault(k["kind"], {"kind": k["kind"], "worlds": 0, "accounts": 0,
                                          "fprs": [], "online": []})
            e["worlds"] += 1
            e["accounts"] += k["n"]
            e["fprs"].append(k["fpr"] or 0.0)
            if k["kind"] in online:
                e["online"].append(online[k["kind"]]["share"])
    out = []
    for e in sorted(by.values(), key=lambda e: e["kind"]):
        out.append({"kind": e["kind"], "worlds": e["worlds"], "accounts": e["accounts"],
                    "max_fpr": max(e["fprs"]), "mean_fpr": float(np.mean(e["fprs"])),
                    "max_online_share": max(e["online"]) if e["online"] else None})
    return out


def campaign_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (report world, campaign): its drawn tactic knobs and how it fared."""
    rows = []
    for res in results:
        knobs = res["spec"].get("campaigns", {})
        ttd = {c["campaign_id"]: c for c in (res.get("time_to_detect") or {}).get("online", [])}
        for c in res["detectors"]["distillguard"]["campaigns"]:
            row = {"world_id": res["world_id"], "campaign_id": c["campaign_id"],
                   "n_accounts": c["n_accounts"], "flagged_share": c["flagged_share"],
                   "purity": c["purity"], "recovered_as_one": c["recovered_as_one"],
                   "share_served_before_alert": ttd.get(c["campaign_id"], {}).get(
                       "share_served_before")}
            for k, v in (knobs.get(c["campaign_id"]) or {}).items():
                if isinstance(v, bool):
                    row[f"knob_{k}"] = float(v)
                elif isinstance(v, int | float):
                    row[f"knob_{k}"] = float(v)
                elif isinstance(v, str):
                    row[f"knob_{k}"] = v
            rows.append(row)
    return rows


def archetype_table(camp: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per campaign archetype (and, for imitators, the legitimate kind imitated): how many
    campaigns, their accounts, the mean share of accounts flagged, the share of campaigns
    recovered (>= 90% flagged) and the mean purity."""
    if not camp:
        return []
    df = pl.DataFrame(camp, infer_schema_length=None)
    if "knob_archetype" not in df.columns:
        return []
    name = pl.col("knob_archetype")
    if "knob_imitates" in df.columns:
        name = pl.when(pl.col("knob_imitates").fill_null("") != "").then(
            pl.col("knob_archetype") + " (as " + pl.col("knob_imitates") + ")").otherwise(name)
    if "knob_adaptive_level" in df.columns:
        name = pl.when(pl.col("knob_adaptive_level").fill_null(0) > 0).then(
            pl.lit("adaptive")).otherwise(name)
    agg = (df.with_columns(name.alias("archetype")).group_by("archetype")
           .agg(pl.len().alias("campaigns"), pl.col("n_accounts").sum().alias("accounts"),
                pl.col("flagged_share").mean().alias("mean_flagged_share"),
                (pl.col("flagged_share") >= 0.9).mean().alias("recovered_share"),
                pl.col("purity").mean().alias("mean_purity"))
           .sort("archetype"))
    return agg.to_dicts()


def _plots(out: Path, result: dict[str, Any], camp: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # promised vs measured FPR, per world and detector
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for det in OURS:
        rs = [r for r in result["rows"] if r["detector"] == det and r["flag_fpr"] is not None]
        ax.scatter([r["promised_fpr"] for r in rs], [r["flag_fpr"] for r in rs], label=det,
                   alpha=0.7)
    lim = max([r["flag_fpr"] or 0 for r in result["rows"]] + [0.004]) * 1.1
    ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="measured = promised")
    ax.plot([0, lim / 2], [0, lim], "r:", lw=0.8, label="2x promised")
    ax.set_xlabel("promised FPR (calibration target)")
    ax.set_ylabel("measured flagged FPR on the world")
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.legend(fontsize=8)
    ax.set_title("Promised vs measured false-positive rate per report world")
    fig.tight_layout()
    p = out / "fpr-promised-vs-measured.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    # flagged share per campaign against each numeric tactic knob
    knobs = sorted({k for r in camp for k, v in r.items()
                    if k.startswith("knob_") and isinstance(v, float)})
    if knobs:
        ncol = 4
        nrow = -(-len(knobs) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, knobs, strict=False):
            xs = [r[k] for r in camp if isinstance(r.get(k), float)]
            ys = [r["flagged_share"] for r in camp if isinstance(r.get(k), float)]
            ax.scatter(xs, ys, s=14, alpha=0.6)
            ax.set_title(k[5:], fontsize=9)
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
            if len(set(xs)) > 1 and min(xs) > 0 and max(xs) / min(xs) > 50:
                ax.set_xscale("log")
        for ax in list(axes.flat)[len(knobs):]:
            ax.axis("off")
        fig.suptitle("Share of each campaign's accounts flagged, against its tactic knobs "
                     "(distillguard, report worlds)", fontsize=10)
        fig.tight_layout()
        p = out / "recall-vs-knobs.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------


def bench_worlds(
    out_dir: str | Path,
    *,
    n_worlds: int = 16,
    worlds_seed: int = 0,
    report_seed: int | None = None,
    n_tune: int | None = None,
    size: str = "bench",
    legit: Any = None,
    distill: Any = None,
    timing: Any = None,
    baselines: Sequence[str] = (),
    replay: bool = True,
    jobs: int = 1,
    refit: bool = True,
    config: Config | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Draw, fit on tune worlds, report on the others; write tables, CSVs and plots.

    ``refit``: fit the evidence weights on the tune worlds too (else keep the config's
    weights, themselves fitted on other tune worlds, and fit only the calibration).

    ``report_seed`` (default ``worlds_seed``) seeds the report worlds alone, so the report set
    can change while the tune set, and therefore everything fitted, stays the same.
    """
    from distillguard.sim import draw_world

    cfg = config or load_config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress()
    n_tune = n_tune if n_tune is not None else max(1, n_worlds // 4)
    n_report = n_worlds - n_tune
    if n_tune < 1 or n_report < 1:
        raise ValueError("need at least one tune and one report world")
    corpora = {"legit_corpus": legit, "distill_corpus": distill, "timing": timing}
    t_start = time.perf_counter()

    tick = progress.stage("worlds", n_worlds)
    tune_dirs = simulate_tune_worlds(out, worlds_seed, n_tune, size, corpora)
    fitted = fit_tune(tune_dirs, cfg, baselines, fit_weights=refit, jobs=jobs)
    tick(n_tune)
    (out / "fitted.json").write_text(json.dumps(fitted.to_json(), indent=2, sort_keys=True,
                                                default=str))

    rseed = worlds_seed if report_seed is None else report_seed
    rep_specs = [draw_world(s, "report", size=size)
                 for s in world_seeds(rseed, "report", n_report)]
    jobs_args = [(spec, out / "report" / spec.world_id, corpora, fitted, cfg, replay,
                  1 if jobs > 1 else 0) for spec in rep_specs]
    results: list[dict[str, Any]] = []
    if jobs > 1:
        with world_pool(jobs) as ex:
            for res in ex.map(_report_job, jobs_args):
                results.append(res)
                tick(1)
    else:
        for a in jobs_args:
            results.append(_report_job(a))
            tick(1)

    rows = [world_row(res, d) for res in results for d in res["detectors"]]
    result = {
        "worlds_seed": worlds_seed, "report_seed": rseed, "size": size, "n_tune": n_tune,
        "n_report": n_report, "config_version": cfg.version, "fitted": fitted.to_json(),
        "aggregate": aggregate(rows), "rows": rows, "kinds": kinds_table(results),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    camp = campaign_rows(results)
    result["archetypes"] = archetype_table(camp)
    pl.DataFrame(rows, infer_schema_length=None).write_csv(out / "worlds.csv")
    if camp:
        pl.DataFrame(camp, infer_schema_length=None).write_csv(out / "campaigns.csv")
    result["plots"] = [str(p) for p in _plots(out, result, camp)]
    (out / "worlds.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "worlds.md").write_text(markdown(result))
    return result


def _lowo_job(args: tuple) -> dict[str, Any]:
    """Score one held-out tune world with what the other tune worlds fitted: the whole
    world, then each of ``windows`` (hours from its first request) alone."""
    from distillguard.api import analyse
    from distillguard.bench.metrics import evaluate
    from distillguard.scoring import calibration_used
    from distillguard.scoring.fit import with_overlay

    d, over, cfg, threads, windows, dump, replay = args
    if threads:
        os.environ["DISTILLGUARD_THREADS"] = str(threads)
    labels = pl.read_csv(d / "labels.csv", infer_schema_length=0)
    cfg = with_overlay(cfg, over)
    logs = sorted((d / "logs").glob("requests-*.jsonl.gz"))
    con = _store(logs, cfg)
    try:
        scores, _ = analyse(con, cfg)
        calib = calibration_used(con)
        comm = community_summary(con, labels)
        if dump is not None:
            _dump_scores(con, cfg, scores, labels, dump / f"{d.name}.parquet")
        t0 = con.execute("SELECT epoch(min(ts)) FROM requests").fetchall()[0][0]
        part = [_window_row(con, cfg, labels, t0, h) for h in windows]
        camp_t = (_campaign_times(con, labels) if replay else None)
    finally:
        con.close()
    online = _replay_excess(logs, labels, cfg, camp_t) if replay else None
    m = evaluate(labels, scores.select("account_id", "score", "flagged", "campaign_id"))
    spec = json.loads((d / "world.json").read_text())
    return {"world_id": d.name, "fitted_on": over["scoring"]["calibration"]["fitted_on"],
            "n_accounts": m["n_accounts"], "n_distill": m["n_distill"],
            "n_campaigns": m["n_campaigns"], "n_recovered": m["n_campaigns_recovered"],
            # shaped as a report job's result so campaign_rows reads both
            "spec": {"campaigns": spec.get("campaigns", {})},
            "detectors": {"distillguard": {"campaigns": m["campaigns"]}},
            "pr_auc": m["pr_auc"], "recall_at_0.1%": m["recall_at_fpr"]["0.001"]["recall"],
            "recall_at_1%": m["recall_at_fpr"]["0.01"]["recall"],
            "tp": m["flagged"]["tp"], "fp": m["flagged"]["fp"], "ari": m["campaign_ari"],
            "fp_by_kind": _flagged_kinds(m["fpr_by_kind"]), "windows": part,
            "n_legit": m["n_accounts"] - m["n_distill"],
            "flagged_fpr": m["flagged"]["fp"] / max(m["n_accounts"] - m["n_distill"], 1),
            "calibration": calib,
            # a giant community mixing campaigns and legitimate users shows here first
            "largest_community": comm["largest"], "largest_mix": comm["largest_mix"],
            "min_reported_purity": min((c["purity"] for c in reported_purity(
                labels, scores.select("account_id", "campaign_id"))), default=None),
            "online": online}


def _campaign_times(con: Any, labels: pl.DataFrame) -> dict[str, np.ndarray]:
    """campaign id -> its requests' times (epoch s), sorted (the requests time-to-detect
    counts, ``bench.ttd``)."""
    from distillguard.bench.ttd import _campaign_requests

    df = _campaign_requests(con, labels)
    return {str(c): np.sort(g["t"].to_numpy()) for (c,), g in df.group_by("campaign_id")}


def _replay_excess(logs: list[Path], labels: pl.DataFrame, cfg: Config,
                   camp_t: dict[str, np.ndarray]) -> dict[str, Any]:
    """Replay a held-out world through the online scorer at its fold's weights and no
    margin (with the batch refreshes a report world's replay has), and keep what any
    margin's outcome can be read from: each legitimate account's peak excess with its kind,
    and per campaign the running maximum of its accounts' excess at each new high with the
    share of its requests served before that moment (``respond.online.replay``,
    ``excess_records``)."""
    peaks, rec = _replay_no_margin(logs, labels, cfg, records=True)
    lab = labels.filter(pl.col("label") == "distill").select("account_id", "campaign_id")
    curves = {}
    for (cid,), g in rec.join(lab, on="account_id").sort("ts").group_by(
            "campaign_id", maintain_order=True):
        t = camp_t[str(cid)]        # a campaign account with a record sent a request
        curves[str(cid)] = {"excess": np.maximum.accumulate(g["excess"].to_numpy()).tolist(),
                            "share_before": (np.searchsorted(t, g["ts"].to_numpy(), "left")
                                             / len(t)).tolist()}
    for cid in camp_t:
        curves.setdefault(str(cid), {"excess": [], "share_before": []})
    return {"peaks": peaks["peak_excess"].to_list(), "kinds": peaks["kind"].to_list(),
            "campaigns": curves}


def online_at_margin(online: dict[str, Any], margin: float) -> dict[str, Any]:
    """What a held-out world's replay (:func:`_replay_excess`) gives at an online margin:
    legitimate accounts ever alerted (by kind), and per campaign the share of its requests
    served before its first alert (1.0 when never alerted)."""
    kinds: dict[str, int] = {}
    for p, k in zip(online["peaks"], online["kinds"], strict=True):
        if p >= margin:
            kinds[k] = kinds.get(k, 0) + 1
    shares = []
    for c in online["campaigns"].values():
        ex = np.asarray(c["excess"])
        hit = np.flatnonzero(ex >= margin)
        shares.append(float(c["share_before"][hit[0]]) if hit.size else 1.0)
    return {"legit_alerted": sum(kinds.values()), "legit_alerted_by_kind": _sum_kinds(kinds),
            "n_campaigns": len(shares), "campaigns_alerted": sum(x < 1.0 for x in shares),
            "campaigns_before_5%": sum(x < 0.05 for x in shares),
            "worst_share_before": max(shares) if shares else None}


def _dump_scores(con: Any, cfg: Config, scores: pl.DataFrame, labels: pl.DataFrame,
                 path: Path) -> None:
    """Every account of a held-out world: its score, reasons, label and kind, each evidence
    item's weighted contribution (``ev_<item>``), and the scoring input (its features, link
    community and the community's ``groups`` row), to see which evidence put a legitimate
    account over the threshold."""
    from distillguard.scoring.evidence import evidence_frame

    inp = con.sql("SELECT * FROM _score_in").pl()       # left by this run's scoring
    ev = evidence_frame(con, cfg, "_score_in").drop("raw", "final_raw")
    lab = labels.select("account_id", "label", "kind",
                        pl.col("campaign_id").alias("true_campaign"))
    out = (scores.join(lab, on="account_id", how="left")
           .join(ev, on="account_id", how="left")
           .join(inp, on="account_id", how="left", suffix="_in"))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.write_parquet(path)


def _flagged_kinds(per_kind: list[dict[str, Any]]) -> dict[str, int]:
    """kind -> legitimate accounts flagged, from an ``fpr_by_kind`` table (bench.metrics)."""
    return _sum_kinds({r["kind"]: int(r["n_flagged"]) for r in per_kind if r["n_flagged"]})


def _sum_kinds(*counts: dict[str, int]) -> dict[str, int]:
    """kind -> count summed over ``counts``, most first, then by kind."""
    tot: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            tot[k] = tot.get(k, 0) + v
    return dict(sorted(tot.items(), key=lambda kv: (-kv[1], kv[0])))


def _window_row(con: Any, cfg: Config, labels: pl.DataFrame, t0: float,
                hours: float) -> dict[str, Any]:
    """A batch run over the first ``hours`` of a world's traffic (from ``t0``, its first
    request, epoch s), as a deployment running detection before the week is over sees it:
    accounts seen, legitimate ones flagged (by kind) and the share of the campaigns'
    accounts seen so far that are flagged."""
    from distillguard.api import analyse
    from distillguard.bench.metrics import fpr_by_kind
    from distillguard.store import connect

    part = con.sql(f"SELECT * FROM requests WHERE epoch(ts) < {t0 + hours * 3600.0!r}"
                   ).to_arrow_table()
    w = connect(None)
    try:
        w.register("_dg_part", part)
        w.execute("INSERT INTO requests SELECT * FROM _dg_part")
        w.unregister("_dg_part")
        scores, _ = analyse(w, cfg)
    finally:
        w.close()
    j = scores.select("account_id", "flagged").join(labels, on="account_id")
    legit = j.filter(pl.col("label") != "distill")
    dist = j.filter(pl.col("label") == "distill")
    kinds = fpr_by_kind(j["kind"].to_numpy(), j["label"].to_numpy(), j["flagged"].to_numpy())
    return {"hours": hours, "n_legit": legit.height, "n_distill": dist.height,
            "fp": int(legit["flagged"].sum()), "tp": int(dist["flagged"].sum()),
            "fp_by_kind": _flagged_kinds(kinds.to_dicts())}


def lowo_worlds(out_dir: str | Path, *, n_worlds: int = 16, worlds_seed: int = 0,
                n_tune: int | None = None, size: str = "bench", legit: Any = None,
                distill: Any = None, timing: Any = None, jobs: int = 1,
                windows: Sequence[float] = (), config: Config | None = None,
                progress: Progress | None = None, dump_scores: bool = False,
                replay: bool = False) -> dict[str, Any]:
    """Leave one tune world out: for each of the bench's tune worlds, fit the evidence
    weights and calibration on the *other* tune worlds (as :func:`fit_tune`, without the
    online margin) and score the held-out one as a report world is scored.

    ``replay``: also replay each held-out world through the online scorer at its fold's
    weights, fit the online margin on the *other* worlds' replays (each at its own fold's
    weights, ``scoring.online_target_fpr``, as :func:`fit_online_margin` does on the tune
    worlds) and report at that margin the legitimate accounts ever alerted, by kind, and
    the campaigns alerted and alerted before 5% of their requests (summary ``online``).

    ``windows`` (hours): also score each held-out world's first that many hours alone, as a
    deployment running detection daily sees the week; the summary's ``windows`` pools the
    legitimate accounts flagged and the campaign accounts flagged per window.

    The figures a change can be chosen on without looking at a report world: the same tune
    worlds as ``bench_worlds(n_worlds, worlds_seed)``, nothing of the report side. Writes
    ``lowo.json``; returns the per-world rows and their pooled summary. ``dump_scores``:
    also ``scores/<world>.parquet``, every account of each held-out world with its score,
    reasons, label, kind, evidence contributions and scoring input (:func:`_dump_scores`).
    """
    from distillguard.scoring.fit import fit_detector, overlay

    cfg = config or load_config()
    out = Path(out_dir)
    n_tune = n_tune if n_tune is not None else max(1, n_worlds // 4)
    if n_tune < 2:
        raise ValueError("leaving one tune world out needs at least two tune worlds")
    corpora = {"legit_corpus": legit, "distill_corpus": distill, "timing": timing}
    t_start = time.perf_counter()
    tick = (progress or Progress()).stage("tune worlds, then each held out", 2 * n_tune)
    dirs = simulate_tune_worlds(out, worlds_seed, n_tune, size, corpora)
    threads = 1 if jobs > 1 else 0
    parts = map_worlds(_tune_job, [(d, cfg, False, threads) for d in dirs], jobs)
    tick(n_tune)
    held = []
    for i, d in enumerate(dirs):
        rest = [k for k in range(n_tune) if k != i]
        fw, cal = fit_detector([parts[k][0] for k in rest], [parts[k][1] for k in rest], cfg)
        names = ", ".join(dirs[k].name for k in rest)
        held.append((d, overlay(fw, cal, f"tune worlds {names} (held out: {d.name})"), cfg,
                     threads, tuple(float(h) for h in windows),
                     out / "scores" if dump_scores else None, replay))
    rows = map_worlds(_lowo_job, held, jobs)
    tick(n_tune)
    online = _lowo_online(rows, float(cfg["scoring"].get("online_target_fpr", 0.002))
                          ) if replay else None

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if _fin(r[key]) is not None]
        return float(np.mean(vals)) if vals else None

    camp = campaign_rows(rows)
    n_camp = sum(r["n_campaigns"] for r in rows)
    pooled = []
    for i, h in enumerate(windows):
        ws = [r["windows"][i] for r in rows]
        n_l, n_d = sum(w["n_legit"] for w in ws), sum(w["n_distill"] for w in ws)
        fp_n, tp_n = sum(w["fp"] for w in ws), sum(w["tp"] for w in ws)
        pooled.append({"hours": float(h), "n_legit": n_l, "fp": fp_n,
                       "fpr": fp_n / n_l if n_l else None, "n_distill": n_d, "tp": tp_n,
                       "recall": tp_n / n_d if n_d else None,
                       "fp_by_kind": _sum_kinds(*(w["fp_by_kind"] for w in ws))})
    summary = {"recall_at_0.1%": mean("recall_at_0.1%"), "recall_at_1%": mean("recall_at_1%"),
               "pr_auc": mean("pr_auc"), "ari": mean("ari"),
               "recovered": sum(r["n_recovered"] for r in rows) / n_camp if n_camp else None,
               "windows": pooled,
               "tp": sum(r["tp"] for r in rows), "fp": sum(r["fp"] for r in rows),
               # flagged FPR against the promised target: pooled and in the worst world
               "flagged_fpr": (sum(r["fp"] for r in rows)
                               / max(sum(r["n_legit"] for r in rows), 1)),
               "flagged_fpr_worst": max(r["flagged_fpr"] for r in rows),
               "fp_by_kind": _sum_kinds(*(r["fp_by_kind"] for r in rows)),
               "online": online}
    for r in rows:
        del r["spec"], r["detectors"]
        r.pop("online", None)
    result = {"worlds_seed": worlds_seed, "size": size, "n_tune": n_tune,
              "config_version": cfg.version, "rows": rows, "summary": summary,
              "archetypes": archetype_table(camp),
              "seconds": round(time.perf_counter() - t_start, 1)}
    out.mkdir(parents=True, exist_ok=True)
    if camp:
        pl.DataFrame(camp, infer_schema_length=None).write_csv(out / "campaigns.csv")
    (out / "lowo.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _lowo_online(rows: list[dict[str, Any]], target_fpr: float) -> dict[str, Any]:
    """Each held-out world's replay at the margin the other worlds' replays fit; pooled."""
    from distillguard.scoring.fit import online_margin_for

    per = []
    for i, r in enumerate(rows):
        others = [p for k, o in enumerate(rows) if k != i for p in o["online"]["peaks"]]
        margin = online_margin_for(others, target_fpr)
        per.append({"world_id": r["world_id"], "margin": margin,
                    **online_at_margin(r["online"], margin)})
    return {"legit_alerted": sum(p["legit_alerted"] for p in per),
            "n_legit": sum(len(r["online"]["peaks"]) for r in rows),
            "legit_alerted_by_kind": _sum_kinds(*(p["legit_alerted_by_kind"] for p in per)),
            "n_campaigns": sum(p["n_campaigns"] for p in per),
            "campaigns_alerted": sum(p["campaigns_alerted"] for p in per),
            "campaigns_before_5%": sum(p["campaigns_before_5%"] for p in per),
            "worlds": per}


def fit_worlds(out_dir: str | Path, *, n_worlds: int = 8, worlds_seed: int = 1,
               size: str = "bench", legit: Any = None, distill: Any = None, timing: Any = None,
               config: Config | None = None, progress: Progress | None = None, jobs: int = 2
               ) -> dict[str, Any]:
    """Draw ``n_worlds`` *tune* worlds, fit the evidence weights and calibration on them
    (:func:`fit_tune`) and return the config overlay; how the shipped weights are made."""
    from distillguard.sim import draw_world

    cfg = config or load_config()
    out = Path(out_dir)
    corpora = {"legit_corpus": legit, "distill_corpus": distill, "timing": timing}
    tick = (progress or Progress()).stage("worlds", n_worlds)
    dirs = []
    for s in world_seeds(worlds_seed, "tune", n_worlds):
        spec = draw_world(s, "tune", size=size)
        _simulate(spec, out / spec.world_id, corpora)
        dirs.append(out / spec.world_id)
        tick(1)
    fitted = fit_tune(dirs, cfg, jobs=jobs)
    over = fitted.overlay
    over["scoring"]["calibration"]["fitted_on"] = (
        f"{n_worlds} tune worlds (distillguard fit --worlds {n_worlds} --worlds-seed "
        f"{worlds_seed}, size {size}), config {cfg.version}")
    return over
