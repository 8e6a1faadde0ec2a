"""``console`` verb: open the store, wire the gateway state, hand the app to uvicorn."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from distillguard.errors import DistillguardError

app = typer.Typer(add_completion=False, help="Analyst console: review, act, teach the detector.")
err = Console(stderr=True)

PASSWORD_ENV = "DISTILLGUARD_CONSOLE_PASSWORD"


@app.callback(invoke_without_command=True)
def console(
    db: Annotated[Path, typer.Option(help="the store detection wrote (detect --db, demo: "
                                     "demo-out/distillguard.duckdb)")],
    host: str = "127.0.0.1",
    port: int = 8800,
    redis_url: Annotated[str | None, typer.Option(
        help="the gateway's state store (same as `gateway --redis-url`): suspensions made "
             "here take effect at the gateway")] = None,
    redis_prefix: Annotated[str, typer.Option(help="key prefix of the gateway's state")] = "dg:",
    policy: Annotated[Path | None, typer.Option(help="the gateway's policy YAML")] = None,
    config: Annotated[Path | None, typer.Option(help="detection config used for the store")]
    = None,
    audit: Annotated[Path | None, typer.Option(
        help="the console's audit log [default: STORE_DIR/console/audit.jsonl]")] = None,
    gateway_audit: Annotated[list[Path] | None, typer.Option(
        help="gateway audit logs to show per account (repeatable)")] = None,
    intel_key_file: Annotated[Path | None, typer.Option(
        help="sharing group's HMAC key: enables evidence and STIX exports")] = None,
    producer: Annotated[str, typer.Option(help="organisation named in exports")]
    = "distillguard console",
    secure_cookies: Annotated[bool, typer.Option(help="behind HTTPS: Secure cookies")] = False,
    add_user: Annotated[str | None, typer.Option(
        help=f"create this user and exit (password from ${PASSWORD_ENV} or a prompt)")] = None,
    role: Annotated[str, typer.Option(help="with --add-user: viewer | analyst | admin")]
    = "analyst",
) -> None:
    """Serve the analyst console on the store DB (http://HOST:PORT)."""
    from distillguard.config import load_config
    from distillguard.console._db import ConsoleDB
    from distillguard.console.app import ConsoleConfig, create_app
    from distillguard.console.auth import Users
    from distillguard.respond.policy import load_policy
    from distillguard.respond.state import MemoryState, RedisState

    try:
        cfg = load_config(config)
        if add_user is not None:
            pw = os.environ.get(PASSWORD_ENV) or typer.prompt(
                f"password for {add_user}", hide_input=True, confirmation_prompt=True)
            cdb = ConsoleDB(db, cfg)
            try:
                Users(cdb).add(add_user, pw, role)
            finally:
                cdb.close()
            err.print(f"user {escape(add_user)} ({role}) added to {db}")
            return
        cdb = ConsoleDB(db, cfg)
        try:
            users = Users(cdb)
            if users.count() == 0:
                pw = secrets.token_urlsafe(12)
                users.add("admin", pw, "admin")
                err.print(f"[bold]first start: created user admin with password {pw}[/bold] "
                          "(shown once; add users on the Users page or with --add-user)")
        finally:
            cdb.close()
        state = RedisState.from_url(redis_url, prefix=redis_prefix) if redis_url \
            else MemoryState()
        key = None
        if intel_key_file is not None:
            from distillguard.intel import load_key

            key = load_key(intel_key_file)
        application = create_app(ConsoleConfig(
            db=db, audit=audit, state=state, shared_state=redis_url is not None,
            policy=load_policy(policy), config=cfg, intel_key=key,
            producer=producer, secure_cookies=secure_cookies,
            gateway_audit=list(gateway_audit or [])))
    except (DistillguardError, ValueError) as exc:
        err.print("[red]error:[/red] " + escape(str(exc)))
        raise typer.Exit(2) from None
    import uvicorn

    if redis_url is None:
        err.print("[yellow]no --redis-url:[/yellow] responses (suspend, throttle, ...) are "
                  "recorded and audited but no gateway sees them; start the console and the "
                  "gateway on one Redis")
    err.print(f"console on http://{host}:{port}/ (store {escape(str(db))})")
    uvicorn.run(application, host=host, port=port, log_level="warning")
