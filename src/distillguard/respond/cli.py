"""Thin Typer verbs over ``distillguard.respond`` (the lead mounts ``app`` as ``respond``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from distillguard.errors import DistillguardError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Respond to distillation: replay, policy tests, audit, directives.")
policy_app = typer.Typer(no_args_is_help=True, help="Graduated-action policies.")
audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
directive_app = typer.Typer(no_args_is_help=True, help="Access directives (Cedar).")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(directive_app, name="directive")
err = Console(stderr=True)


def _emit(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _fail(exc: DistillguardError) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@app.command()
def replay(logs: Annotated[list[Path], typer.Argument(help="request logs (any ingest format)")],
           out: Annotated[Path, typer.Option(
               help="directory for alerts.jsonl and online_accounts.csv")] = Path("results"),
           policy: Annotated[Path | None, typer.Option(help="policy YAML")] = None,
           batch: Annotated[Path | None, typer.Option(
               help="results folder of the latest batch detect: its groups.parquet (group "
                    "evidence), calibration.json and campaigns.json are loaded first")] = None,
           campaigns: Annotated[Path | None, typer.Option(
               help="campaigns.json of a batch detect (campaign membership in decisions "
                    "and alerts)")] = None,
           refresh_hours: Annotated[float | None, typer.Option(
               help="re-run batch detection on the requests replayed so far every this "
                    "many hours of stream time and load its groups and calibration")] = None
           ) -> None:
    """Score logs request by request as the gateway would; write alerts.jsonl and each
    account's end-of-stream online score (online_accounts.csv)."""
    from distillguard.respond.online import replay as _replay
    from distillguard.respond.policy import load_policy

    if campaigns is not None and not campaigns.is_file():
        raise typer.BadParameter(f"no such file: {campaigns}", param_hint="--campaigns")
    if batch is not None and not batch.is_dir():
        raise typer.BadParameter(f"no such folder: {batch}", param_hint="--batch")
    if refresh_hours is not None and refresh_hours <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--refresh-hours")
    if batch is not None and campaigns is None and (batch / "campaigns.json").is_file():
        campaigns = batch / "campaigns.json"
    try:
        _emit(_replay(logs, out, policy=load_policy(policy), campaigns=campaigns,
                      groups=batch, refresh_hours=refresh_hours))
    except DistillguardError as exc:
        _fail(exc)


@policy_app.command("test")
def policy_test(
    policy: Annotated[Path | None, typer.Argument(help="policy YAML (default: bundled)")] = None,
    logs: Annotated[list[Path] | None, typer.Option(
        "--logs", help="replay these logs (ingested and scored in memory)")] = None,
    db: Annotated[Path | None, typer.Option(help="or: a store with requests + scores")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV account_id,label")] = None,
) -> None:
    """How many requests/accounts each rule would hit on history (split by label)."""
    from distillguard.api import analyse
    from distillguard.config import load_config
    from distillguard.ingest import ingest_files
    from distillguard.respond.policy import load_policy
    from distillguard.respond.policy import policy_test as _pt
    from distillguard.store import connect

    if not logs and db is None:
        raise typer.BadParameter("give --logs LOGS or --db STORE")
    try:
        con = connect(db if not logs else None)
        try:
            if logs:
                cfg = load_config()
                ingest_files(logs, con, limits=cfg["ingest"])
                analyse(con, cfg)
            _emit(_pt(load_policy(policy), con, labels))
        finally:
            con.close()
    except DistillguardError as exc:
        _fail(exc)


@policy_app.command("check")
def policy_check(policy: Annotated[Path, typer.Argument()]) -> None:
    """Validate a policy file."""
    from distillguard.respond.policy import load_policy

    try:
        p = load_policy(policy)
        typer.echo(f"ok: version {p.version}, {len(p.rules)} rules")
    except DistillguardError as exc:
        _fail(exc)


@audit_app.command("verify")
def audit_verify(path: Annotated[Path, typer.Argument()],
                 head: Annotated[str | None, typer.Option(help="anchored head hash")] = None
                 ) -> None:
    """Check the hash chain; exit 1 on the first edited, deleted or reordered entry."""
    from distillguard.respond.audit import verify

    try:
        res = verify(path, head)
    except DistillguardError as exc:
        _fail(exc)
    _emit(res.__dict__)
    raise typer.Exit(0 if res.ok else 1)


@audit_app.command("query")
def audit_query(path: Annotated[Path, typer.Argument()],
                account: str | None = None, action: str | None = None,
                event: str | None = None, since: str | None = None, until: str | None = None,
                limit: int = 100) -> None:
    """Print matching entries as JSONL."""
    from distillguard.respond.audit import query

    try:
        for e in query(path, account=account, action=action, event=event, since=since,
                       until=until, limit=limit):
            typer.echo(json.dumps(e, ensure_ascii=False))
    except DistillguardError as exc:
        _fail(exc)


def _directives():  # noqa: ANN202 - the module
    """The directives module; on the base install (no cedarpy) an install hint, exit 2."""
    try:
        from distillguard.respond import directives
    except ImportError as exc:
        err.print("[red]error:[/red] " + escape(
            "directives need the 'gateway' extra: pip install 'distillguard[gateway]' "
            f"({exc})"))
        raise typer.Exit(2) from exc
    return directives


@directive_app.command("validate")
def directive_validate(paths: Annotated[list[Path], typer.Argument()]) -> None:
    """Validate directive files against the Cedar schema; print the compiled policies."""
    load_directives = _directives().load_directives

    try:
        ds = load_directives(paths)
        typer.echo(ds.policy_text)
        err.print(f"ok: {len(ds.directives)} directives")
    except DistillguardError as exc:
        _fail(exc)


@directive_app.command("dry-run")
def directive_dry_run(
        directive: Annotated[Path, typer.Argument(help="YAML file with the new directive")],
        db: Annotated[Path, typer.Option(help="store with the requests table")],
        current: Annotated[list[Path] | None, typer.Option(help="directives in force")] = None,
        attributes: Annotated[Path | None, typer.Option(help="accounts CSV/JSONL")] = None
        ) -> None:
    """How many accounts and requests a new directive would affect, by model and class."""
    from distillguard.store import connect

    d = _directives()
    dry_run, load_directives = d.dry_run, d.load_directives

    try:
        new = load_directives(directive).directives
        if len(new) != 1:
            raise DistillguardError(f"{directive} must hold exactly one directive")
        cur = load_directives(current) if current else None
        con = connect(db)
        try:
            _emit(dry_run(new[0], con, cur, attributes=attributes).to_dict())
        finally:
            con.close()
    except DistillguardError as exc:
        _fail(exc)
