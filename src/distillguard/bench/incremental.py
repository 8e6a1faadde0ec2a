"""Incremental-run benchmark: a 14-day store, one more day appended, incremental vs full.

>>> from distillguard.bench.incremental import bench
>>> bench("incr-out", days=14, requests_per_day=250_000)              # doctest: +SKIP

Daily logs come from the scaling benchmark's generator (``bench.perf``: one population of
accounts, one Parquet file per day, each day's requests on that day). Three runs, each in a
fresh process with a file-backed store:

1. ``base``: detect days 1..14 into a store (the store a provider has before today);
2. ``incremental``: a copy of that store, detect day 15 into it (the default on re-run);
3. ``full``: detect days 1..15 into a fresh store, ``incremental=False`` (what every run
   cost before);
4. ``full_on_store``: a copy of 1, day 15 detected with ``full=True`` (``--full``).

It compares
the results of 2 with 3 (accounts.csv columns and the ``features`` table) and prints the
ratio of wall and CPU seconds. Results go to ``incremental.json`` in ``out_dir``.

Run: ``python -m distillguard.bench.incremental incr-out --days 14 --requests-per-day 250000``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from distillguard.bench.perf import (
    ACCOUNTS_AT_16M,
    _accounts,
    _chunk,
    _cpu_seconds,
    _StageRSS,
    _Text,
)


def generate_days(out_dir: str | Path, days: int, requests_per_day: int,
                  seed: int = 7) -> list[Path]:
    """One Parquet log per day (``day-01.parquet``...) of one account population."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_acc = max(300, round(ACCOUNTS_AT_16M * days * requests_per_day / 16_000_000))
    acc = _accounts(n_acc, rng)
    text = _Text()
    files = []
    for d in range(days):
        path = out / f"day-{d + 1:02d}.parquet"
        t = _chunk(requests_per_day, d * requests_per_day, acc, text,
                   np.random.default_rng([seed, d]), day_no=d)
        pq.write_table(t, path, compression="zstd", compression_level=1,
                       row_group_size=128 * 1024)
        files.append(path)
    return files


def _run(files: list[str], db: str, out: str, how: str, q: Any) -> None:
    """Child process: one detection run; puts its figures on ``q``."""
    try:
        from distillguard.api import detect

        c0, t0 = _cpu_seconds(), time.perf_counter()
        with _StageRSS() as m:        # its progress hook takes CPU seconds per stage
            res = detect(files, out, db=db, full=how == "full", incremental=how != "once",
                         progress=m.progress)
        q.put({"wall_s": time.perf_counter() - t0, "cpu_s": _cpu_seconds() - c0,
               "timings": res.timings, "stage_cpu_s": m.cpu,
               "features_recomputed": res.features_recomputed, "mode": res.mode, "accounts": res.accounts.height,
               "flagged": res.n_flagged, "campaigns": len(res.campaigns),
               "load_avg": os.getloadavg()})
    except BaseException as exc:  # pragma: no cover - reported by the parent
        q.put({"error": f"{type(exc).__name__}: {exc}"})


