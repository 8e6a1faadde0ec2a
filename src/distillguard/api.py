"""Public library API. The CLI and the benchmark call only these functions.

logs → store (ingest) → signals → features → links → scores → outputs
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from distillguard.config import Config, load_config
from distillguard.features import compute_features
from distillguard.ingest import IngestReport, ingest_files
from distillguard.linking import LINK_KEYS, compute_links
from distillguard.scoring import Calibrator, score_accounts
from distillguard.scoring.campaigns import describe_campaigns
from distillguard.signals import compute_signals
from distillguard.signals.elicit_user import update_elicit_user
from distillguard.store import connect, scalar

STAGES = ("ingest", "signals", "features", "linking", "scoring", "outputs")


@dataclass
class DetectResult:
    """What a detection run produced, plus per-stage timings (seconds)."""

    accounts: pl.DataFrame
    campaigns: list[dict[str, Any]]
    out_dir: Path | None
    ingest: IngestReport | None
    timings: dict[str, float] = field(default_factory=dict)
    config_version: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)   # calibration_summary
    mode: str = "once"             # incremental | full (state kept) | once (nothing kept)
    features_recomputed: int = 0   # accounts whose features were aggregated

    @property
    def n_flagged(self) -> int:
        return int(self.accounts["flagged"].sum())


class Progress:
    """Hooks a UI can implement; the default does nothing (library use, tests)."""

    def stage(self, name: str, total: int | None = None) -> Callable[[int], None]:
        return lambda n: None

    def done(self, name: str, seconds: float, note: str = "") -> None:
        pass


@contextmanager
def _timed(timings: dict[str, float], name: str, progress: Progress) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    progress.done(name, timings[name])


def analyse(con: duckdb.DuckDBPyConnection, cfg: Config, *, progress: Progress | None = None,
            calibrator: Calibrator | None = None, intel_key: bytes | Sequence[bytes] | None = None,
            timings: dict[str, float] | None = None, incremental: bool = False,
            full: bool = False, info: dict[str, Any] | None = None,
            ) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Run signals → features → links → scores on what the store holds.

    ``incremental``: keep per-request signals and per-account features in the store and, on
    the next run, recompute them only for new requests and the accounts they change
    (``distillguard.incremental``; the results equal a full run's). ``full`` recomputes
    everything once (and keeps the state again). ``info`` gets ``mode`` (``incremental``,
    ``full`` or ``once``) and ``features_recomputed`` (accounts aggregated).
    """
    from distillguard import incremental as inc

    progress = progress or Progress()
    timings = timings if timings is not None else {}
    info = info if info is not None else {}
    if incremental:
        mode = inc.begin(con, cfg, full=full)
    else:
        inc.invalidate(con)
        mode = "once"
    info["mode"] = mode
    n = scalar(con, "SELECT count(*) FROM requests")
    with _timed(timings, "signals", progress):
        compute_signals(con, cfg, on_progress=progress.stage("signals", n), timings=timings)
    with _timed(timings, "features", progress):
        update_elicit_user(con, cfg)
        compute_features(con, cfg, intel_key, stats=info, incremental={
            "incremental": "update", "full": "build"}.get(mode))
    with _timed(timings, "linking", progress):
        compute_links(con, cfg, keys_table=LINK_KEYS)
    with _timed(timings, "scoring", progress):
        scores, flagged = score_accounts(con, cfg, calibrator)
        campaigns = describe_campaigns(con, cfg, flagged, scores, keys_table=LINK_KEYS)
    con.execute(f"DROP TABLE IF EXISTS {LINK_KEYS}")
    if incremental:
        inc.finish(con, cfg)
    return scores, campaigns


