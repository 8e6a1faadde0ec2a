"""``gateway`` verb: build the app from files and hand it to uvicorn (the lead mounts ``app``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from distillguard.errors import DistillguardError

app = typer.Typer(add_completion=False, help="Run the OpenAI-compatible gateway.")
err = Console(stderr=True)


@app.callback(invoke_without_command=True)
def gateway(
    upstream: Annotated[str, typer.Option(help="upstream base URL, e.g. http://127.0.0.1:8000")],
    host: str = "127.0.0.1",
    port: int = 8080,
    policy: Annotated[Path | None, typer.Option(help="policy YAML (default: packaged)")] = None,
    directives: Annotated[list[Path] | None, typer.Option(help="directive files/dirs")] = None,
    keys: Annotated[Path | None, typer.Option(help="API keys file (YAML)")] = None,
    allow_account_header: Annotated[bool, typer.Option(
        help="TESTING ONLY: trust X-Account-Id")] = False,
    redis_url: Annotated[str | None, typer.Option(help="shared state, e.g. redis://...")] = None,
    fail_mode: Annotated[str, typer.Option(help="closed|open when the state store is down")] = "closed",
    audit: Annotated[Path, typer.Option(help="audit log JSONL")] = Path("audit.jsonl"),
    request_log: Annotated[Path | None, typer.Option(help="canonical request log JSONL")] = Path(
        "requests.jsonl"),
    upstream_api_key: Annotated[str | None, typer.Option(envvar="DISTILLGUARD_UPSTREAM_KEY",
                                                         help="key for the upstream")] = None,
) -> None:
    """Serve POST /v1/chat/completions, GET /v1/models and /healthz with distillguard inline."""
    import uvicorn

    from distillguard.gateway.app import create_app
    from distillguard.gateway.auth import KeyStore
    from distillguard.respond import (
        AuditLog,
        MemoryState,
        OnlineScorer,
        RedisState,
        load_directives,
        load_policy,
    )

    if keys is None and not allow_account_header:
        raise typer.BadParameter("give --keys, or --allow-account-header for local testing")
    try:
        state = RedisState.from_url(redis_url) if redis_url else MemoryState()
        application = create_app(
            upstream, load_policy(policy), load_directives(directives or []),
            OnlineScorer(state), AuditLog(audit), fail_mode=fail_mode,
            keys=KeyStore.from_file(keys, allow_account_header), request_log=request_log,
            upstream_api_key=upstream_api_key, freeze_gc=True)
    except (DistillguardError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    uvicorn.run(application, host=host, port=port, log_level="info")