def run_detect(files: Sequence[Path], db: Path, out: Path, how: str = "default"
               ) -> dict[str, Any]:
    """Detect in a fresh (spawned) process, so one run's caches and memory are its own.

    ``how``: ``default`` (incremental on a store that has the state), ``full``
    (``full=True``), ``once`` (``incremental=False``: what every run did before).
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_run, args=([str(f) for f in files], str(db), str(out), how, q))
    proc.start()
    res = q.get()
    proc.join()
    if "error" in res:
        raise RuntimeError(res["error"])
    return res


def compare_results(out_a: Path, db_a: Path, out_b: Path, db_b: Path,
                    rel: float = 1e-9) -> dict[str, Any]:
    """Differences between two runs' accounts.csv and ``features`` tables (empty: none).

    Scores are compared to the 6 decimals accounts.csv prints (one unit of slack for a
    float summed in another order); features to a relative ``rel``.
    """
    import duckdb
    import polars as pl

    a = pl.read_csv(out_a / "accounts.csv", infer_schema_length=0).sort("account_id")
    b = pl.read_csv(out_b / "accounts.csv", infer_schema_length=0).sort("account_id")
    diff: dict[str, Any] = {}
    if a["account_id"].to_list() != b["account_id"].to_list():
        diff["accounts"] = f"{a.height} vs {b.height} accounts"
        return diff
    ds = (a["score"].cast(pl.Float64) - b["score"].cast(pl.Float64)).abs()
    if ds.max() > 1.5e-6:
        diff["score"] = int((ds > 1.5e-6).sum())
    for c in ("flagged", "campaign_id", "reasons"):
        ne = a[c].fill_null("") != b[c].fill_null("")
        if int(ne.sum()):
            diff[c] = int(ne.sum())
            i = int(ne.arg_max())       # the first differing account, to say how
            diff[f"{c}_example"] = (a["account_id"][i], a[c][i], b[c][i])
    fa, fb = (duckdb.connect(str(p), read_only=True) for p in (db_a, db_b))
    try:
        ta = fa.sql("SELECT * FROM features ORDER BY account_id").pl()
        tb = fb.sql("SELECT * FROM features ORDER BY account_id").pl()
    finally:
        fa.close()
        fb.close()
    if ta.columns != tb.columns or ta.height != tb.height:
        diff["features"] = "different shape"
        return diff
    for c in ta.columns:
        x, y = ta[c], tb[c]
        both_null = (x.is_null() & y.is_null()).to_numpy()
        if x.dtype.is_numeric():
            xv = x.cast(pl.Float64).to_numpy()
            yv = y.cast(pl.Float64).to_numpy()
            with np.errstate(invalid="ignore"):
                ok = np.abs(xv - yv) <= rel * np.maximum(np.abs(xv), np.abs(yv))
            ok |= (np.isnan(xv) & np.isnan(yv)) | both_null
        else:
            ok = (x == y).fill_null(False).to_numpy() | both_null
        if int((~ok).sum()):
            diff[f"features.{c}"] = int((~ok).sum())
    return diff


def _copy_store(src: Path, dst: Path) -> None:
    for suffix in ("", ".wal"):
        s, d = Path(str(src) + suffix), Path(str(dst) + suffix)
        d.unlink(missing_ok=True)
        if s.exists():
            shutil.copyfile(s, d)


def bench(out_dir: str | Path = "incr-out", days: int = 14, requests_per_day: int = 250_000,
          seed: int = 7) -> dict[str, Any]:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.environ.setdefault("DISTILLGUARD_MEMORY_LIMIT", "4GB")
    t0 = time.perf_counter()
    files = generate_days(out / "logs", days + 1, requests_per_day, seed)
    print(f"[incr] generated {days + 1} days x {requests_per_day:,} requests in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    runs: dict[str, dict[str, Any]] = {}

    def show(name: str, r: dict[str, Any]) -> None:
        runs[name] = r
        stages = "  ".join(f"{k}={v:.1f}/{r['stage_cpu_s'].get(k, 0):.1f}"
                           for k, v in r["timings"].items() if "." not in k)
        print(f"[incr] {name:13s} mode={r['mode']:11s} wall {r['wall_s']:7.1f}s  CPU "
              f"{r['cpu_s']:7.1f}s  accounts={r['accounts']:,} (features redone "
              f"{r['features_recomputed']:,}) flagged={r['flagged']:,}  "
              f"[stage wall/CPU s: {stages}]", flush=True)

    show("base", run_detect(files[:-1], out / "base.duckdb", out / "base"))
    _copy_store(out / "base.duckdb", out / "incr.duckdb")
    show("incremental", run_detect(files[-1:], out / "incr.duckdb", out / "incr"))
    show("full", run_detect(files, out / "full.duckdb", out / "full", "once"))
    _copy_store(out / "base.duckdb", out / "refull.duckdb")
    show("full_on_store", run_detect(files[-1:], out / "refull.duckdb", out / "refull",
                                     "full"))
    same = compare_results(out / "incr", out / "incr.duckdb", out / "full", out / "full.duckdb")
    inc, full = runs["incremental"], runs["full"]
    summary = {
        "days": days, "requests_per_day": requests_per_day, "seed": seed, "runs": runs,
        "ratio_wall": inc["wall_s"] / full["wall_s"], "ratio_cpu": inc["cpu_s"] / full["cpu_s"],
        "ratio_wall_vs_full_on_store": inc["wall_s"] / runs["full_on_store"]["wall_s"],
        "ratio_cpu_vs_full_on_store": inc["cpu_s"] / runs["full_on_store"]["cpu_s"],
        "differences": same, "same_results": not same,
    }
    print(f"[incr] incremental / full: wall {summary['ratio_wall']:.3f}  CPU "
          f"{summary['ratio_cpu']:.3f}  (vs --full on the same store: wall "
          f"{summary['ratio_wall_vs_full_on_store']:.3f}  CPU "
          f"{summary['ratio_cpu_vs_full_on_store']:.3f})", flush=True)
    print(f"[incr] differences from the full run: {same or 'none'}", flush=True)
    (out / "incremental.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m distillguard.bench.incremental")
    ap.add_argument("out_dir", nargs="?", default="incr-out")
    ap.add_argument("--days", type=int, default=14, help="days in the store before today")
    ap.add_argument("--requests-per-day", type=int, default=250_000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    bench(a.out_dir, a.days, a.requests_per_day, a.seed)


if __name__ == "__main__":
    main()