def calibration_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What the run's calibration promised and what it estimates (for the report)."""
    from distillguard.scoring import calibration_used

    c = calibration_used(con)
    est = c.get("estimated_fpr")
    return {"calibration": {"self": "self-calibrated on this traffic",
                            "given": "given (distillguard calibrate / fit)",
                            "prior": "as shipped (too few accounts to self-calibrate)"}
            .get(c["method"], c["method"]),
            "promised_fpr": c["promised_fpr"],
            "estimated_fpr": None if est is None or est != est else round(est, 5),
            "raw_threshold": c["raw_threshold"],
            "legit_shift": c["delta"]}


def write_outputs(con: duckdb.DuckDBPyConnection | None, out_dir: Path, scores: pl.DataFrame,
                  campaigns: list[dict[str, Any]], summary: dict[str, Any],
                  cfg: Config) -> None:
    """accounts.csv, campaigns.json and (given the full store) report.html, groups.parquet
    and calibration.json (the online scorer's batch context) into ``out_dir``."""
    from distillguard.outfiles import remove_stale, replacing
    from distillguard.report import write_report
    from distillguard.respond.online import CALIBRATION_FILE, GROUPS_FILE, write_batch_context

    out_dir.mkdir(parents=True, exist_ok=True)
    # each file is replaced whole (outfiles); a killed run's leftovers go first
    remove_stale(out_dir, ("accounts.csv", "campaigns.json", "report.html", GROUPS_FILE,
                           CALIBRATION_FILE))
    with replacing(out_dir / "accounts.csv") as tmp, \
            tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["account_id", "score", "flagged", "campaign_id", "reasons"])
        for r in scores.iter_rows(named=True):
            w.writerow([r["account_id"], f"{r['score']:.6f}", "true" if r["flagged"] else "false",
                        r["campaign_id"] or "", r["reasons"]])
    with replacing(out_dir / "campaigns.json") as tmp:
        tmp.write_text(json.dumps(campaigns, indent=2, ensure_ascii=False, default=str),
                       encoding="utf-8")
    if con is not None:
        write_report(out_dir / "report.html", con, campaigns, summary)
        write_batch_context(con, out_dir, cfg)


#: ``detect``'s default store: ``store.duckdb`` in the output folder.
STORE_IN_OUT = "<out_dir>/store.duckdb"


