"""Thin Typer CLI over ``distillguard.api``: parse, call, render."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from distillguard import api
from distillguard.errors import DistillguardError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find, stop and report illicit distillation in LLM API traffic.")
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Find, stop and report illicit distillation in LLM API traffic."""


class RichProgress(api.Progress):
    """Progress bars on stderr: one per stage, with counts where the stage knows them."""

    def __init__(self, enabled: bool = True) -> None:
        self.p = Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<9}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                          disable=not enabled)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self.p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.p.stop()

    def _task(self, name: str, total: int | None) -> int:
        if name not in self.tasks:
            self.tasks[name] = self.p.add_task(name, total=total)
        return self.tasks[name]

    def stage(self, name: str, total: int | None = None) -> Callable[[int], None]:
        tid = self._task(name, total)
        return lambda n: self.p.advance(tid, n)

    def done(self, name: str, seconds: float, note: str = "") -> None:
        tid = self._task(name, None)
        task = self.p.tasks[tid]
        total = task.total if task.total is not None else max(task.completed, 1)
        self.p.update(tid, total=total, completed=total)


def _fail(exc: Exception) -> None:
    console.print("[red]error:[/red] " + escape(str(exc)))
    raise typer.Exit(code=2)


def _print_summary(res: api.DetectResult, seconds: float) -> None:
    t = Table(title="distillguard detect", show_header=False)
    t.add_row("accounts", f"{res.accounts.height:,}")
    t.add_row("flagged", f"{res.n_flagged:,}")
    t.add_row("campaigns", f"{len(res.campaigns):,}")
    c = res.calibration
    if c:
        est = c.get("estimated_fpr")
        t.add_row("false-positive rate", f"promised {c['promised_fpr']:.2%}, estimated on this "
                  f"traffic {'-' if est is None else f'{est:.2%}'} ({c['calibration']})")
    if res.ingest is not None:
        t.add_row("requests ingested", f"{res.ingest.rows_ok:,}")
        t.add_row("duplicates skipped", f"{res.ingest.rows_dup:,}")
        t.add_row("rows quarantined", f"{res.ingest.rows_bad:,}")
    if res.mode != "once":
        t.add_row("run", "incremental: features recomputed for "
                  f"{res.features_recomputed:,} accounts" if res.mode == "incremental"
                  else "full (state kept for incremental re-runs)")
    t.add_row("time", f"{seconds:.1f} s (" + ", ".join(
        f"{k} {v:.1f}" for k, v in res.timings.items() if "." not in k) + ")")
    if res.out_dir:
        t.add_row("outputs", str(res.out_dir))
    console.print(t)
    for c in res.campaigns[:10]:
        line = Text("  ")
        line.append(c["campaign_id"], style="bold")
        line.append(f" score {c['score']:.3f}: {c['n_accounts']} accounts, "
                    f"{c['requests']:,} requests; {'; '.join(c['reasons'][:2])}")
        console.print(line, highlight=False)


