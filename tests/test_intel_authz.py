"""Who may see what on the TAXII server: bearer tokens and users with per-collection grants,
per-principal rate limits, and logs free of credentials. A real server on 127.0.0.1, real
HTTP clients (httpx and taxii2-client)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest

pytest.importorskip("stix2")
pytest.importorskip("taxii2client")
pytest.importorskip("uvicorn")

from distillguard.intel import export_bundle, load_campaigns  # noqa: E402
from distillguard.intel._common import TAXII_MEDIA_TYPE, IntelError  # noqa: E402
from distillguard.intel.taxii_client import pull, push_bundle  # noqa: E402
from distillguard.intel.taxii_server import (  # noqa: E402
    RateLimit,
    RateLimiter,
    TaxiiStore,
    background_server,
    hash_password,
    hash_token,
    load_server_config,
    new_token,
)

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
KEY = b"test-sharing-group-key-0123456789"
COL_A = "0a0a0a0a-1111-4111-8111-aaaaaaaaaaaa"  # partner A's collection
COL_B = "0b0b0b0b-2222-4222-8222-bbbbbbbbbbbb"  # partner B's collection
TOKENS = {name: new_token() for name in ("a-rw", "a-ro", "b-rw", "limited")}
ROOT = "distillguard"


def _config_text(extra: str = "") -> str:
    return f"""
collections:
  - {{id: "{COL_A}", title: partner-a}}
  - {{id: "{COL_B}", title: partner-b}}
{extra}
users:
  admin-b:
    password_hash: "{hash_password('admin-b-pw', 1000)}"
    read: ["{COL_B}"]
    write: ["{COL_B}"]
tokens:
  a-rw:
    token_hash: "{hash_token(TOKENS['a-rw'])}"
    read: ["{COL_A}"]
    write: ["{COL_A}"]
  a-ro:
    token_hash: "{hash_token(TOKENS['a-ro'])}"
    read: ["{COL_A}"]
  b-rw:
    token_hash: "{hash_token(TOKENS['b-rw'])}"
    read: ["{COL_B}"]
    write: ["{COL_B}"]
  limited:
    token_hash: "{hash_token(TOKENS['limited'])}"
    read: ["{COL_A}"]
    rate_limit: 3/60