def detect(
    paths: Iterable[str | Path],
    out_dir: str | Path | None = "results",
    *,
    db: str | Path | None = STORE_IN_OUT,
    config: Config | str | Path | None = None,
    fmt: str | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    calibrator: Calibrator | None = None,
    summary_extra: dict[str, Any]
    | Callable[[pl.DataFrame, list[dict[str, Any]]], dict[str, Any]] | None = None,
    intel_key: bytes | Sequence[bytes] | None = None,
    incremental: bool | None = None,
    full: bool = False,
) -> DetectResult:
    """Ingest ``paths`` into the store at ``db`` and run the whole detection pipeline.

    With ``out_dir`` set, writes accounts.csv, campaigns.json, report.html and (when rows
    were rejected) quarantine.jsonl there.

    ``db``: the DuckDB store file; by default ``store.duckdb`` inside ``out_dir`` (in memory
    when ``out_dir`` is None), so results in one output folder cover the logs given for it
    (re-running adds only new requests); ``None`` for an in-memory store. The analysis covers
    everything the store holds, so pass the same ``db`` to accumulate logs over time.

    ``incremental`` (default: on for a store file): a re-run recomputes signals only for
    new requests and features only for the accounts they change, with the same results as
    a full run (docs/incremental.md); ``full=True`` recomputes everything this time.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    progress = progress or Progress()
    timings: dict[str, float] = {}
    paths = [Path(p) for p in paths]
    out = Path(out_dir) if out_dir is not None else None
    if db == STORE_IN_OUT:
        db = (out / "store.duckdb") if out is not None else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
    if incremental is None:
        incremental = db not in (None, ":memory:")
    t_start = time.perf_counter()
    info: dict[str, Any] = {}
    con = connect(db)
    try:
        with _timed(timings, "ingest", progress):
            report = ingest_files(
                paths, con, limits=cfg["ingest"], fmt=fmt, strict=strict,
                quarantine_path=(out / "quarantine.jsonl") if out else None,
                on_progress=progress.stage("ingest", None))
        scores, campaigns = analyse(con, cfg, progress=progress, calibrator=calibrator,
                                    timings=timings, intel_key=intel_key,
                                    incremental=incremental, full=full, info=info)
        if out is not None:
            with _timed(timings, "outputs", progress):
                extra = (summary_extra(scores, campaigns) if callable(summary_extra)
                         else summary_extra or {})
                summary = {
                    "n_requests": scalar(con, "SELECT count(*) FROM requests"),
                    "n_accounts": scores.height,
                    "n_flagged": int(scores["flagged"].sum()),
                    "n_campaigns": len(campaigns),
                    "threshold": float(cfg["scoring"]["threshold"]),
                    "target_fpr": float(cfg["scoring"]["target_fpr"]),
                    **calibration_summary(con),
                    "rows_quarantined": report.rows_bad,
                    "input_files": ", ".join(p.name for p in paths[:20]),
                    "config_version": cfg.version,
                    "run": info["mode"],
                    "run_seconds": round(time.perf_counter() - t_start, 1),
                    **extra,
                }
                write_outputs(con, out, scores, campaigns, summary, cfg)
        calib = calibration_summary(con)
    finally:
        con.close()
    return DetectResult(scores, campaigns, out, report, timings, cfg.version, calib,
                        info["mode"], int(info.get("features_recomputed", 0)))


def detect_spark(
    paths: Iterable[str | Path],
    out_dir: str | Path | None = "results",
    *,
    master: str | None = "local[2]",
    conf: dict[str, str] | None = None,
    config: Config | str | Path | None = None,
    progress: Progress | None = None,
    intel_key: bytes | None = None,
    db: str | Path | None = None,
) -> DetectResult:
    """The same detection on Apache Spark (see docs/spark.md); writes accounts.csv,
    campaigns.json, report.html and store.duckdb (the driver's store: every account's
    features, scores and links, the campaign members' requests and signals). Paths may be
    local files/directories or URIs the Spark session reads.

    ``intel_key`` matches imported partner indicators, read from the DuckDB store ``db``
    (where ``distillguard intel import`` put them; opened read-only, nothing else is read
    from it), as ``detect(..., db=..., intel_key=...)`` does.
    """
    from distillguard.engines.spark import run_spark, spark_session
    from distillguard.ingest.reader import expand_paths
    from distillguard.report import write_report

    cfg = config if isinstance(config, Config) else load_config(config)
    t_start = time.perf_counter()
    paths = list(paths)
    local = [Path(p) for p in paths if "://" not in str(p)]
    uris = [str(p) for p in paths if "://" in str(p)]
    targets = [str(p) for p in expand_paths(local)] + uris
    out = Path(out_dir) if out_dir is not None else None
    spark = spark_session(master, conf)
    try:
        run = run_spark(spark, targets, cfg, progress=progress, intel_key=intel_key,
                        partner_indicators=db if intel_key is not None else None,
                        report=out is not None)
    finally:
        spark.stop()
    try:
        if out is not None:
            t0 = time.perf_counter()
            scores, campaigns = run.scores, run.campaigns
            write_outputs(None, out, scores, campaigns, {}, cfg)
            summary = {
                "n_requests": run.report.n_requests,
                "n_accounts": scores.height,
                "n_flagged": int(scores["flagged"].sum()),
                "n_campaigns": len(campaigns),
                "threshold": float(cfg["scoring"]["threshold"]),
                "target_fpr": float(cfg["scoring"]["target_fpr"]),
                **calibration_summary(run.store),
                "input_files": ", ".join(Path(str(p)).name for p in paths[:20]),
                "config_version": cfg.version,
                "engine": "spark",
                "run_seconds": round(time.perf_counter() - t_start, 1),
            }
            write_report(out / "report.html", run.store, campaigns, summary,
                         aggregates=run.report)
            write_driver_store(run.store, out / "store.duckdb")
            run.timings["outputs"] = time.perf_counter() - t0 + run.timings.get(
                "report_aggregates", 0.0)
    finally:
        run.store.close()
    return DetectResult(run.scores, run.campaigns, out, None, run.timings, cfg.version)


def write_driver_store(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Write the Spark driver's in-memory store (features, edges, communities, groups,
    scores, and the campaign members' requests and signals) to ``path``, replacing what
    was there, so ``distillguard console --db`` and other readers open a Spark run's
    results the way they open the embedded engine's store."""
    from distillguard.outfiles import remove_stale, replacing

    remove_stale(path.parent, (path.name,))
    src = scalar(con, "SELECT current_database()")
    with replacing(path) as tmp:    # a reader never sees a half-written store
        con.execute("ATTACH '" + tmp.as_posix().replace("'", "''") + "' AS dg_out")
        try:
            con.execute(f'COPY FROM DATABASE "{src}" TO dg_out')
        finally:
            con.execute("DETACH dg_out")


@dataclass
class DemoResult:
    detect: DetectResult
    labels: pl.DataFrame
    planted: int
    caught: int
    false_positives: int
    benign: int
    campaigns_planted: int
    campaigns_recovered: int
    seconds: float


def demo(out_dir: str | Path = "demo-out", *, seed: int = 7, scenario: str = "demo",
         progress: Progress | None = None) -> DemoResult:
    """Simulate a mixed population from the bundled corpus, detect, and score the result."""
    from distillguard.bench.metrics import evaluate
    from distillguard.sim import simulate

    t0 = time.perf_counter()
    out = Path(out_dir)
    sim = simulate(out / "traffic", scenario=scenario, seed=seed)
    if progress:
        progress.done("simulate", time.perf_counter() - t0)
    labels = pl.read_csv(sim.labels, infer_schema_length=0)
    db = out / "distillguard.duckdb"
    db.unlink(missing_ok=True)
    Path(str(db) + ".wal").unlink(missing_ok=True)
    m: dict[str, Any] = {}

    def ground_truth(scores: pl.DataFrame, campaigns: list[dict[str, Any]]) -> dict[str, Any]:
        # The report shows the demo's ground-truth figures, known once scores exist.
        m.update(evaluate(labels, scores.select("account_id", "score", "flagged",
                                                "campaign_id")))
        f = m["flagged"]
        return {"planted_accounts_caught": f"{f['tp']} of {m['n_distill']}",
                "false_positives": f"{f['fp']} of {m['n_benign']} legitimate accounts",
                "planted_campaigns_recovered":
                    f"{m['n_campaigns_recovered']} of {m['n_campaigns']}"}

    res = detect(sim.logs, out / "results", db=db, progress=progress,
                 summary_extra=ground_truth)
    flagged = m["flagged"]
    return DemoResult(res, labels, planted=m["n_distill"], caught=flagged["tp"],
                      false_positives=flagged["fp"], benign=m["n_benign"],
                      campaigns_planted=m["n_campaigns"],
                      campaigns_recovered=m["n_campaigns_recovered"],
                      seconds=time.perf_counter() - t0)


def calibrate(paths: Iterable[str | Path], benign_accounts: Iterable[str] | None = None, *,
              config: Config | str | Path | None = None, db: str | Path | None = None,
              target_fpr: float | None = None) -> dict[str, Any]:
    """Fit the score calibration on traffic of known-benign accounts.

    ``benign_accounts`` lists the accounts known to be legitimate (e.g. long-standing,
    verified customers); all accounts in ``paths`` are used when it is None, which is right
    only for traffic known to be clean. Returns the ``scoring.calibration`` mapping to put in
    a config file.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    con = connect(db)
    try:
        ingest_files([Path(p) for p in paths], con, limits=cfg["ingest"])
        cal = calibrate_store(con, cfg, benign_accounts, target_fpr)
    finally:
        con.close()
    from distillguard.scoring.selfcal import benign_sketch

    return {**cal.params(), "n_benign": cal.n_benign_, "target_fpr": cal.target_fpr,
            "fitted_on": f"{cal.n_benign_} benign accounts, config {cfg.version}",
            "benign_sketch": benign_sketch(cal.benign_sorted_)}


def calibrate_store(con: duckdb.DuckDBPyConnection, cfg: Config,
                    benign_accounts: Iterable[str] | None = None,
                    target_fpr: float | None = None) -> Calibrator:
    """Run the pipeline on what the store holds; fit the calibrator on the benign accounts
    (all accounts when ``benign_accounts`` is None), on their scores after campaign lift."""
    scores, _ = analyse(con, cfg)
    if benign_accounts is not None:
        keep = pl.DataFrame({"account_id": list(benign_accounts)}, schema={"account_id": pl.Utf8})
        scores = scores.join(keep, on="account_id")
    fpr = float(target_fpr if target_fpr is not None else cfg["scoring"]["target_fpr"])
    return Calibrator(fpr).fit(scores["final_raw"].to_numpy())


def fit(paths: Iterable[str | Path], labels: pl.DataFrame, *,
        config: Config | str | Path | None = None, db: str | Path | None = None,
        online: bool = True) -> dict[str, Any]:
    """Fit the evidence weights and the calibration on labelled traffic.

    ``labels`` has ``account_id``, ``label`` (``distill`` for confirmed campaign accounts,
    anything else legitimate) and optionally ``campaign_id`` and ``kind`` (used to weigh
    campaigns and kinds of legitimate customer equally; missing: one kind, one campaign per
    account). Returns the config overlay (``scoring.weights`` and ``scoring.calibration``,
    and with ``online`` the ``scoring.online_margin`` from a replay of the same logs through
    the online scorer at the fitted weights) to pass as ``--config``.
    """
    import tempfile

    from distillguard.scoring.fit import (
        design_frame,
        fit_detector,
        online_margin_for,
        overlay,
        with_overlay,
    )

    cfg = config if isinstance(config, Config) else load_config(config)
    paths = [Path(p) for p in paths]
    lab = labels.with_columns(
        *[pl.lit(v).alias(c) for c, v in (("campaign_id", None), ("kind", "customer"))
          if c not in labels.columns])
    lab = lab.with_columns(pl.col("campaign_id").cast(pl.Utf8).fill_null(pl.col("account_id")),
                           pl.col("kind").cast(pl.Utf8).fill_null("customer"))
    con = connect(db)
    try:
        ingest_files(paths, con, limits=cfg["ingest"])
        analyse(con, cfg)
        design = design_frame(con, cfg)
    finally:
        con.close()
    fw, cal = fit_detector([design], [lab], cfg)
    over = overlay(fw, cal, f"{lab.height} labelled accounts ({fw.n_positive} distillation), "
                            f"config {cfg.version}")
    if online:
        from distillguard.respond.online import replay

        c0 = with_overlay(cfg, {**over, "scoring": {**over["scoring"], "online_margin": 0.0}})
        with tempfile.TemporaryDirectory(prefix="dg-fit-replay-") as tmp:
            # as a deployment runs it: batch context refreshed every 6 h of stream time
            replay(paths, tmp, config=c0, refresh_hours=6.0)
            acc = pl.read_csv(Path(tmp) / "online_accounts.csv",
                              columns=["account_id", "peak_excess"])
        legit = lab.filter(pl.col("label") != "distill").select("account_id")
        over["scoring"]["online_margin"] = online_margin_for(
            acc.join(legit, on="account_id")["peak_excess"].to_numpy(),
            float(cfg["scoring"].get("online_target_fpr", 0.002)))
    return over
