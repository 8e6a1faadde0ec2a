"""Thin Typer CLI over ``distillguard.api``: parse, call, render."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

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
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(code=2)


def _print_summary(res: api.DetectResult, seconds: float) -> None:
    t = Table(title="distillguard detect", show_header=False)
    t.add_row("accounts", f"{res.accounts.height:,}")
    t.add_row("flagged", f"{res.n_flagged:,}")
    t.add_row("campaigns", f"{len(res.campaigns):,}")
    if res.ingest is not None:
        t.add_row("requests ingested", f"{res.ingest.rows_ok:,}")
        t.add_row("duplicates skipped", f"{res.ingest.rows_dup:,}")
        t.add_row("rows quarantined", f"{res.ingest.rows_bad:,}")
    t.add_row("time", f"{seconds:.1f} s (" + ", ".join(
        f"{k} {v:.1f}" for k, v in res.timings.items()) + ")")
    if res.out_dir:
        t.add_row("outputs", str(res.out_dir))
    console.print(t)
    for c in res.campaigns[:10]:
        console.print(f"  [bold]{c['campaign_id']}[/bold] score {c['score']:.3f}: "
                      f"{c['n_accounts']} accounts, {c['requests']:,} requests; "
                      f"{'; '.join(c['reasons'][:2])}", markup=False, highlight=False)


@app.command()
def detect(
    logs: Annotated[list[Path], typer.Argument(help="Log files: JSONL(.gz), JSON, Parquet, CSV")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory")] = Path("results"),
    db: Annotated[Path, typer.Option(help="DuckDB store file")] = Path("distillguard.duckdb"),
    config: Annotated[Path | None, typer.Option(help="Config YAML merged over defaults")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="canonical|openai|litellm|otel "
                                            "(default: detected per file)")] = None,
    strict: Annotated[bool, typer.Option(help="First bad row is fatal")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars")] = False,
) -> None:
    """Ingest LOGS and find distillation accounts and campaigns; write results to OUT."""
    t0 = time.perf_counter()
    try:
        with RichProgress(not quiet) as prog:
            res = api.detect(logs, out, db=db, config=config, fmt=fmt, strict=strict,
                             progress=prog)
    except DistillguardError as exc:
        _fail(exc)
    _print_summary(res, time.perf_counter() - t0)
    if res.ingest and res.ingest.rows_bad:
        console.print(f"{res.ingest.rows_bad} bad rows quarantined to "
                      f"{res.ingest.quarantine_path}")
    console.print(f"report: {out / 'report.html'}")


def _mount_subapps() -> None:
    """Sub-apps live with their modules; a missing optional extra only hides its verbs."""
    from distillguard.intel import cli as intel_cli

    app.add_typer(intel_cli.app, name="intel", help="Share indicators: STIX 2.1 / TAXII 2.1.")
    from distillguard.gateway import cli as gateway_cli
    from distillguard.respond import cli as respond_cli

    app.add_typer(gateway_cli.app, name="gateway")
    app.add_typer(respond_cli.app, name="respond",
                  help="Replay, policy test, audit log and access directives.")


_mount_subapps()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
