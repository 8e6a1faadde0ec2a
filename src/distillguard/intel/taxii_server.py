"""A small TAXII 2.1 server (FastAPI + DuckDB) for sharing campaign bundles privately.

Endpoints (TAXII 2.1 sections 4-5), all behind HTTP Basic auth, all answering
``application/taxii+json;version=2.1``::

    GET  /taxii2/                                             discovery
    GET  /{root}/                                             API root
    GET  /{root}/status/{status_id}/                          status of a POST
    GET  /{root}/collections/                                 collections this user may see
    GET  /{root}/collections/{cid}/                           one collection
    GET  /{root}/collections/{cid}/manifest/                  manifest (paged)
    GET  /{root}/collections/{cid}/objects/                   objects (paged, filtered)
    POST /{root}/collections/{cid}/objects/                   add an envelope → status
    GET  /{root}/collections/{cid}/objects/{oid}/             one object's versions
    DELETE /{root}/collections/{cid}/objects/{oid}/           delete (write permission)
    GET  /{root}/collections/{cid}/objects/{oid}/versions/    version list (paged)

Filters: ``limit`` + ``next`` (opaque), ``added_after``, ``match[id]``, ``match[type]``,
``match[version]`` (last (default), first, all or timestamps), ``match[spec_version]``.
Principals come from a YAML (or JSON) file (see docs/intel.md and :func:`load_server_config`):
*users* authenticate with HTTP Basic (PBKDF2 password hashes), *tokens* with
``Authorization: Bearer <token>`` (SHA-256 token hashes). Each principal has its own read and
write grants per collection and its own rate limit (429 + ``Retry-After`` when exceeded).
Failed authentications are also rate limited per client address. Logs name the principal,
never a credential.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import Response

from distillguard.intel._common import (
    TAXII_MEDIA_TYPE,
    IntelError,
    format_time,
    parse_time,
)

__all__ = [
    "hash_password",
    "verify_password",
    "new_token",
    "hash_token",
    "RateLimit",
    "RateLimiter",
    "Collection",
    "User",
    "ServerConfig",
    "load_server_config",
    "TaxiiStore",
    "create_app",
    "serve",
    "background_server",
]

#: Largest page a client gets, whatever ``limit`` it asks for.
MAX_PAGE = 1000
#: Largest POST body accepted (advertised as ``max_content_length``).
MAX_CONTENT_LENGTH = 10 * 1024 * 1024
#: PBKDF2 iterations for new password hashes (OWASP 2023 suggests 600k for SHA-256; we
#: cache successful checks in memory, so the cost is paid once per user and process).
PBKDF2_ITERATIONS = 600_000
#: Prefix of tokens made by :func:`new_token` (lets secret scanners recognise a leaked one).
TOKEN_PREFIX = "dgtaxii_"

log = logging.getLogger(__name__)


# --- users -----------------------------------------------------------------------------------


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`` for the users file."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2-sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2-sha256":
            return False
        got = hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8"), bytes.fromhex(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def new_token() -> str:
    """A fresh bearer token: ``dgtaxii_`` + 32 random bytes (URL-safe base64)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """``sha256$<hex>`` of a token, as stored in the server config.

    Tokens are 256-bit random strings, so a fast hash is enough (nothing to brute-force);
    the server keeps only this hash.
    """
    return "sha256$" + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` per ``per_seconds`` (a token bucket refilled continuously)."""

    requests: int
    per_seconds: float

    @classmethod
    def parse(cls, value: Any, where: str) -> RateLimit | None:
        """``{requests: N, per_seconds: S}``, ``"N/S"`` or ``null``/``off`` (no limit)."""
        if value is None or value in ("off", "none", False):
            return None
        try:
            if isinstance(value, dict):
                n, per = int(value["requests"]), float(value.get("per_seconds", 60))
            else:
                left, _, right = str(value).partition("/")
                n, per = int(left), float(right or 60)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntelError(f"{where}: rate_limit must be 'N/SECONDS' or "
                             "{requests: N, per_seconds: S}") from exc
        if n < 1 or not per > 0:
            raise IntelError(f"{where}: rate_limit needs requests >= 1 and per_seconds > 0")
        return cls(n, per)


class RateLimiter:
    """Token buckets keyed by principal (or client address): :meth:`take` returns 0 when
    the request may go ahead, else the seconds until it may.

    Buckets that have refilled completely are forgotten once more than ``max_keys`` exist,
    so many client addresses cannot grow the table without bound."""

    def __init__(self, clock: Any = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens, last refill, time at which the bucket is full again)
        self._buckets: dict[str, tuple[float, float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, limit: RateLimit, now: float) -> float:
        tokens, last, _ = self._buckets.get(key, (float(limit.requests), now, now))
        rate = limit.requests / limit.per_seconds
        return min(float(limit.requests), tokens + (now - last) * rate)

    def take(self, key: str, limit: RateLimit | None) -> float:
        if limit is None:
            return 0.0
        rate = limit.requests / limit.per_seconds
        with self._lock:
            now = self._clock()
            tokens = self._level(key, limit, now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            if key not in self._buckets and len(self._buckets) >= self._max_keys:
                for k in [k for k, (_, _, full) in self._buckets.items() if full <= now]:
                    del self._buckets[k]
            self._buckets[key] = (tokens, now, now + (limit.requests - tokens) / rate)
            return 0.0 if allowed else (1.0 - tokens) / rate

    def peek(self, key: str, limit: RateLimit | None) -> float:
        """Like :meth:`take` without taking: 0 when one request would be allowed now."""
        if limit is None:
            return 0.0
        with self._lock:
            tokens = self._level(key, limit, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) * limit.per_seconds / limit.requests

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class Collection:
    id: str
    title: str
    description: str = ""


@dataclass
class User:
    """A principal: a Basic-auth user (``password_hash``) or a bearer token
    (``token_hash``), with its collection grants and rate limit."""

    name: str
    password_hash: str = ""
    read: set[str] = field(default_factory=set)  # collection ids, or {"*"}
    write: set[str] = field(default_factory=set)
    token_hash: str = ""
    rate_limit: RateLimit | None = None

    def can_read(self, cid: str) -> bool:
        return "*" in self.read or cid in self.read

    def can_write(self, cid: str) -> bool:
        return "*" in self.write or cid in self.write


#: Default per-principal limit: a full pull of 100k objects (200 pages) fits in one window.
DEFAULT_RATE_LIMIT = RateLimit(600, 60.0)
#: Default limit on failed authentications per client address.
DEFAULT_AUTH_FAILURE_LIMIT = RateLimit(20, 60.0)


@dataclass
class ServerConfig:
    users: dict[str, User]
    collections: dict[str, Collection]
    api_root: str = "distillguard"
    title: str = "distillguard TAXII server"
    description: str = "LLM distillation campaign indicators"
    contact: str = ""
    tokens: dict[str, User] = field(default_factory=dict)  # token_hash -> principal
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT
    auth_failure_limit: RateLimit | None = DEFAULT_AUTH_FAILURE_LIMIT


def load_server_config(path: str | Path) -> ServerConfig:
    """Read the server config (YAML, or JSON, which is YAML)::

        api_root: distillguard            # optional
        title: ACME distillation intel    # optional
        rate_limit: 600/60                # per principal; default 600 requests / 60 s
        auth_failure_limit: 20/60         # failed logins per client address
        collections:
          - id: 1f3a...-uuid
            title: distillation-campaigns
            description: shared indicators
        users:                            # HTTP Basic
          partner-a:
            password_hash: "pbkdf2-sha256$600000$<salt>$<hash>"   # intel hash-password
            read: ["1f3a...-uuid"]     # or ["*"]
            write: []
        tokens:                           # Authorization: Bearer <token>
          partner-b-feed:
            token_hash: "sha256$<hex>"    # intel new-token
            read: ["1f3a...-uuid"]
            write: []
            rate_limit: 120/60            # optional override

    Plain-text passwords and tokens are refused; principal names must be unique.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise IntelError(f"cannot read users file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise IntelError(f"users file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise IntelError(f"users file {path} must be a mapping")
    default_limit = (RateLimit.parse(data["rate_limit"], "rate_limit") if "rate_limit" in data
                     else DEFAULT_RATE_LIMIT)
    failure_limit = (RateLimit.parse(data["auth_failure_limit"], "auth_failure_limit")
                     if "auth_failure_limit" in data else DEFAULT_AUTH_FAILURE_LIMIT)
    collections: dict[str, Collection] = {}
    for c in data.get("collections") or []:
        if not isinstance(c, dict) or not c.get("id"):
            raise IntelError("every collection needs an id")
        cid = str(c["id"])
        collections[cid] = Collection(cid, str(c.get("title") or cid), str(c.get("description") or ""))

    def grants(name: str, u: dict[str, Any]) -> tuple[set[str], set[str], RateLimit | None]:
        read, write = u.get("read") or [], u.get("write") or []
        if not isinstance(read, list) or not isinstance(write, list):
            raise IntelError(f"{name!r}: read and write must be lists of collection ids")
        r, w = {str(x) for x in read}, {str(x) for x in write}
        for cid in (r | w) - {"*"}:
            collections.setdefault(cid, Collection(cid, cid))
        limit = (RateLimit.parse(u["rate_limit"], f"{name!r}") if "rate_limit" in u
                 else default_limit)
        return r, w, limit

    users: dict[str, User] = {}
    for name, u in (data.get("users") or {}).items():
        if not isinstance(u, dict):
            raise IntelError(f"user {name!r} must be a mapping")
        if "password" in u:
            raise IntelError(
                f"user {name!r}: plain-text 'password' is not allowed; store 'password_hash' "
                "(distillguard intel hash-password)"
            )
        if not str(u.get("password_hash", "")).startswith("pbkdf2-sha256$"):
            raise IntelError(f"user {name!r} needs a pbkdf2-sha256 password_hash")
        read, write, limit = grants(str(name), u)
        users[str(name)] = User(str(name), str(u["password_hash"]), read, write,
                                rate_limit=limit)
    tokens: dict[str, User] = {}
    for name, t in (data.get("tokens") or {}).items():
        if not isinstance(t, dict):
            raise IntelError(f"token {name!r} must be a mapping")
        if "token" in t:
            raise IntelError(f"token {name!r}: plain-text 'token' is not allowed; store "
                             "'token_hash' (distillguard intel new-token)")
        th = str(t.get("token_hash", ""))
        scheme, _, hexdigest = th.partition("$")
        if scheme != "sha256" or len(hexdigest) != 64 or any(
            ch not in "0123456789abcdef" for ch in hexdigest
        ):
            raise IntelError(f"token {name!r} needs a token_hash 'sha256$<64 hex>'")
        if str(name) in users:
            raise IntelError(f"{name!r} is both a user and a token; names must be unique")
        if th in tokens:
            raise IntelError(f"token {name!r} has the same hash as {tokens[th].name!r}")
        read, write, limit = grants(str(name), t)
        tokens[th] = User(str(name), "", read, write, token_hash=th, rate_limit=limit)
    if not users and not tokens:
        raise IntelError(f"users file {path} defines no users or tokens")
    return ServerConfig(
        users=users,
        collections=collections,
        api_root=str(data.get("api_root") or "distillguard").strip("/"),
        title=str(data.get("title") or "distillguard TAXII server"),
        description=str(data.get("description") or "LLM distillation campaign indicators"),
        contact=str(data.get("contact") or ""),
        tokens=tokens,
        rate_limit=default_limit,
        auth_failure_limit=failure_limit,
    )


# --- storage ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taxii_objects (
    collection_id VARCHAR, id VARCHAR, type VARCHAR, spec_version VARCHAR,
    version VARCHAR, version_ts TIMESTAMP, date_added TIMESTAMP, body VARCHAR
);
CREATE TABLE IF NOT EXISTS taxii_status (id VARCHAR, collection_id VARCHAR, body VARCHAR);
"""


def _ts_text(dt: datetime) -> str:
    return format_time(dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt, "us")


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


class TaxiiStore:
    """Objects and statuses in DuckDB (one file, or ``:memory:``), one connection + lock.

    Keep it separate from the analysis store: the server holds the file open.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        import duckdb

        self.path = str(path)
        self._con = duckdb.connect(self.path)
        self._lock = threading.Lock()
        self._last_added: datetime | None = None
        with self._lock:
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self._con.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _q(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._con.execute(sql, list(params)).fetchall()

    def _now(self) -> datetime:
        """Strictly increasing ``date_added`` so ``added_after`` never skips a batch."""
        now = datetime.now(UTC).replace(tzinfo=None)
        if self._last_added is not None and now <= self._last_added:
            now = self._last_added + timedelta(microseconds=1)
        self._last_added = now
        return now

    def add(self, cid: str, objects: list[Any]) -> dict[str, Any]:
        """Add objects; returns a TAXII status resource (stored for GET status)."""
        import stix2

        successes, failures = [], []
        with self._lock:
            added_at = self._now()
            self._con.execute("BEGIN TRANSACTION")
            try:
                for obj in objects:
                    oid = obj.get("id") if isinstance(obj, dict) else None
                    try:
                        if not isinstance(obj, dict):
                            raise ValueError("not a JSON object")
                        stix2.parse(obj, allow_custom=True)
                        version = str(obj.get("modified") or obj.get("created") or "")
                        vts = _naive(parse_time(version)) if version else None
                    except Exception as exc:  # stix2 raises many error types; report them all
                        failures.append({"id": str(oid or "unknown"),
                                         "message": str(exc)[:300]})
                        continue
                    exists = self._con.execute(
                        "SELECT count(*) FROM taxii_objects WHERE collection_id = ? AND id = ? "
                        "AND version = ?", [cid, oid, version]
                    ).fetchall()[0][0]
                    if not exists:
                        self._con.execute(
                            "INSERT INTO taxii_objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [cid, oid, obj["type"], str(obj.get("spec_version", "2.1")), version,
                             vts, added_at, orjson.dumps(obj).decode()],
                        )
                    successes.append({"id": oid, "version": version or _ts_text(added_at)})
                self._con.execute("COMMIT")
            except Exception:
                self._con.execute("ROLLBACK")
                raise
            status = {
                "id": str(uuid.uuid4()),
                "status": "complete",
                "request_timestamp": _ts_text(added_at),
                "total_count": len(objects),
                "success_count": len(successes),
                "successes": successes,
                "failure_count": len(failures),
                "failures": failures,
                "pending_count": 0,
                "pendings": [],
            }
            self._con.execute("INSERT INTO taxii_status VALUES (?, ?, ?)",
                              [status["id"], cid, orjson.dumps(status).decode()])
        return status

    def status(self, status_id: str) -> tuple[str, dict[str, Any]] | None:
        rows = self._q("SELECT collection_id, body FROM taxii_status WHERE id = ?", [status_id])
        return (rows[0][0], orjson.loads(rows[0][1])) if rows else None

    def query(
        self,
        cid: str,
        *,
        ids: list[str] | None = None,
        types: list[str] | None = None,
        versions: list[str] | None = None,
        spec_versions: list[str] | None = None,
        added_after: datetime | None = None,
        limit: int = MAX_PAGE,
        offset: int = 0,
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """Rows (id, version, version_ts, date_added, body) matching the TAXII filters,
        ordered by date_added; plus whether more rows follow."""
        where, params = ["collection_id = ?"], [cid]
        if ids:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            params += ids
        if types:
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params += types
        if spec_versions:
            where.append(f"spec_version IN ({', '.join('?' * len(spec_versions))})")
            params += spec_versions
        versions = versions or ["last"]
        vconds: list[str] = []
        vparams: list[Any] = []
        for v in versions:
            if v == "all":
                vconds = ["TRUE"]
                vparams = []
                break
            if v == "last":
                vconds.append("rn_last = 1")
            elif v == "first":
                vconds.append("rn_first = 1")
            else:
                vconds.append("version_ts = ?")
                vparams.append(_naive(parse_time(v)))
        outer, oparams = [f"({' OR '.join(vconds)})"], list(vparams)
        if added_after is not None:
            outer.append("date_added > ?")
            oparams.append(_naive(added_after))
        sql = f"""
            WITH base AS (
                SELECT id, version, version_ts, date_added, body,
                       row_number() OVER (PARTITION BY id ORDER BY version_ts DESC NULLS LAST,
                                          date_added DESC) AS rn_last,
                       row_number() OVER (PARTITION BY id ORDER BY version_ts ASC NULLS LAST,
                                          date_added ASC) AS rn_first
                FROM taxii_objects WHERE {' AND '.join(where)}
            )
            SELECT id, version, version_ts, date_added, body FROM base
            WHERE {' AND '.join(outer)}
            ORDER BY date_added, id, version_ts
            LIMIT ? OFFSET ?
        """
        rows = self._q(sql, [*params, *oparams, limit + 1, offset])
        return rows[:limit], len(rows) > limit

    def delete(self, cid: str, oid: str, versions: list[str] | None) -> int:
        rows, _ = self.query(cid, ids=[oid], versions=versions or ["all"], limit=10**6)
        for _, version, *_rest in rows:
            self._q("DELETE FROM taxii_objects WHERE collection_id = ? AND id = ? AND version = ?",
                    [cid, oid, version])
        return len(rows)


# --- HTTP ------------------------------------------------------------------------------------


def _encode_next(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _decode_next(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "o":
            raise ValueError(raw)
        return max(0, int(value))
    except ValueError as exc:
        raise IntelError("invalid next token") from exc


def create_app(store: TaxiiStore, config: ServerConfig) -> Any:
    """The FastAPI application serving ``store`` under ``config`` (users, collections)."""
    app = FastAPI(title=config.title, docs_url=None, redoc_url=None, openapi_url=None)
    root = config.api_root
    verified: dict[str, str] = {}  # user -> sha256(password) of a successful check
    verified_lock = threading.Lock()
    limiter = RateLimiter()
    # Unknown users are checked against this hash, so they cost what known ones cost.
    iterations = [int(u.password_hash.split("$")[1]) for u in config.users.values()
                  if u.password_hash.count("$") == 3 and u.password_hash.split("$")[1].isdigit()]
    dummy_hash = hash_password(secrets.token_hex(16), max(iterations, default=1000))

    class TaxiiError(Exception):
        def __init__(self, status: int, title: str, description: str = "",
                     headers: dict[str, str] | None = None) -> None:
            self.status, self.title, self.description = status, title, description
            self.headers = headers

    def taxii(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type=TAXII_MEDIA_TYPE,
                        headers=headers)

    @app.exception_handler(TaxiiError)
    async def _taxii_error(_: Request, exc: TaxiiError) -> Response:
        headers = dict(exc.headers or {})
        if exc.status == 401:
            headers["WWW-Authenticate"] = f'Basic realm="{root}", Bearer realm="{root}"'
        return taxii({"title": exc.title, "description": exc.description,
                      "http_status": str(exc.status)}, exc.status, headers or None)

    @app.exception_handler(IntelError)
    async def _intel_error(_: Request, exc: IntelError) -> Response:
        return taxii({"title": "Bad request", "description": str(exc), "http_status": "400"}, 400)

    @app.middleware("http")
    async def _access_log(request: Request, call_next: Any) -> Any:
        # One line per request naming the principal (never a credential; the query string,
        # which carries only TAXII filters, is left out too).
        response = await call_next(request)
        log.info("%s %s %s -> %d", getattr(request.state, "principal", "-"), request.method,
                 request.url.path, response.status_code)
        return response

    def too_many(wait: float) -> TaxiiError:
        seconds = max(1, math.ceil(wait))
        return TaxiiError(429, "Too many requests", f"retry after {seconds} s",
                          {"Retry-After": str(seconds)})

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def failed(request: Request, reason: str) -> TaxiiError:
        client = client_of(request)
        log.warning("TAXII authentication failed from %s: %s", client, reason)
        limiter.take(f"auth-fail:{client}", config.auth_failure_limit)
        return TaxiiError(401, reason)

    def principal(request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, payload = header.partition(" ")
        scheme, payload = scheme.lower(), payload.strip()
        if scheme == "bearer" and payload:
            th = hash_token(payload)
            user = config.tokens.get(th)
            if user is None or not hmac.compare_digest(user.token_hash, th):
                raise failed(request, "Invalid credentials")
            return user
        if scheme != "basic" or not payload:
            raise failed(request, "Authentication required")
        try:
            name, _, password = base64.b64decode(payload, validate=True).decode(
                "utf-8").partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise failed(request, "Malformed credentials") from exc
        user = config.users.get(name)
        if user is None:
            verify_password(password, dummy_hash)  # same cost as a known user: no oracle
            raise failed(request, "Invalid credentials")
        quick = hashlib.sha256(f"{user.password_hash}\x00{password}".encode()).hexdigest()
        with verified_lock:
            cached = verified.get(name)
        if cached is None or not hmac.compare_digest(cached, quick):
            if not verify_password(password, user.password_hash):
                raise failed(request, "Invalid credentials")
            with verified_lock:
                verified[name] = quick
        return user

    def authenticate(request: Request) -> User:
        """The request's principal, after the failed-login and per-principal rate limits."""
        client = client_of(request)
        # A client that keeps failing is refused before its credentials cost a KDF run.
        wait = limiter.peek(f"auth-fail:{client}", config.auth_failure_limit)
        if wait > 0:
            log.warning("TAXII client %s rate limited after failed authentications", client)
            raise too_many(wait)
        user = principal(request)
        request.state.principal = user.name
        wait = limiter.take(f"principal:{user.name}", user.rate_limit)
        if wait > 0:
            log.warning("TAXII principal %s rate limited (%s)", user.name,
                        f"{user.rate_limit.requests}/{user.rate_limit.per_seconds:g}s"
                        if user.rate_limit else "-")
            raise too_many(wait)
        check_accept(request)
        return user

    def check_accept(request: Request) -> None:
        accept = request.headers.get("accept", "*/*").replace(" ", "")
        ok = any(
            part.split(";")[0] in ("*/*", "application/*", "application/taxii+json")
            and ("version=" not in part or "version=2.1" in part)
            for part in accept.split(",")
        )
        if not ok:
            raise TaxiiError(406, "Not acceptable", f"use Accept: {TAXII_MEDIA_TYPE}")

    def collection(cid: str, user: User, write: bool = False) -> Collection:
        col = config.collections.get(cid)
        if col is None or not (user.can_read(cid) or user.can_write(cid)):
            raise TaxiiError(404, "Collection not found", cid)
        if write and not user.can_write(cid):
            raise TaxiiError(403, "Forbidden", f"user {user.name} may not write to {cid}")
        if not write and not user.can_read(cid):
            raise TaxiiError(403, "Forbidden", f"user {user.name} may not read {cid}")
        return col

    def col_resource(col: Collection, user: User) -> dict[str, Any]:
        return {
            "id": col.id,
            "title": col.title,
            "description": col.description,
            "can_read": user.can_read(col.id),
            "can_write": user.can_write(col.id),
            "media_types": ["application/stix+json;version=2.1"],
        }

    def filters(request: Request) -> dict[str, Any]:
        q = request.query_params

        def multi(name: str) -> list[str] | None:
            vals = [v.strip() for raw in q.getlist(name) for v in raw.split(",") if v.strip()]
            return vals or None

        try:
            limit = min(MAX_PAGE, max(1, int(q["limit"]))) if q.get("limit") else MAX_PAGE
        except ValueError as exc:
            raise TaxiiError(400, "Bad limit", str(q.get("limit"))) from exc
        return {
            "ids": multi("match[id]"),
            "types": multi("match[type]"),
            "versions": multi("match[version]"),
            "spec_versions": multi("match[spec_version]"),
            "added_after": parse_time(q["added_after"]) if q.get("added_after") else None,
            "limit": limit,
            "offset": _decode_next(q["next"]) if q.get("next") else 0,
        }

    def page_headers(rows: list[tuple[Any, ...]]) -> dict[str, str]:
        if not rows:
            return {}
        added = [r[3] for r in rows]
        return {"X-TAXII-Date-Added-First": _ts_text(min(added)),
                "X-TAXII-Date-Added-Last": _ts_text(max(added))}

    def envelope(rows: list[tuple[Any, ...]], more: bool, f: dict[str, Any]) -> Response:
        body: dict[str, Any] = {"more": more}
        if more:
            body["next"] = _encode_next(f["offset"] + f["limit"])
        if rows:
            body["objects"] = [orjson.loads(r[4]) for r in rows]
        return taxii(body, headers=page_headers(rows))

    @app.get("/taxii2/")
    def discovery(request: Request) -> Response:
        authenticate(request)
        base = str(request.base_url).rstrip("/")
        out = {"title": config.title, "description": config.description,
               "default": f"{base}/{root}/", "api_roots": [f"{base}/{root}/"]}
        if config.contact:
            out["contact"] = config.contact
        return taxii(out)

    @app.get(f"/{root}/")
    def api_root(request: Request) -> Response:
        authenticate(request)
        return taxii({"title": config.title, "description": config.description,
                      "versions": [TAXII_MEDIA_TYPE], "max_content_length": MAX_CONTENT_LENGTH})

    @app.get(f"/{root}/status/{{status_id}}/")
    def get_status(status_id: str, request: Request) -> Response:
        user = authenticate(request)
        found = store.status(status_id)
        if found is None or not (user.can_read(found[0]) or user.can_write(found[0])):
            raise TaxiiError(404, "Status not found", status_id)
        return taxii(found[1])

    @app.get(f"/{root}/collections/")
    def collections(request: Request) -> Response:
        user = authenticate(request)
        cols = [col_resource(c, user) for c in config.collections.values()
                if user.can_read(c.id) or user.can_write(c.id)]
        return taxii({"collections": cols} if cols else {})

    @app.get(f"/{root}/collections/{{cid}}/")
    def get_collection(cid: str, request: Request) -> Response:
        user = authenticate(request)
        col = config.collections.get(cid)
        if col is None or not (user.can_read(cid) or user.can_write(cid)):
            raise TaxiiError(404, "Collection not found", cid)
        return taxii(col_resource(col, user))

    @app.get(f"/{root}/collections/{{cid}}/manifest/")
    def manifest(cid: str, request: Request) -> Response:
        user = authenticate(request)
        collection(cid, user)
        f = filters(request)
        rows, more = store.query(cid, **f)
        body: dict[str, Any] = {"more": more}
        if more:
            body["next"] = _encode_next(f["offset"] + f["limit"])
        if rows:
            body["objects"] = [
                {"id": r[0], "date_added": _ts_text(r[3]),
                 "version": r[1] or _ts_text(r[3]),
                 "media_type": "application/stix+json;version=2.1"}
                for r in rows
            ]
        return taxii(body, headers=page_headers(rows))

    @app.get(f"/{root}/collections/{{cid}}/objects/")
    def get_objects(cid: str, request: Request) -> Response:
        user = authenticate(request)
        collection(cid, user)
        f = filters(request)
        rows, more = store.query(cid, **f)
        return envelope(rows, more, f)

    @app.post(f"/{root}/collections/{{cid}}/objects/")
    async def add_objects(cid: str, request: Request) -> Response:
        user = authenticate(request)
        collection(cid, user, write=True)
        ctype = request.headers.get("content-type", "").replace(" ", "")
        if ctype.split(";")[0] != "application/taxii+json" or (
            "version=" in ctype and "version=2.1" not in ctype
        ):
            raise TaxiiError(415, "Unsupported media type", f"use {TAXII_MEDIA_TYPE}")
        body = await request.body()
        if len(body) > MAX_CONTENT_LENGTH:
            raise TaxiiError(413, "Request too large", f"max {MAX_CONTENT_LENGTH} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TaxiiError(400, "Invalid JSON", str(exc)) from exc
        if not isinstance(data, dict) or not isinstance(data.get("objects", []), list):
            raise TaxiiError(400, "Expected an envelope", 'body must be {"objects": [...]}')
        status = store.add(cid, data.get("objects", []))
        return taxii(status, 202)

    @app.get(f"/{root}/collections/{{cid}}/objects/{{oid}}/")
    def get_object(cid: str, oid: str, request: Request) -> Response:
        user = authenticate(request)
        collection(cid, user)
        f = filters(request)
        f["ids"] = [oid]
        rows, more = store.query(cid, **f)
        if not rows and f["offset"] == 0:
            raise TaxiiError(404, "Object not found", oid)
        return envelope(rows, more, f)

    @app.delete(f"/{root}/collections/{{cid}}/objects/{{oid}}/")
    def delete_object(cid: str, oid: str, request: Request) -> Response:
        user = authenticate(request)
        collection(cid, user, write=True)
        f = filters(request)
        if not store.delete(cid, oid, f["versions"]):
            raise TaxiiError(404, "Object not found", oid)
        return Response(status_code=200, media_type=TAXII_MEDIA_TYPE)

    @app.get(f"/{root}/collections/{{cid}}/objects/{{oid}}/versions/")
    def versions(cid: str, oid: str, request: Request) -> Response:
        user = authenticate(request)
        collection(cid, user)
        f = filters(request)
        f["ids"], f["versions"] = [oid], ["all"]
        rows, more = store.query(cid, **f)
        if not rows and f["offset"] == 0:
            raise TaxiiError(404, "Object not found", oid)
        body: dict[str, Any] = {"more": more, "versions": [r[1] for r in sorted(rows, key=lambda r: (r[2] is None, r[2]))]}
        if more:
            body["next"] = _encode_next(f["offset"] + f["limit"])
        return taxii(body, headers=page_headers(rows))

    return app


def serve(db: str | Path, users: str | Path, host: str = "127.0.0.1", port: int = 9000) -> None:
    """Run the server with uvicorn until interrupted (blocking)."""
    import uvicorn

    config = load_server_config(users)
    store = TaxiiStore(db)
    try:
        uvicorn.run(create_app(store, config), host=host, port=port, log_level="info")
    finally:
        store.close()


@contextlib.contextmanager
def background_server(
    store: TaxiiStore, config: ServerConfig, host: str = "127.0.0.1", port: int = 0,
    log_level: str = "warning",
) -> Iterator[str]:
    """Run the server in a daemon thread (tests, two-provider benchmarks); yields its base
    URL. ``port=0`` picks a free port; ``log_level="info"`` logs as :func:`serve` does."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(store, config), host=host, port=port,
                                        log_level=log_level))
    thread = threading.Thread(target=srv.run, daemon=True, name=f"taxii-{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not srv.started:
        srv.should_exit = True
        raise IntelError(f"TAXII server did not start on {host}:{port}")
    try:
        yield f"http://{host}:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=5)
