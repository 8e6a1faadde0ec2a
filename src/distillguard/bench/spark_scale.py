"""Spark scale measurement: the Spark engine on ``distillguard perf`` traffic, per stage.

>>> from distillguard.bench.spark_scale import spark_scale
>>> spark_scale(4e6, "spark-out")                                  # doctest: +SKIP

Generates the scaling benchmark's canonical Parquet (``bench.perf.generate``), ingests it once
with the DuckDB engine and exports the store's ``requests`` as store-schema Parquet: the input
a cluster would read (native Spark read, column pruning, nothing through Python), see
docs/spark.md. ``--input canonical`` instead hands Spark the canonical files, which are
normalised on the executors (the path for JSON Lines logs).

Then ``run_spark`` runs in local mode with the Spark UI on, and every Spark job is tagged with
the distillguard stage that started it (``setJobGroup`` in ``run_spark``). After the run the
Spark status REST API (``/api/v1/applications/<id>/jobs`` and ``/stages``) gives, per
distillguard stage: wall seconds, Spark jobs and stages, task time, input bytes, shuffle write
and read bytes, spill. The driver's peak RSS (this process) and the JVM's are sampled. Written
to ``spark-scale.json`` and ``spark-scale.md``; the figures in docs/spark.md come from here.

Run: ``python -m distillguard.bench.spark_scale spark-out --size 4e6``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from distillguard.bench.run import PeakRSS

#: Stages tagged by ``run_spark`` (job group ``distillguard:<stage>``); jobs started outside
#: them (reading the input, the driver's last collects) count as "other".
STAGES = ("signals", "features", "linking", "scoring")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and its descendants (the JVM and its Python workers), from
    Linux /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * page
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue      # the process ended between listing and reading
    return total


class _Peak(PeakRSS):
    """Peak RSS of this process (``peak``, the driver) and of its process tree (``tree``:
    the driver JVM and its Python workers), sampled every 0.25 s."""

    interval = 0.25      # the tree walk reads /proc for every JVM thread

    def __enter__(self) -> _Peak:
        self.tree = 0
        super().__enter__()
        return self

    def _sample(self) -> None:
        super()._sample()
        self.tree = max(self.tree, _tree_rss(os.getpid()))


def stage_metrics(ui: str, app_id: str) -> dict[str, dict[str, float]]:
    """Per distillguard stage: Spark jobs, stages, task seconds, input, shuffle and spill bytes.

    From the status REST API of the live application (the UI's data; ``spark.ui.retained*``
    must hold every job and stage of the run).
    """
    base = f"{ui}/api/v1/applications/{app_id}"
    with httpx.Client(timeout=60) as c:
        jobs = c.get(f"{base}/jobs").raise_for_status().json()
        stages = c.get(f"{base}/stages", params={"status": "complete"}).raise_for_status().json()
    group_of: dict[int, str] = {}
    n_jobs: dict[str, int] = defaultdict(int)
    for j in jobs:
        g = (j.get("jobGroup") or "")
        name = g.split(":", 1)[1] if g.startswith("distillguard:") else "other"
        n_jobs[name] += 1
        for s in j.get("stageIds", []):
            group_of[int(s)] = name
    keys = ("executorRunTime", "inputBytes", "shuffleWriteBytes", "shuffleReadBytes",
            "memoryBytesSpilled", "diskBytesSpilled", "outputBytes")
    out: dict[str, dict[str, float]] = {}
    for s in stages:
        name = group_of.get(int(s["stageId"]), "other")
        m = out.setdefault(name, {"jobs": n_jobs.get(name, 0), "stages": 0, "tasks": 0,
                                  **{k: 0 for k in keys}})
        m["stages"] += 1
        m["tasks"] += int(s.get("numCompleteTasks", s.get("numTasks", 0)))
        for k in keys:
            m[k] += float(s.get(k, 0) or 0)
    for m in out.values():
        m["task_seconds"] = m.pop("executorRunTime") / 1000.0
    # The costliest Spark stages, to say where a distillguard stage's time goes.
    top = sorted(stages, key=lambda s: -float(s.get("executorRunTime", 0) or 0))[:15]
    out["_top"] = {f"{s['stageId']}": {  # type: ignore[assignment]
        "group": group_of.get(int(s["stageId"]), "other"), "name": str(s.get("name", ""))[:80],
        "task_seconds": float(s.get("executorRunTime", 0) or 0) / 1000.0,
        "input_mb": float(s.get("inputBytes", 0) or 0) / 1e6,
        "shuffle_write_mb": float(s.get("shuffleWriteBytes", 0) or 0) / 1e6} for s in top}
    return out


def _store_parquet(files: Sequence[Path], out: Path) -> tuple[Path, float]:
    """Ingest with the DuckDB engine and export ``requests`` as store-schema Parquet."""
    from distillguard.config import load_config
    from distillguard.ingest import ingest_files
    from distillguard.store import connect

    t0 = time.perf_counter()
    db = out / "ingest.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    con = connect(db)
    try:
        ingest_files(files, con, limits=load_config()["ingest"])
        dst = out / "store-requests"
        dst.mkdir(exist_ok=True)
        for f in dst.glob("*.parquet"):
            f.unlink()
        # Files of ~1M rows so Spark reads them in parallel splits, as a cluster would.
        con.execute(f"COPY requests TO '{dst}' (FORMAT parquet, COMPRESSION zstd, "
                    "ROW_GROUP_SIZE 131072, FILE_SIZE_BYTES '256MB', PER_THREAD_OUTPUT false)")
    finally:
        con.close()
    db.unlink(missing_ok=True)
    return dst, time.perf_counter() - t0


def spark_scale(size: float, out_dir: str | Path = "spark-out", *, seed: int = 7,
                input_kind: str = "store", master: str = "local[2]",
                conf: dict[str, str] | None = None, keep: bool = False) -> dict[str, Any]:
    """Generate ``size`` requests, run the Spark engine on them, return and write the figures."""
    import shutil

    from distillguard.bench.perf import generate
    from distillguard.engines.spark import run_spark, spark_session

    n = int(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files, _ = generate(n, out / "logs", seed)
    print(f"[spark-scale] generated {n:,} requests in {time.perf_counter() - t0:.1f}s",
          flush=True)
    prep_s = 0.0
    if input_kind == "store":
        src, prep_s = _store_parquet(files, out)
        print(f"[spark-scale] store-schema Parquet by the DuckDB ingest in {prep_s:.1f}s "
              f"({sum(f.stat().st_size for f in src.glob('*.parquet')) / 1e6:,.0f} MB)",
              flush=True)
        source: Any = str(src)
    elif input_kind == "canonical":
        source = [str(f) for f in files]
    else:
        raise ValueError(f"input_kind must be 'store' or 'canonical', not {input_kind!r}")

    port = _free_port()
    spark = spark_session(master, {
        "spark.ui.enabled": "true", "spark.ui.port": str(port),
        "spark.ui.showConsoleProgress": "false",
        # Keep every job and stage of the run for the REST API.
        "spark.ui.retainedJobs": "100000", "spark.ui.retainedStages": "100000",
        "spark.sql.ui.retainedExecutions": "100000",
        "spark.driver.memory": "6g",
        **(conf or {})})
    try:
        sc = spark.sparkContext
        ui = sc.uiWebUrl or f"http://localhost:{port}"
        with _Peak() as peak:
            t1 = time.perf_counter()
            run = run_spark(spark, source)
            total = time.perf_counter() - t1
        metrics = stage_metrics(ui, sc.applicationId)
        result: dict[str, Any] = {
            "n": n, "input": input_kind, "master": master, "prep_s": prep_s,
            "total_s": total, "timings": run.timings, "stats": run.stats,
            "accounts": run.scores.height, "flagged": int(run.scores["flagged"].sum()),
            "campaigns": len(run.campaigns), "spark": metrics,
            "driver_peak_rss": peak.peak, "tree_peak_rss": peak.tree,
            "load_avg": os.getloadavg(), "shuffle_partitions":
                spark.conf.get("spark.sql.shuffle.partitions"),
        }
        run.store.close()
    finally:
        spark.stop()
    md = format_markdown(result)
    (out / "spark-scale.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "spark-scale.md").write_text(md)
    print(md, flush=True)
    if not keep:
        shutil.rmtree(out / "logs", ignore_errors=True)
        shutil.rmtree(out / "store-requests", ignore_errors=True)
    return result


def format_markdown(r: dict[str, Any]) -> str:
    mb = 1e6
    lines = [f"{r['n']:,} requests, {r['accounts']:,} accounts, input {r['input']}, "
             f"{r['master']}, shuffle partitions {r['shuffle_partitions']}, linking "
             f"{r['stats'].get('linking')}; total {r['total_s']:.1f} s; peak RSS driver "
             f"(Python) {r['driver_peak_rss'] / 2**30:.2f} GB, JVM + workers + driver "
             f"{r['tree_peak_rss'] / 2**30:.2f} GB; load average at the end "
             f"{', '.join(f'{x:.1f}' for x in r['load_avg'])}", "",
             "| stage | wall s | Spark jobs | stages | tasks | task s | input MB | "
             "shuffle write MB | shuffle read MB | spill (disk) MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for st in (*STAGES, "other"):
        m = r["spark"].get(st)
        wall = r["timings"].get(st)
        if m is None and wall is None:
            continue
        m = m or {}
        lines.append(
            f"| {st} | {'–' if wall is None else f'{wall:.1f}'} | {m.get('jobs', 0)} | "
            f"{m.get('stages', 0)} | {m.get('tasks', 0)} | {m.get('task_seconds', 0):.1f} | "
            f"{m.get('inputBytes', 0) / mb:,.0f} | {m.get('shuffleWriteBytes', 0) / mb:,.0f} | "
            f"{m.get('shuffleReadBytes', 0) / mb:,.0f} | {m.get('diskBytesSpilled', 0) / mb:,.0f} |")
    top = r["spark"].get("_top") or {}
    if top:
        lines += ["", "Costliest Spark stages:", "",
                  "| Spark stage | distillguard stage | call site | task s | input MB | "
                  "shuffle write MB |", "|---:|---|---|---:|---:|---:|"]
        lines += [f"| {k} | {t['group']} | `{t['name']}` | {t['task_seconds']:.1f} | "
                  f"{t['input_mb']:,.0f} | {t['shuffle_write_mb']:,.0f} |" for k, t in top.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m distillguard.bench.spark_scale")
    ap.add_argument("out_dir", nargs="?", default="spark-out")
    ap.add_argument("--size", type=float, default=4e6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--input", choices=("store", "canonical"), default="store")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--conf", action="append", default=[], help="KEY=VALUE (repeatable)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    spark_scale(a.size, a.out_dir, seed=a.seed, input_kind=a.input, master=a.master,
                conf=dict(kv.split("=", 1) for kv in a.conf), keep=a.keep)


if __name__ == "__main__":
    main()
