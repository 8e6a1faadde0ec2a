"""``gateway`` verb: build the app from files and hand it to uvicorn (the lead mounts ``app``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

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
    fail_mode: Annotated[str, typer.Option(
        help="when Redis is down: local (score on per-worker state, log an alert, return to "
             "Redis when it answers), closed (503) or open (forward unscored)")] = "local",
    audit: Annotated[Path, typer.Option(help="audit log JSONL")] = Path("audit.jsonl"),
    request_log: Annotated[Path | None, typer.Option(help="canonical request log JSONL")] = Path(
        "requests.jsonl"),
    upstream_api_key: Annotated[str | None, typer.Option(envvar="DISTILLGUARD_UPSTREAM_KEY",
                                                         help="key for the upstream")] = None,
    workers: Annotated[int, typer.Option(
        help="worker processes (>1 needs --redis-url; each writes AUDIT-<pid>.jsonl)")] = 1,
) -> None:
    """Serve POST /v1/chat/completions, GET /v1/models and /healthz with distillguard inline."""
    import uvicorn

    if fail_mode not in ("local", "closed", "open"):
        raise typer.BadParameter("--fail-mode must be local, closed or open")
    if workers > 1:
        if not redis_url:
            raise typer.BadParameter("--workers > 1 needs --redis-url (shared account state)")
        if keys is None and not allow_account_header:
            raise typer.BadParameter("give --keys, or --allow-account-header for local testing")
        os.environ[_ENV] = json.dumps({
            "upstream": upstream, "policy": str(policy) if policy else None,
            "directives": [str(d) for d in directives or []],
            "keys": str(keys) if keys else None, "allow_account_header": allow_account_header,
            "redis_url": redis_url, "fail_mode": fail_mode, "audit": str(audit),
            "request_log": str(request_log) if request_log else None,
            "upstream_api_key": upstream_api_key})
        try:                              # fail here, once, on a bad policy/directive/key file
            _worker_app()
        except (DistillguardError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        uvicorn.run("distillguard.gateway.cli:_worker_app", factory=True, host=host, port=port,
                    http=_http_protocol(),
                    workers=workers, log_level="info")
        return

    from distillguard.gateway.app import create_app
    from distillguard.gateway.auth import KeyStore
    from distillguard.respond import (
        AuditLog,
        MemoryState,
        OnlineScorer,
        load_directives,
        load_policy,
    )

    if keys is None and not allow_account_header:
        raise typer.BadParameter("give --keys, or --allow-account-header for local testing")
    try:
        state = _state(redis_url, fail_mode) if redis_url else MemoryState()
        application = create_app(
            upstream, load_policy(policy), load_directives(directives or []),
            OnlineScorer(state), AuditLog(audit), fail_mode=_guard_mode(fail_mode),
            keys=KeyStore.from_file(keys, allow_account_header), request_log=request_log,
            upstream_api_key=upstream_api_key, freeze_gc=True)
    except (DistillguardError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    uvicorn.run(application, host=host, port=port, log_level="info", http=_http_protocol())


_ENV = "DISTILLGUARD_GATEWAY_WORKER_CONFIG"


def _http_protocol() -> str:
    """uvicorn's httptools protocol with a request-header deadline (slowloris), when
    httptools is installed; else uvicorn's default."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "auto"
    from distillguard.gateway.protocol import IMPORT_PATH

    return IMPORT_PATH


def _state(redis_url: str, fail_mode: str) -> Any:
    """The Redis store, wrapped in the per-worker fallback for ``--fail-mode local``."""
    from distillguard.respond.state import FallbackState, RedisState

    state = RedisState.from_url(redis_url)
    return FallbackState(state) if fail_mode == "local" else state


def _guard_mode(fail_mode: str) -> str:
    """The Guard's mode: a FallbackState never fails, so ``local`` keeps ``closed`` behind it."""
    return "closed" if fail_mode == "local" else fail_mode


def _per_worker(path: Path) -> Path:
    """``audit.jsonl`` → ``audit-<pid>.jsonl``: one hash chain (and log) per worker process."""
    return path.with_name(f"{path.stem}-{os.getpid()}{path.suffix}")


def _worker_app() -> Any:
    """uvicorn factory for ``--workers N``: the app of one worker, from the CLI's settings."""
    from distillguard.gateway.app import create_app
    from distillguard.gateway.auth import KeyStore
    from distillguard.respond import (
        AuditLog,
        OnlineScorer,
        load_directives,
        load_policy,
    )

    c = json.loads(os.environ[_ENV])
    return create_app(
        c["upstream"], load_policy(Path(c["policy"]) if c["policy"] else None),
        load_directives([Path(d) for d in c["directives"]]),
        OnlineScorer(_state(c["redis_url"], c["fail_mode"])),
        AuditLog(_per_worker(Path(c["audit"]))), fail_mode=_guard_mode(c["fail_mode"]),
        keys=KeyStore.from_file(Path(c["keys"]) if c["keys"] else None,
                                c["allow_account_header"]),
        request_log=_per_worker(Path(c["request_log"])) if c["request_log"] else None,
        upstream_api_key=c["upstream_api_key"], freeze_gc=True)