"""


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    return orjson.loads(export_bundle(load_campaigns(FIXTURES), None, KEY, "ACME AI").serialize())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundle: dict[str, Any]) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("authz")
    cfg = tmp / "tokens.yaml"
    cfg.write_text(_config_text(), encoding="utf-8")
    store = TaxiiStore(tmp / "taxii.duckdb")
    with background_server(store, load_server_config(cfg)) as url:
        # each partner publishes its own intel
        for tok, col in (("a-rw", COL_A), ("b-rw", COL_B)):
            st = push_bundle(f"{url}/{ROOT}/", col, None, None, bundle, token=TOKENS[tok])
            assert st.success_count == len(bundle["objects"])
        yield url
    store.close()


def _bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}", "Accept": TAXII_MEDIA_TYPE}


def _basic(user: str, pw: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{pw}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Accept": TAXII_MEDIA_TYPE}


def _requests(url: str, col: str, oid: str, status_id: str,
              envelope: bytes) -> list[tuple[str, str, str, bytes | None]]:
    """(label, method, url, body) of every collection-scoped endpoint."""
    c = f"{url}/{ROOT}/collections/{col}"
    return [
        ("collection", "GET", f"{c}/", None),
        ("manifest", "GET", f"{c}/manifest/", None),
        ("objects", "GET", f"{c}/objects/", None),
        ("object", "GET", f"{c}/objects/{oid}/", None),
        ("versions", "GET", f"{c}/objects/{oid}/versions/", None),
        ("status", "GET", f"{url}/{ROOT}/status/{status_id}/", None),
        ("add", "POST", f"{c}/objects/", envelope),
        ("delete", "DELETE", f"{c}/objects/{oid}/", None),
    ]


def _status_of_post(url: str, col: str, headers: dict[str, str], envelope: bytes) -> str:
    r = httpx.post(f"{url}/{ROOT}/collections/{col}/objects/", content=envelope,
                   headers={**headers, "Content-Type": TAXII_MEDIA_TYPE})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_authorization_matrix(server: str, bundle: dict[str, Any]) -> None:
    """Every collection endpoint under every principal: a partner's token gets 404 on the
    other partner's collection (it cannot even learn it exists), a read-only token gets 403
    on POST and DELETE, and nothing else changes the collection."""
    ident = next(o for o in bundle["objects"] if o["type"] == "identity")
    envelope = orjson.dumps({"objects": [ident]})
    status_a = _status_of_post(server, COL_A, _bearer("a-rw"), envelope)
    status_b = _status_of_post(server, COL_B, _bearer("b-rw"), envelope)
    expected: dict[tuple[str, str], dict[str, int]] = {
        # (principal, collection) -> status per endpoint
        ("a-rw", COL_A): {"collection": 200, "manifest": 200, "objects": 200, "object": 200,
                          "versions": 200, "status": 200, "add": 202, "delete": 200},
        ("a-ro", COL_A): {"collection": 200, "manifest": 200, "objects": 200, "object": 200,
                          "versions": 200, "status": 200, "add": 403, "delete": 403},
        ("a-rw", COL_B): dict.fromkeys(("collection", "manifest", "objects", "object",
                                        "versions", "status", "add", "delete"), 404),
        ("a-ro", COL_B): dict.fromkeys(("collection", "manifest", "objects", "object",
                                        "versions", "status", "add", "delete"), 404),
        ("b-rw", COL_A): dict.fromkeys(("collection", "manifest", "objects", "object",
                                        "versions", "status", "add", "delete"), 404),
    }
    seen: dict[tuple[str, str], dict[str, int]] = {}
    for (who, col), _ in expected.items():
        headers = _bearer(who)
        got: dict[str, int] = {}
        # the identity is there before each principal's turn (a-rw's DELETE removes it)
        _status_of_post(server, col, _bearer("a-rw" if col == COL_A else "b-rw"), envelope)
        for label, method, u, body in _requests(server, col, ident["id"],
                                                 status_a if col == COL_A else status_b,
                                                 envelope):
            h = {**headers, "Content-Type": TAXII_MEDIA_TYPE} if body else headers
            r = httpx.request(method, u, content=body, headers=h)
            got[label] = r.status_code
            if r.status_code in (403, 404):
                assert r.headers["content-type"] == TAXII_MEDIA_TYPE
                assert COL_B not in r.text or col == COL_B  # no leak of other ids
        seen[(who, col)] = got
    assert seen == expected
    # B's objects are untouched by everything A tried
    objs = httpx.get(f"{server}/{ROOT}/collections/{COL_B}/objects/",
                     headers=_bearer("b-rw")).json()["objects"]
    assert {o["id"] for o in objs} == {o["id"] for o in bundle["objects"]}


def test_collections_listing_is_per_principal(server: str) -> None:
    def listed(headers: dict[str, str]) -> dict[str, tuple[bool, bool]]:
        r = httpx.get(f"{server}/{ROOT}/collections/", headers=headers)
        assert r.status_code == 200
        return {c["id"]: (c["can_read"], c["can_write"])
                for c in r.json().get("collections", [])}

    assert listed(_bearer("a-rw")) == {COL_A: (True, True)}
    assert listed(_bearer("a-ro")) == {COL_A: (True, False)}
    assert listed(_bearer("b-rw")) == {COL_B: (True, True)}
    assert listed(_basic("admin-b", "admin-b-pw")) == {COL_B: (True, True)}


def test_bad_credentials_are_refused(server: str) -> None:
    url = f"{server}/{ROOT}/collections/{COL_A}/objects/"
    for headers in (
        {"Accept": TAXII_MEDIA_TYPE},                                        # none
        {"Authorization": "Bearer", "Accept": TAXII_MEDIA_TYPE},             # empty
        {"Authorization": f"Bearer {TOKENS['a-rw']}x", "Accept": TAXII_MEDIA_TYPE},
        {"Authorization": f"Bearer {hash_token(TOKENS['a-rw'])}",            # the stored hash
         "Accept": TAXII_MEDIA_TYPE},
        _basic("a-rw", TOKENS["a-rw"]),                                      # token as password
        _basic("admin-b", "wrong"),
        {"Authorization": "Basic !!!notbase64", "Accept": TAXII_MEDIA_TYPE},
    ):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, headers
        assert "bearer" in r.headers["www-authenticate"].lower()


def test_taxii2_client_with_tokens(server: str, bundle: dict[str, Any]) -> None:
    """The reference client pulls with a read-only token, cannot push with it, and cannot
    open the other partner's collection."""
    con = duckdb.connect()
    summary = pull(f"{server}/taxii2/", COL_A, None, None, con, token=TOKENS["a-ro"],
                   source="A")
    assert summary.added > 0
    with pytest.raises(IntelError):
        push_bundle(f"{server}/{ROOT}/", COL_A, None, None, bundle, token=TOKENS["a-ro"])
    with pytest.raises(IntelError, match="not found"):
        pull(f"{server}/taxii2/", COL_B, None, None, con, token=TOKENS["a-rw"], source="B")


