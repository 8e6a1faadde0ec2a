"""``distillguard intel ...``: thin Typer verbs over the intel library API.

Mount with ``main_app.add_typer(intel.cli.app, name="intel")``. Heavy imports happen inside
the commands, so mounting works without the ``intel`` extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from distillguard.errors import DistillguardError

app = typer.Typer(
    name="intel",
    help="Share campaign indicators privately (STIX 2.1 / TAXII 2.1) and use partners' intel.",
    no_args_is_help=True,
)

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Show distillguard errors (and a missing extra) as one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DistillguardError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        except ImportError as exc:
            typer.secho(f"error: {exc}. Install with: pip install 'distillguard[intel]'",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc

    return wrapper  # type: ignore[return-value]


def _connect(db: Path | None, read_only: bool = True) -> Any:
    if db is None:
        return None
    import duckdb

    from distillguard.errors import StoreError

    if read_only and not db.exists():
        raise StoreError(f"store {db} does not exist")
    try:
        return duckdb.connect(str(db), read_only=read_only)
    except duckdb.Error as exc:
        raise StoreError(f"cannot open store {db}: {exc}") from exc


KeyFile = Annotated[Path, typer.Option("--key-file", help="Sharing group HMAC key file.")]
Producer = Annotated[str, typer.Option("--producer", help="Your organisation's name.")]


@app.command("export")
@_friendly
def export_cmd(
    results: Annotated[Path, typer.Option(help="Results dir holding campaigns.json.")],
    out: Annotated[Path, typer.Option(help="Output file (bundle.json or MISP event).")],
    key_file: KeyFile,
    campaign: Annotated[list[str] | None, typer.Option(help="Campaign id (repeatable).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Export every campaign.")] = False,
    db: Annotated[Path | None, typer.Option(help="Store (adds volumes, API keys...).")] = None,
    producer: Producer = "unknown-provider",
    tlp: Annotated[str, typer.Option(help="clear|green|amber|amber+strict|red")] = "amber",
    tlp_version: Annotated[int, typer.Option(help="2 (OASIS TLP 2.0) or 1.")] = 2,
    fmt: Annotated[str, typer.Option("--format", help="stix or misp")] = "stix",
    bloom: Annotated[bool, typer.Option(help="Add a Bloom filter of identifier HMACs.")] = False,
) -> None:
    """Export campaigns as a shareable STIX 2.1 bundle (or MISP event)."""
    import orjson

    from distillguard.intel._common import IntelError
    from distillguard.intel.export import export_bundle, load_campaigns, select_campaigns
    from distillguard.intel.hashing import load_key

    if bool(campaign) == all_:
        raise IntelError("give --campaign ID (one or more) or --all")
    key = load_key(key_file)
    chosen = select_campaigns(load_campaigns(results), None if all_ else campaign)
    con = _connect(db)
    try:
        if fmt == "stix":
            bundle = export_bundle(chosen, con, key, producer, tlp, tlp_version=tlp_version,
                                   bloom=bloom)
            data = orjson.dumps(orjson.loads(bundle.serialize()), option=orjson.OPT_INDENT_2)
        elif fmt == "misp":
            from distillguard.intel.misp import export_misp

            data = orjson.dumps(export_misp(chosen, con, key, producer, tlp),
                                option=orjson.OPT_INDENT_2)
        else:
            raise IntelError(f"unknown format {fmt!r} (stix or misp)")
    finally:
        if con is not None:
            con.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    typer.echo(f"wrote {out} ({len(chosen)} campaign(s), {fmt}, TLP:{tlp.upper()})")


@app.command("import")
@_friendly
def import_cmd(
    bundle: Annotated[Path, typer.Argument(help="STIX bundle from a partner.")],
    db: Annotated[Path, typer.Option(help="Store to add partner_indicators to.")],
    source: Annotated[str, typer.Option(help="Partner name shown in reasons.")],
    confidence: Annotated[int, typer.Option(min=0, max=100, help="Trust in this source.")] = 50,
) -> None:
    """Import a partner's bundle into partner_indicators (idempotent)."""
    from distillguard.intel._common import IntelError
    from distillguard.intel.partner import import_bundle

    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise IntelError(f"cannot read {bundle}: {exc.strerror}") from exc
    con = _connect(db, read_only=False)
    try:
        summary = import_bundle(data, con, source, confidence)
    finally:
        con.close()
    typer.echo(f"{summary.added} new, {summary.unchanged} already known: {summary.by_kind}")


