"""Public library API. The CLI and the benchmark call only these functions.

logs → store (ingest) → signals → features → links → scores → outputs
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from distillguard.config import Config, load_config
from distillguard.features import compute_features
from distillguard.ingest import IngestReport, ingest_files
from distillguard.linking import compute_links
from distillguard.scoring import Calibrator, score_accounts
from distillguard.scoring.campaigns import describe_campaigns
from distillguard.signals import compute_signals
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
            calibrator: Calibrator | None = None,
            timings: dict[str, float] | None = None) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Run signals → features → links → scores on what the store holds."""
    progress = progress or Progress()
    timings = timings if timings is not None else {}
    n = scalar(con, "SELECT count(*) FROM requests")
    with _timed(timings, "signals", progress):
        compute_signals(con, cfg, on_progress=progress.stage("signals", n))
    with _timed(timings, "features", progress):
        compute_features(con, cfg)
    with _timed(timings, "linking", progress):
        compute_links(con, cfg)
    with _timed(timings, "scoring", progress):
        scores, flagged = score_accounts(con, cfg, calibrator)
        campaigns = describe_campaigns(con, cfg, flagged, scores)
    return scores, campaigns


def write_outputs(con: duckdb.DuckDBPyConnection, out_dir: Path, scores: pl.DataFrame,
                  campaigns: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """accounts.csv, campaigns.json and report.html into ``out_dir``."""
    from distillguard.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "accounts.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["account_id", "score", "flagged", "campaign_id", "reasons"])
        for r in scores.iter_rows(named=True):
            w.writerow([r["account_id"], f"{r['score']:.6f}", "true" if r["flagged"] else "false",
                        r["campaign_id"] or "", r["reasons"]])
    (out_dir / "campaigns.json").write_text(
        json.dumps(campaigns, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    write_report(out_dir / "report.html", con, campaigns, summary)


def detect(
    paths: Iterable[str | Path],
    out_dir: str | Path | None = "results",
    *,
    db: str | Path | None = "distillguard.duckdb",
    config: Config | str | Path | None = None,
    fmt: str | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    calibrator: Calibrator | None = None,
    summary_extra: dict[str, Any] | None = None,
) -> DetectResult:
    """Ingest ``paths`` into the store at ``db`` and run the whole detection pipeline.

    With ``out_dir`` set, writes accounts.csv, campaigns.json, report.html and (when rows
    were rejected) quarantine.jsonl there.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    progress = progress or Progress()
    timings: dict[str, float] = {}
    paths = [Path(p) for p in paths]
    out = Path(out_dir) if out_dir is not None else None
    t_start = time.perf_counter()
    con = connect(db)
    try:
        with _timed(timings, "ingest", progress):
            report = ingest_files(
                paths, con, limits=cfg["ingest"], fmt=fmt, strict=strict,
                quarantine_path=(out / "quarantine.jsonl") if out else None,
                on_progress=progress.stage("ingest", None))
        scores, campaigns = analyse(con, cfg, progress=progress, calibrator=calibrator,
                                    timings=timings)
        if out is not None:
            with _timed(timings, "outputs", progress):
                summary = {
                    "n_requests": scalar(con, "SELECT count(*) FROM requests"),
                    "n_accounts": scores.height,
                    "n_flagged": int(scores["flagged"].sum()),
                    "n_campaigns": len(campaigns),
                    "threshold": float(cfg["scoring"]["threshold"]),
                    "target_fpr": float(cfg["scoring"]["target_fpr"]),
                    "rows_quarantined": report.rows_bad,
                    "input_files": ", ".join(p.name for p in paths[:20]),
                    "config_version": cfg.version,
                    "run_seconds": round(time.perf_counter() - t_start, 1),
                    **(summary_extra or {}),
                }
                write_outputs(con, out, scores, campaigns, summary)
    finally:
        con.close()
    return DetectResult(scores, campaigns, out, report, timings, cfg.version)