def test_config_refuses_plain_and_malformed_tokens(tmp_path: Path) -> None:
    cases = {
        "plain": f'tokens:\n  x:\n    token: "{TOKENS["a-rw"]}"\n    read: ["*"]\n',
        "short": 'tokens:\n  x:\n    token_hash: "sha256$abc"\n',
        "dup": (f'tokens:\n  x:\n    token_hash: "{hash_token("t")}"\n'
                f'  y:\n    token_hash: "{hash_token("t")}"\n'),
        "clash": (f'users:\n  x:\n    password_hash: "{hash_password("p", 1000)}"\n'
                  f'tokens:\n  x:\n    token_hash: "{hash_token("t")}"\n'),
        "rate": f'tokens:\n  x:\n    token_hash: "{hash_token("t")}"\n    rate_limit: 0/60\n',
        "grants": f'tokens:\n  x:\n    token_hash: "{hash_token("t")}"\n    read: "*"\n',
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(IntelError):
            load_server_config(p)
    # JSON is accepted too (YAML is a superset)
    p = tmp_path / "ok.json"
    p.write_text(orjson.dumps({"tokens": {"feed": {"token_hash": hash_token("t"),
                                                    "read": [COL_A]}}}).decode())
    cfg = load_server_config(p)
    assert cfg.tokens[hash_token("t")].can_read(COL_A)
    assert not cfg.tokens[hash_token("t")].can_write(COL_A)


# --- rate limits -----------------------------------------------------------------------------


def test_rate_limit_is_per_token(server: str) -> None:
    """``limited`` may make 3 requests a minute: the 4th gets 429 with Retry-After (20 s:
    one request's worth of refill); another token on the same collection is unaffected."""
    url = f"{server}/{ROOT}/collections/{COL_A}/objects/"
    codes = [httpx.get(url, headers=_bearer("limited")).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    r = httpx.get(url, headers=_bearer("limited"))
    assert r.status_code == 429
    assert r.headers["content-type"] == TAXII_MEDIA_TYPE
    assert 19 <= int(r.headers["retry-after"]) <= 20
    assert r.json()["http_status"] == "429"
    assert httpx.get(url, headers=_bearer("a-ro")).status_code == 200


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limit = RateLimit(2, 10.0)  # one request every 5 s after a burst of 2
    assert [limiter.take("t", limit) for _ in range(2)] == [0.0, 0.0]
    wait = limiter.take("t", limit)
    assert wait == pytest.approx(5.0)
    assert limiter.take("other", limit) == 0.0  # buckets are per key
    now[0] = 4.9
    assert limiter.take("t", limit) > 0
    now[0] = 5.0  # a refused request does not push the refill back
    assert limiter.peek("t", limit) == 0.0
    assert limiter.take("t", limit) == 0.0
    assert limiter.take("t", None) == 0.0  # no limit configured
    # many addresses do not grow the table without bound: refilled buckets are forgotten
    small = RateLimiter(clock=lambda: now[0], max_keys=100)
    for i in range(1000):
        now[0] = 100.0 + i
        small.take(f"auth-fail:10.0.{i // 256}.{i % 256}", limit)
    assert len(small) <= 100
    assert RateLimit.parse("120/60", "x") == RateLimit(120, 60.0)
    assert RateLimit.parse({"requests": 5, "per_seconds": 1}, "x") == RateLimit(5, 1.0)
    assert RateLimit.parse("off", "x") is None


@pytest.fixture()
def strict_server(tmp_path: Path) -> Iterator[str]:
    cfg = tmp_path / "tokens.yaml"
    cfg.write_text(_config_text("rate_limit: 60/600\nauth_failure_limit: 5/60\n"),
                   encoding="utf-8")
    store = TaxiiStore()
    with background_server(store, load_server_config(cfg)) as url:
        yield url
    store.close()


def test_burst_is_cut_at_the_limit(strict_server: str) -> None:
    """A burst of 100 requests from a token allowed 60 per 10 minutes: exactly 60 answered,
    40 refused with 429 + Retry-After."""
    url = f"{strict_server}/{ROOT}/collections/{COL_A}/objects/"
    with httpx.Client(headers=_bearer("a-ro")) as client:
        responses = [client.get(url) for _ in range(100)]
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 60 and codes.count(429) == 40
    assert codes[:60] == [200] * 60
    assert all(1 <= int(r.headers["retry-after"]) <= 10 for r in responses[60:])
    # the other partner's token still has its whole allowance
    b = f"{strict_server}/{ROOT}/collections/{COL_B}/objects/"
    assert httpx.get(b, headers=_bearer("b-rw")).status_code == 200


def test_failed_logins_are_limited_per_client(strict_server: str) -> None:
    """After 5 failed authentications a client address gets 429 before any credential is
    checked (no password guessing at KDF speed), valid credentials included."""
    url = f"{strict_server}/{ROOT}/collections/{COL_B}/objects/"
    codes = [httpx.get(url, headers=_basic("admin-b", f"guess-{i}")).status_code
             for i in range(5)]
    assert codes == [401] * 5
    r = httpx.get(url, headers=_basic("admin-b", "guess-5"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert httpx.get(url, headers=_basic("admin-b", "admin-b-pw")).status_code == 429


def test_cli_new_token_push_pull(tmp_path: Path, bundle: dict[str, Any]) -> None:
    """`intel new-token` prints the token once (stderr) and a config entry holding only its
    hash; `intel push` / `intel pull` use it from DISTILLGUARD_TAXII_TOKEN."""
    import yaml
    from typer.testing import CliRunner

    from distillguard.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["intel", "new-token", "feed", "--collection", COL_A, "--write"])
    assert r.exit_code == 0, r.output
    token = r.stderr.split("token (shown once): ")[1].strip()
    assert token.startswith("dgtaxii_") and token not in r.stdout
    entry = yaml.safe_load(r.stdout)
    assert entry["tokens"]["feed"] == {"token_hash": hash_token(token), "read": [COL_A],
                                       "write": [COL_A]}
    cfg = tmp_path / "users.yaml"
    cfg.write_text(f'collections:\n  - {{id: "{COL_A}", title: a}}\n' + r.stdout,
                   encoding="utf-8")
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps(bundle))
    store = TaxiiStore()
    env = {"DISTILLGUARD_TAXII_TOKEN": token}
    with background_server(store, load_server_config(cfg)) as url:
        r = runner.invoke(app, ["intel", "push", str(path), f"{url}/{ROOT}/",
                                "--collection", COL_A], env=env)
        assert r.exit_code == 0, r.output
        assert f"complete: {len(bundle['objects'])} added" in r.output
        db = tmp_path / "store.duckdb"
        r = runner.invoke(app, ["intel", "pull", f"{url}/taxii2/", "--collection", COL_A,
                                "--db", str(db), "--source", "A"], env=env)
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["intel", "pull", f"{url}/taxii2/", "--collection", COL_A,
                                "--db", str(db), "--source", "A"],
                          env={"DISTILLGUARD_TAXII_TOKEN": token + "x"})
        assert r.exit_code == 2 and token not in r.output
    store.close()
