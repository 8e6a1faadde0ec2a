"""``distillguard store``: retention and erasure verbs over :mod:`distillguard.retention`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from distillguard.errors import DistillguardError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Store maintenance: retention (prune) and erasure by account.")
err = Console(stderr=True)

Db = Annotated[Path, typer.Option(help="The DuckDB store (e.g. results/store.duckdb).")]
AuditPath = Annotated[Path | None, typer.Option(
    help="Hash-chained audit log to record the deletion in [default: audit.jsonl beside "
    "the store].")]


def _run(db: Path, audit_log: Path | None, **kw: object) -> None:
    from distillguard.respond.audit import AuditLog
    from distillguard.retention import prune
    from distillguard.store import connect

    try:
        if not db.exists():
            raise DistillguardError(f"{db}: no such store")
        audit = AuditLog(audit_log or db.parent / "audit.jsonl")
        con = connect(db)
        try:
            rep = prune(con, audit=audit, **kw)
        finally:
            con.close()
    except DistillguardError as exc:
        err.print("[red]error:[/red] " + escape(str(exc)))
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(rep.to_dict()))


@app.command("prune")
def prune_cmd(db: Db, older_than: Annotated[str, typer.Option(
        help="Age past which raw text goes, e.g. 90d, 12h, 2w.")], audit_log: AuditPath = None
              ) -> None:
    """Remove the raw text (prompts, system prompts, responses, unknown fields) of requests
    older than --older-than; keep their signals, counts and linking keys."""
    from distillguard.retention import parse_age

    try:
        age = parse_age(older_than)
    except DistillguardError as exc:
        err.print("[red]error:[/red] " + escape(str(exc)))
        raise typer.Exit(2) from exc
    _run(db, audit_log, older_than=age)


@app.command("erase")
def erase_cmd(db: Db, account: Annotated[str, typer.Option(help="The account to erase.")],
              audit_log: AuditPath = None) -> None:
    """Remove the raw text of every request of one account (an erasure request)."""
    _run(db, audit_log, account=account)