@app.command("match")
@_friendly
def match_cmd(
    db: Annotated[Path, typer.Option(help="Store with requests and partner_indicators.")],
    key_file: Annotated[list[Path], typer.Option(
        "--key-file", help="Sharing group HMAC key file; repeat for previous keys after a "
        "rotation (current first).")],
    out: Annotated[Path | None, typer.Option(help="Write all rows as CSV.")] = None,
    user_agents: Annotated[bool, typer.Option(help="Also match user agents.")] = False,
) -> None:
    """Match local accounts against imported partner indicators."""
    from distillguard.intel.hashing import load_key
    from distillguard.intel.partner import match_partner_indicators

    con = _connect(db)
    try:
        frame = match_partner_indicators(con, [load_key(k) for k in key_file],
                                         use_user_agents=user_agents)
    finally:
        con.close()
    if out is not None:
        frame.write_csv(out)
    hits = frame.filter(frame["partner_hits"] > 0)
    typer.echo(f"{hits.height} of {frame.height} accounts match partner intel")
    for row in hits.head(20).iter_rows(named=True):
        typer.echo(f"  {row['account_id']}: {row['reasons']}")


@app.command("serve")
@_friendly
def serve_cmd(
    db: Annotated[Path, typer.Option(help="TAXII object store (DuckDB; not the analysis store).")],
    users: Annotated[Path, typer.Option(
        help="users.yaml: users and tokens (hashed), grants, rate limits.")],
    host: Annotated[str, typer.Option(help="Bind address (put TLS in front if public).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9000,
) -> None:
    """Run the TAXII 2.1 server."""
    from distillguard.intel.taxii_server import serve

    serve(db, users, host=host, port=port)


def _credentials(
    user: str | None, password: str | None, token: str | None
) -> tuple[str | None, str | None]:
    """(user, password) for Basic auth (prompting for the password), or (None, None) when a
    token is used."""
    from distillguard.intel._common import IntelError

    if token:
        return None, None
    if not user:
        raise IntelError("give --user (Basic auth) or a token (DISTILLGUARD_TAXII_TOKEN)")
    return user, password or typer.prompt("Password", hide_input=True)


User = Annotated[str | None, typer.Option(help="User (Basic auth); or use a token.")]
Password = Annotated[str | None, typer.Option(
    envvar="DISTILLGUARD_TAXII_PASSWORD", show_default=False,
    help="Basic-auth password (default: the variable, else a prompt).")]
Token = Annotated[str | None, typer.Option(
    envvar="DISTILLGUARD_TAXII_TOKEN", show_default=False,
    help="Bearer token (prefer the DISTILLGUARD_TAXII_TOKEN variable to the command line).")]


@app.command("pull")
@_friendly
def pull_cmd(
    url: Annotated[str, typer.Argument(help="Discovery (/taxii2/) or API root URL.")],
    collection: Annotated[str, typer.Option(help="Collection id.")],
    db: Annotated[Path, typer.Option(help="Store to add partner_indicators to.")],
    user: User = None,
    password: Password = None,
    token: Token = None,
    source: Annotated[str | None, typer.Option(help="Partner name (default: title).")] = None,
    confidence: Annotated[int, typer.Option(min=0, max=100)] = 50,
    added_after: Annotated[str | None, typer.Option(help="Only objects added after.")] = None,
) -> None:
    """Fetch a partner's TAXII collection and import it.

    Password from DISTILLGUARD_TAXII_PASSWORD or a prompt; a token from
    DISTILLGUARD_TAXII_TOKEN (or --token)."""
    from distillguard.intel.taxii_client import pull

    user, password = _credentials(user, password, token)
    con = _connect(db, read_only=False)
    try:
        summary = pull(url, collection, user, password, con, token=token, source=source,
                       confidence=confidence, added_after=added_after)
    finally:
        con.close()
    typer.echo(f"{summary.added} new, {summary.unchanged} already known: {summary.by_kind}")


@app.command("push")
@_friendly
def push_cmd(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `intel export`.")],
    url: Annotated[str, typer.Argument(help="Discovery (/taxii2/) or API root URL.")],
    collection: Annotated[str, typer.Option(help="Collection id.")],
    user: User = None,
    password: Password = None,
    token: Token = None,
) -> None:
    """Publish a bundle to a TAXII collection (credentials as for `pull`)."""
    from distillguard.intel._common import IntelError
    from distillguard.intel.taxii_client import push_bundle

    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise IntelError(f"cannot read {bundle}: {exc.strerror}") from exc
    user, password = _credentials(user, password, token)
    status = push_bundle(url, collection, user, password, data, token=token)
    typer.echo(f"{status.status}: {status.success_count} added, {status.failure_count} failed")


@app.command("report")
@_friendly
def report_cmd(
    campaign: Annotated[str, typer.Option(help="Campaign id.")],
    results: Annotated[Path, typer.Option(help="Results dir holding campaigns.json.")],
    out: Annotated[Path, typer.Option(help="Output directory for the evidence package.")],
    key_file: KeyFile,
    db: Annotated[Path | None, typer.Option(help="Store (adds timeline, volumes).")] = None,
    producer: Producer = "unknown-provider",
    tlp: Annotated[str, typer.Option()] = "amber",
    reveal_ids: Annotated[bool, typer.Option(help="Show raw account ids in the HTML.")] = False,
) -> None:
    """Write an evidence package: report.html, bundle.json, manifest.json (SHA-256)."""
    from distillguard.intel.export import load_campaigns, select_campaigns
    from distillguard.intel.hashing import load_key
    from distillguard.intel.report import write_report

    key = load_key(key_file)
    chosen = select_campaigns(load_campaigns(results), [campaign])[0]
    con = _connect(db)
    try:
        manifest = write_report(chosen, out, key, producer, con=con, tlp=tlp,
                                reveal_ids=reveal_ids)
    finally:
        if con is not None:
            con.close()
    typer.echo(f"wrote evidence package {out} (manifest {manifest.name})")


@app.command("hash-password")
def hash_password_cmd(
    password: Annotated[str, typer.Option(prompt=True, hide_input=True,
                                          confirmation_prompt=True)],
) -> None:
    """Print a password hash for the TAXII users file."""
    from distillguard.intel.taxii_server import hash_password

    typer.echo(hash_password(password))


@app.command("new-token")
def new_token_cmd(
    name: Annotated[str, typer.Argument(help="Principal name (a partner, a feed).")],
    collection: Annotated[list[str] | None, typer.Option(help="Collection id to grant.")] = None,
    write: Annotated[bool, typer.Option(help="Grant write as well as read.")] = False,
) -> None:
    """Make a bearer token: prints the token once (give it to the partner) and the
    `tokens:` entry for the server config, which holds only its hash."""
    from distillguard.intel.taxii_server import hash_token, new_token

    token = new_token()
    cols = [str(c) for c in collection or []]
    typer.echo(f"token (shown once): {token}", err=True)
    typer.echo("tokens:")
    typer.echo(f"  {name}:")
    typer.echo(f'    token_hash: "{hash_token(token)}"')
    typer.echo(f"    read: {cols!r}".replace("'", '"'))
    typer.echo(f"    write: {cols if write else []!r}".replace("'", '"'))