@app.command()
def detect(
    logs: Annotated[list[Path], typer.Argument(help="Log files or directories: JSONL(.gz), JSON, Parquet, CSV")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory")] = Path("results"),
    db: Annotated[Path | None, typer.Option(
        help="DuckDB store file [default: OUT/store.duckdb]; pass the same one to accumulate "
        "logs across runs (--engine spark: only read, for partner indicators with "
        "--intel-key-file)")] = None,
    config: Annotated[Path | None, typer.Option(help="Config YAML merged over defaults")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="canonical|openai|litellm|otel "
                                            "(default: detected per file)")] = None,
    strict: Annotated[bool, typer.Option(help="First bad row is fatal")] = False,
    intel_key_file: Annotated[list[Path] | None, typer.Option(
        help="Sharing group's HMAC key: match imported partner indicators; repeat for the "
        "previous key after a rotation (current first; --engine duckdb)")] = None,
    engine: Annotated[str, typer.Option(help="duckdb (embedded) | spark")] = "duckdb",
    spark_master: Annotated[str, typer.Option(
        help="Spark master URL with --engine spark, e.g. spark://host:7077")] = "local[2]",
    spark_conf: Annotated[list[str] | None, typer.Option(
        "--spark-conf", help="KEY=VALUE Spark settings (repeatable)")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars")] = False,
    full: Annotated[bool, typer.Option(
        "--full", help="Recompute every request's signals and every account's features "
        "(by default a re-run on a store recomputes only what new requests change; "
        "docs/incremental.md)")] = False,
) -> None:
    """Ingest LOGS and find distillation accounts and campaigns; write results to OUT."""
    t0 = time.perf_counter()
    if engine == "spark":
        try:
            conf = dict(kv.split("=", 1) for kv in (spark_conf or []))
            key = None
            if intel_key_file:   # partner indicators: read from --db
                from distillguard.intel import load_key

                if db is None:
                    raise DistillguardError("--intel-key-file with --engine spark needs --db, "
                                            "the store the partner indicators were imported into")
                if len(intel_key_file) > 1:
                    raise DistillguardError("--engine spark takes one --intel-key-file")
                key = load_key(intel_key_file[0])
            with RichProgress(not quiet) as prog:
                res = api.detect_spark(logs, out, master=spark_master, conf=conf,
                                       config=config, progress=prog, intel_key=key, db=db)
        except (DistillguardError, ImportError) as exc:
            _fail(exc)
        _print_summary(res, time.perf_counter() - t0)
        console.print(f"report: {out / 'report.html'}")
        return
    if engine != "duckdb":
        _fail(ValueError(f"unknown --engine {engine!r}: duckdb or spark"))
    try:
        keys = None
        if intel_key_file:
            from distillguard.intel import load_key

            keys = [load_key(p) for p in intel_key_file]
        with RichProgress(not quiet) as prog:
            res = api.detect(logs, out, db=db if db is not None else api.STORE_IN_OUT,
                             config=config, fmt=fmt, strict=strict,
                             progress=prog, intel_key=keys, full=full)
    except DistillguardError as exc:
        _fail(exc)
    _print_summary(res, time.perf_counter() - t0)
    if res.ingest and res.ingest.rows_bad:
        console.print(f"{res.ingest.rows_bad} bad rows quarantined to "
                      f"{res.ingest.quarantine_path}")
    console.print(f"report: {out / 'report.html'}")


def _parse_set(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for it in items:
        if "=" not in it:
            raise typer.BadParameter(f"--set takes KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
        if v[:1] in "{[":   # a mapping or list knob, e.g. reasoning_hydra__families={"plain":1}
            try:
                out[k] = json.loads(v)
            except ValueError as exc:
                raise typer.BadParameter(f"--set {k}: not valid JSON: {exc}") from exc
    return out


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Output directory")] = Path("traffic"),
    scenario: Annotated[str, typer.Option(help="tiny | demo | default")] = "default",
    seed: Annotated[int, typer.Option()] = 7,
    legit_corpus: Annotated[list[Path] | None, typer.Option(
        "--legit-corpus", help="Legitimate prompt files/dirs (default: bundled)")] = None,
    distill_corpus: Annotated[list[Path] | None, typer.Option(
        "--distill-corpus", help="Distillation prompt files/dirs (default: bundled)")] = None,
    timing: Annotated[list[Path] | None, typer.Option(help="Azure LLM trace CSVs")] = None,
    split: Annotated[str, typer.Option(help="all | tune | report")] = "all",
    knob: Annotated[list[str] | None, typer.Option(
        "--set", help="KNOB=VALUE, e.g. camouflage=0.4 (repeatable)")] = None,
) -> None:
    """Write simulated request logs plus labels.csv (deterministic for a seed)."""
    from distillguard.sim import simulate as _simulate

    try:
        res = _simulate(out, scenario=scenario, seed=seed, legit_corpus=legit_corpus or None,
                        distill_corpus=distill_corpus or None, timing=timing or None,
                        split=split, **_parse_set(knob or []))
    except DistillguardError as exc:
        _fail(exc)
    console.print(f"{res.n_requests:,} requests from {res.n_accounts:,} accounts → "
                  f"{out}/logs/ ({len(res.logs)} files), labels: {res.labels}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("demo-out"),
    seed: Annotated[int, typer.Option()] = 7,
    quiet: Annotated[bool, typer.Option(help="No progress bars")] = False,
) -> None:
    """Simulate a mixed population (bundled corpus), detect, and show what was caught."""
    try:
        with RichProgress(not quiet) as prog:
            d = api.demo(out, seed=seed, progress=prog)
    except DistillguardError as exc:
        _fail(exc)
    _print_summary(d.detect, d.seconds)
    t = Table(title="against the planted ground truth", show_header=False)
    t.add_row("planted distillation accounts caught", f"{d.caught} of {d.planted}")
    t.add_row("false positives", f"{d.false_positives} of {d.benign} legitimate accounts")
    t.add_row("planted campaigns recovered as one", f"{d.campaigns_recovered} of "
              f"{d.campaigns_planted}")
    t.add_row("total time", f"{d.seconds:.1f} s")
    console.print(t)
    console.print(f"report: {out / 'results' / 'report.html'}")


@app.command()
def bench(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("bench-out"),
    scenario: Annotated[str, typer.Option(help="tiny | demo | default")] = "default",
    seed: Annotated[int, typer.Option()] = 7,
    legit_corpus: Annotated[list[Path] | None, typer.Option("--legit-corpus")] = None,
    distill_corpus: Annotated[list[Path] | None, typer.Option("--distill-corpus")] = None,
    timing: Annotated[list[Path] | None, typer.Option()] = None,
    shared_data: Annotated[Path | None, typer.Option(
        help="Use the real corpora in this folder (e.g. ../shared/data)")] = None,
    knob: Annotated[list[str] | None, typer.Option("--set", help="KNOB=VALUE")] = None,
    sweep: Annotated[str | None, typer.Option(
        help="KNOB=V1,V2,... e.g. camouflage=0,0.2,0.4,0.6")] = None,
    baselines: Annotated[str, typer.Option(
        help="Comma-separated: volume,prada,knn,mmd (empty for none)")] = "volume,prada,knn,mmd",
    ttd: Annotated[bool, typer.Option(
        "--time-to-detect", help="Also replay the traffic through the online scorer")] = False,
    two_providers: Annotated[bool, typer.Option(
        "--two-providers", help="Split traffic over two providers; detection alone vs with "
        "STIX indicator sharing")] = False,
    daily: Annotated[bool, typer.Option(
        help="With --two-providers: re-detect at the end of each day (days to detect)")] = False,
    tactics: Annotated[str | None, typer.Option(
        help="Attacker tactics to bench, comma-separated or 'all': baseline, no_elicitation, "
        "paraphrased, own_infra, camouflaged, slow, all_of_the_above")] = None,
    worlds: Annotated[int | None, typer.Option(
        help="Cross-world benchmark: draw N worlds (a quarter tune, the rest report)")] = None,
    worlds_seed: Annotated[int, typer.Option(help="Seed of the world draw")] = 0,
    world_size: Annotated[str, typer.Option(help="bench | ci (small worlds)")] = "bench",
    replay: Annotated[bool, typer.Option(
        help="With --worlds: replay every report world through the online scorer")] = True,
    jobs: Annotated[int, typer.Option(help="With --worlds: worlds run in parallel")] = 2,
    tune_worlds: Annotated[int | None, typer.Option(
        help="With --worlds: how many of them are tune worlds (default a quarter)")] = None,
    refit: Annotated[bool, typer.Option(
        help="With --worlds: fit the evidence weights on the tune worlds (else only the "
        "calibration; the config's weights stay)")] = True,
    lowo: Annotated[bool, typer.Option(
        "--lowo", help="With --worlds: only the tune worlds, each scored with what the "
        "others fitted (leave one out; no report world is simulated)")] = False,
    windows: Annotated[str, typer.Option(
        help="With --lowo: also score each held-out world's first H hours alone, as a daily "
        "run sees the week (comma-separated hours, e.g. 24,96)")] = "",
    dump_scores: Annotated[bool, typer.Option(
        "--dump-scores", help="With --lowo: write every held-out world's accounts with "
        "score, reasons, label, each evidence item's contribution, features and link "
        "community to OUT/scores/WORLD.parquet")] = False,
    online: Annotated[bool, typer.Option(
        "--online", help="With --lowo: also replay each held-out world through the online "
        "scorer and report, at the margin the other worlds' replays fit, the legitimate "
        "accounts ever alerted and the campaigns alerted early")] = False,
) -> None:
    """Benchmark distillguard and published baselines on simulated traffic."""
    from distillguard.bench import run as br

    if shared_data is not None:
        legit_corpus = legit_corpus or [shared_data / "legit"]
        distill_corpus = distill_corpus or [shared_data / "distill"]
        timing = timing or [shared_data / "traces"]
    names = [b for b in baselines.split(",") if b]
    if worlds is not None and lowo:
        try:
            hours = [float(h) for h in windows.split(",") if h.strip()]
        except ValueError:
            _fail(ValueError(f"--windows: hours separated by commas, not {windows!r}"))
        _lowo_worlds(out, worlds, worlds_seed, world_size, legit_corpus, distill_corpus,
                     timing, jobs, tune_worlds, hours, dump_scores, online)
        return
    if worlds is not None:
        _bench_worlds(out, worlds, worlds_seed, world_size, legit_corpus, distill_corpus,
                      timing, names, replay, jobs, tune_worlds, refit)
        return
    kw = dict(scenario=scenario, seed=seed, legit=legit_corpus or None,
              distill=distill_corpus or None, timing=timing or None, baselines=names,
              knobs=_parse_set(knob or []), time_to_detect=ttd)
    if two_providers:
        from distillguard.bench.sharing import two_providers as _two

        try:
            res = _two(out, scenario=scenario, seed=seed, legit=legit_corpus or None,
                       distill=distill_corpus or None, timing=timing or None,
                       knobs=_parse_set(knob or []), daily=daily)
        except DistillguardError as exc:
            _fail(exc)
        t = Table(title="two providers: detection alone vs with indicator sharing")
        for col in ("provider", "mode", "recall@0.1%fpr", "recall@1%fpr", "flag recall",
                    "flag fpr", "pr_auc"):
            t.add_column(col)
        for p, v in res["providers"].items():
            for mode in ("alone", "shared"):
                m = v[mode]
                t.add_row(p, mode, *[f"{m[k]:.3f}" if m[k] is not None else "-" for k in (
                    "recall@0.1%fpr", "recall@1%fpr", "flag_recall", "flag_fpr", "pr_auc")])
        console.print(t)
        for p, b in res["bundles"].items():
            console.print(f"bundle from {p}: {b['bytes']:,} bytes, {b['campaigns']} campaigns, "
                          f"raw identifiers found in it: {b['raw_identifiers_found']}")
        if res["days_to_detect"]:
            t = Table(title="days until half of a campaign's accounts at the provider are flagged")
            for col in ("provider", "campaign", "alone", "sharing"):
                t.add_column(col)
            for p, per in res["days_to_detect"].items():
                for cid, v in per.items():
                    t.add_row(p, cid, str(v["alone"] or "not within the week"),
                              str(v["shared"] or "not within the week"))
            console.print(t)
        console.print(f"results: {out / 'two_providers.json'}")
        return
    if tactics:
        from distillguard.bench.tactics import markdown as tactics_md
        from distillguard.bench.tactics import run_tactics

        try:
            with RichProgress() as prog:
                rows = run_tactics(out, tactics, progress=prog, **kw)
        except DistillguardError as exc:
            _fail(exc)
        typer.echo(tactics_md(rows))
        console.print(f"results: {out / 'tactics.json'} and {out / 'tactics.md'}")
        return
    try:
        with RichProgress() as prog:
            if sweep:
                name, _, vals = sweep.partition("=")
                table = br.sweep(out, name, [float(v) for v in vals.split(",")],
                                 progress=prog, **kw)
            else:
                result = br.bench(out, progress=prog, **kw)
    except DistillguardError as exc:
        _fail(exc)
    if sweep:
        t = Table(title=f"sweep {sweep}: recall at 0.1% FPR")
        dets = list(next(iter(table.values())))
        t.add_column(name)
        for d in dets:
            t.add_column(d)
        for v, row in table.items():
            t.add_row(v, *[f"{row[d]['recall@0.1%fpr'] or 0:.3f}" for d in dets])
        console.print(t)
        console.print(f"plot: {out / f'sweep-{name}.png'}")
        return
    rows = br.summary_rows(result)
    t = Table(title=f"distillguard bench: {result['n_requests']:,} requests, "
                    f"{result['n_accounts']:,} accounts (scenario {scenario}, seed {seed})")
    t.add_column("metric")
    for r in rows:
        t.add_column(r["detector"], justify="right")
    for key in list(rows[0])[1:]:
        t.add_row(key, *[f"{r[key]:.3f}" if isinstance(r[key], float) else str(r[key])
                         for r in rows])
    console.print(t)
    m = result["detectors"]["distillguard"]
    t2 = Table(title="distillguard per campaign")
    for col in ("campaign", "accounts", "flagged share", "purity", "recovered"):
        t2.add_column(col)
    for c in m["campaigns"]:
        t2.add_row(str(c.get("campaign_id")), str(c.get("n_accounts")),
                   f"{c.get('flagged_share') or 0:.3f}", f"{c.get('purity') or 0:.3f}",
                   str(c.get("recovered_as_one")))
    console.print(t2)
    t3 = Table(title="false-positive rate per legitimate kind (distillguard)")
    t3.add_column("kind")
    t3.add_column("accounts")
    t3.add_column("fpr")
    for k in m["fpr_by_kind"]:
        t3.add_row(str(k["kind"]), str(k.get("n", k.get("n_accounts", ""))),
                   f"{k['fpr']:.4f}" if k["fpr"] is not None else "-")
    console.print(t3)
    if result.get("time_to_detect"):
        console.print((out / "bench.md").read_text().split("Time to detect", 1)[1][:4000])
    console.print(f"results: {out / 'bench.json'} and {out / 'bench.md'}")


def _bench_worlds(out: Path, n: int, seed: int, size: str, legit: Any, distill: Any,
                  timing: Any, baselines: list[str], replay: bool, jobs: int,
                  n_tune: int | None, refit: bool) -> None:
    from distillguard.bench.worlds import AGG_METRICS, bench_worlds

    try:
        with RichProgress() as prog:
            res = bench_worlds(out, n_worlds=n, worlds_seed=seed, size=size,
                               legit=legit or None, distill=distill or None,
                               timing=timing or None, baselines=baselines, replay=replay,
                               jobs=jobs, n_tune=n_tune, refit=refit, progress=prog)
    except (DistillguardError, ValueError) as exc:
        _fail(exc)
    agg = res["aggregate"]
    t = Table(title=f"cross-world benchmark: {res['n_report']} report worlds "
                    f"({res['n_tune']} tune), mean / p10 / worst")
    t.add_column("metric")
    for d in agg:
        t.add_column(d, justify="right")
    for key, (_, label) in AGG_METRICS.items():
        cells = [agg[d].get(key) for d in agg]
        if all(c is None for c in cells):
            continue
        t.add_row(label, *["-" if c is None else
                           f"{c['mean']:.3f} / {c['p10']:.3f} / {c['worst']:.3f}" for c in cells])
    console.print(t)
    console.print(f"results: {out / 'worlds.md'}, {out / 'worlds.csv'}, "
                  f"{out / 'campaigns.csv'}, plots {', '.join(res['plots'])} "
                  f"({res['seconds']:.0f} s)")


def _lowo_worlds(out: Path, n: int, seed: int, size: str, legit: Any, distill: Any,
                 timing: Any, jobs: int, n_tune: int | None, windows: list[float],
                 dump_scores: bool = False, online: bool = False) -> None:
    from distillguard.bench.worlds import lowo_worlds

    try:
        with RichProgress() as prog:
            res = lowo_worlds(out, n_worlds=n, worlds_seed=seed, n_tune=n_tune, size=size,
                              legit=legit or None, distill=distill or None,
                              timing=timing or None, jobs=jobs, windows=windows,
                              progress=prog, dump_scores=dump_scores, replay=online)
    except (DistillguardError, ValueError) as exc:
        _fail(exc)
    t = Table(title=f"{res['n_tune']} tune worlds, each held out once")
    for col in ("world", "PR-AUC", "recall@0.1%", "recall@1%", "flagged tp", "flagged fp",
                "flagged FPR", "threshold shift", "ARI", "largest community",
                "lowest reported purity", "legitimate flagged by kind"):
        t.add_column(col)

    def f3(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in res["rows"]:
        t.add_row(r["world_id"], f3(r["pr_auc"]), f3(r["recall_at_0.1%"]),
                  f3(r["recall_at_1%"]), str(r["tp"]), str(r["fp"]),
                  f"{r['flagged_fpr']:.4f}",
                  f"{r['calibration'].get('delta', 0.0):+.2f}", f3(r["ari"]),
                  str(r["largest_community"]), f3(r["min_reported_purity"]),
                  ", ".join(f"{k} {v}" for k, v in r["fp_by_kind"].items()))
    sm = res["summary"]
    t.add_row("mean / total", f3(sm["pr_auc"]), f3(sm["recall_at_0.1%"]),
              f3(sm["recall_at_1%"]), str(sm["tp"]), str(sm["fp"]),
              f"{sm['flagged_fpr']:.4f} (worst {sm['flagged_fpr_worst']:.4f})", "",
              f3(sm["ari"]), str(max(r["largest_community"] for r in res["rows"])),
              f3(min((r["min_reported_purity"] for r in res["rows"]
                      if r["min_reported_purity"] is not None), default=None)),
              ", ".join(f"{k} {v}" for k, v in sm["fp_by_kind"].items()))
    console.print(t)
    if res["archetypes"]:
        a = Table(title="per campaign archetype, held-out tune worlds "
                        f"({f3(sm['recovered'])} of campaigns recovered)")
        for col in ("archetype", "campaigns", "accounts", "mean flagged share", "recovered",
                    "mean purity"):
            a.add_column(col)
        for r in res["archetypes"]:
            a.add_row(r["archetype"], str(r["campaigns"]), f"{r['accounts']:,}",
                      f3(r["mean_flagged_share"]), f3(r["recovered_share"]),
                      f3(r["mean_purity"]))
        console.print(a)
    if sm["windows"]:
        wt = Table(title="batch runs over each held-out world's first hours")
        for col in ("hours", "legitimate seen", "flagged", "FPR", "campaign accounts seen",
                    "flagged share", "legitimate flagged by kind"):
            wt.add_column(col)
        for w in sm["windows"]:
            fpr = "-" if w["fpr"] is None else f"{w['fpr']:.4f}"
            wt.add_row(f"{w['hours']:g}", f"{w['n_legit']:,}", str(w["fp"]), fpr,
                       f"{w['n_distill']:,}", f3(w["recall"]),
                       ", ".join(f"{k} {v}" for k, v in w["fp_by_kind"].items()))
        console.print(wt)
    if sm["online"]:
        on = sm["online"]
        ot = Table(title="online replay of each held-out world, at the margin the others fit")
        for col in ("world", "margin", "legitimate ever alerted", "campaigns alerted",
                    "before 5% of their requests", "legitimate alerted by kind"):
            ot.add_column(col)
        for w in on["worlds"]:
            ot.add_row(w["world_id"], f"{w['margin']:.2f}", str(w["legit_alerted"]),
                       f"{w['campaigns_alerted']} of {w['n_campaigns']}",
                       str(w["campaigns_before_5%"]),
                       ", ".join(f"{k} {v}" for k, v in w["legit_alerted_by_kind"].items()))
        ot.add_row("total", "", f"{on['legit_alerted']} of {on['n_legit']:,}",
                   f"{on['campaigns_alerted']} of {on['n_campaigns']}",
                   str(on["campaigns_before_5%"]),
                   ", ".join(f"{k} {v}" for k, v in on["legit_alerted_by_kind"].items()))
        console.print(ot)
    console.print(f"results: {out / 'lowo.json'} ({res['seconds']:.0f} s)")


@app.command()
def calibrate(
    logs: Annotated[list[Path], typer.Argument(help="Logs of (mostly) known-benign traffic")],
    benign: Annotated[Path | None, typer.Option(
        help="File with one known-benign account id per line (or a labels.csv)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("calibration.yaml"),
    target_fpr: Annotated[float | None, typer.Option(help="False-positive budget")] = None,
    config: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Fit the score threshold on benign traffic; writes a config file to pass as --config."""
    import yaml

    ids = None
    if benign is not None:
        lines = benign.read_text("utf-8").splitlines()
        if lines and lines[0].startswith("account_id,"):
            import polars as pl

            lab = pl.read_csv(benign, infer_schema_length=0)
            ids = lab.filter(pl.col("label") != "distill")["account_id"].to_list()
        else:
            ids = [x.strip() for x in lines if x.strip()]
    try:
        params = api.calibrate(logs, ids, config=config, target_fpr=target_fpr)
    except DistillguardError as exc:
        _fail(exc)
    out.write_text(yaml.safe_dump({"scoring": {"calibration": params}}, sort_keys=False))
    console.print(f"raw threshold {params['raw_threshold']:.3f} at FPR {params['target_fpr']} "
                  f"on {params['n_benign']} benign accounts → {out} (use --config {out})")


@app.command()
def fit(
    logs: Annotated[list[Path] | None, typer.Argument(
        help="Labelled logs to fit on (with --labels); omit to fit on simulated tune worlds")]
    = None,
    labels: Annotated[Path | None, typer.Option(
        help="labels.csv: account_id,label[,campaign_id,kind]; label distill = campaign")] = None,
    worlds: Annotated[int, typer.Option(help="Without logs: tune worlds to draw")] = 8,
    worlds_seed: Annotated[int, typer.Option(help="Seed of the tune-world draw")] = 1,
    world_size: Annotated[str, typer.Option(help="bench | ci")] = "bench",
    shared_data: Annotated[Path | None, typer.Option(
        help="Real corpora for the simulated worlds (e.g. ../shared/data)")] = None,
    work: Annotated[Path, typer.Option(help="Where simulated worlds are written")]
    = Path("fit-worlds"),
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("fitted.yaml"),
    config: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Fit the evidence weights and the calibration; writes a config file for --config."""
    import yaml

    from distillguard.config import load_config

    try:
        if logs:
            if labels is None:
                raise typer.BadParameter("fitting on logs needs --labels")
            import polars as pl

            over = api.fit(logs, pl.read_csv(labels, infer_schema_length=0), config=config)
        else:
            from distillguard.bench.worlds import fit_worlds

            kw = {}
            if shared_data is not None:
                kw = {"legit": [shared_data / "legit"], "distill": [shared_data / "distill"],
                      "timing": [shared_data / "traces"]}
            with RichProgress() as prog:
                over = fit_worlds(work, n_worlds=worlds, worlds_seed=worlds_seed,
                                  size=world_size, config=load_config(config), progress=prog,
                                  **kw)
    except DistillguardError as exc:
        _fail(exc)
    out.write_text(yaml.safe_dump(over, sort_keys=False))
    cal = over["scoring"]["calibration"]
    console.print(f"fitted {len(over['scoring']['weights'])} weights; raw threshold "
                  f"{cal['raw_threshold']:.3f} on {cal['n_benign']} legitimate accounts → {out} "
                  f"(use --config {out})")


@app.command()
def perf(
    out: Annotated[Path, typer.Argument(help="Output directory")] = Path("perf-out"),
    sizes: Annotated[str, typer.Option(help="Comma-separated request counts")] = "1e6,4e6,16e6",
    seed: Annotated[int, typer.Option()] = 7,
    keep: Annotated[bool, typer.Option(help="Keep generated logs and stores")] = False,
    profile: Annotated[bool, typer.Option(help="cProfile each detection run")] = False,
    formats: Annotated[str, typer.Option(
        help="Comma-separated input formats: parquet, jsonl.gz (the same traffic as "
        "gzipped canonical JSONL)")] = "parquet",
    floor: Annotated[bool, typer.Option(
        help="Also time the floor query (read every column, md5 each request's message "
        "text, count distinct digests per account) on the same files")] = True,
) -> None:
    """Scaling benchmark: generate traffic at each size, detect, print per-stage figures
    and detection against the floor per input format."""
    from distillguard.bench.perf import perf as _perf

    try:
        _perf([float(s) for s in sizes.split(",")], out, seed, keep=keep, profile=profile,
              formats=[f.strip() for f in formats.split(",") if f.strip()], floor=floor)
    except ValueError as exc:
        _fail(exc)


def _missing_extra(name: str, extra: str, exc: ImportError) -> None:
    """Registers a stand-in verb for a sub-app whose optional dependencies are missing."""

    @app.command(name, help=escape(f"(needs: pip install 'distillguard[{extra}]')"),
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def _explain(ctx: typer.Context) -> None:
        console.print("[red]error:[/red] " + escape(
            f"`{name}` needs the {extra!r} extra: pip install 'distillguard[{extra}]' ({exc})"))
        raise typer.Exit(code=2)


def _mount_subapps() -> None:
    """Sub-apps live with their modules; a missing optional extra only disables its verbs."""
    from distillguard.signals.elicit_cli import app as elicit_app
    app.add_typer(elicit_app, name="elicit")
    from distillguard.retention_cli import app as store_app
    app.add_typer(store_app, name="store")
    try:
        from distillguard.intel import cli as intel_cli

        app.add_typer(intel_cli.app, name="intel", help="Share indicators: STIX 2.1 / TAXII 2.1.")
    except ImportError as exc:
        _missing_extra("intel", "intel", exc)
    try:
        from distillguard.console import cli as console_cli

        app.add_typer(console_cli.app, name="console")
    except ImportError as exc:
        _missing_extra("console", "console", exc)
    try:
        from distillguard.gateway import cli as gateway_cli

        app.add_typer(gateway_cli.app, name="gateway")
    except ImportError as exc:
        _missing_extra("gateway", "gateway", exc)
    # respond (replay, policy, audit) runs on the base install; directives need the extra.
    from distillguard.respond import cli as respond_cli

    app.add_typer(respond_cli.app, name="respond",
                  help="Replay, policy test, audit log and access directives.")
    # The two verbs operators use most also stand at top level.
    app.command("replay", help="Score logs request by request in time order; write "
                "alerts.jsonl and online_accounts.csv (--campaigns: a batch campaigns.json).")(
        respond_cli.replay)
    app.add_typer(respond_cli.policy_app, name="policy", help="Graduated-action policies.")


_mount_subapps()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
