"""TAXII 2.1 round trip: our FastAPI server on 127.0.0.1, a real taxii2-client against it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

pytest.importorskip("stix2")
pytest.importorskip("taxii2client")
pytest.importorskip("uvicorn")

from taxii2client.exceptions import AccessError  # noqa: E402
from taxii2client.v21 import ApiRoot, Server, as_pages  # noqa: E402

from distillguard.intel import export_bundle, load_campaigns  # noqa: E402
from distillguard.intel._common import TAXII_MEDIA_TYPE, IntelError  # noqa: E402
from distillguard.intel.taxii_client import pull, push_bundle  # noqa: E402
from distillguard.intel.taxii_server import (  # noqa: E402
    TaxiiStore,
    background_server,
    hash_password,
    load_server_config,
)

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
KEY = b"test-sharing-group-key-0123456789"
COL = "5b2f1a3c-6d4e-4f50-8a9b-0c1d2e3f4a5b"
OTHER = "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("taxii")
    users = tmp / "users.yaml"
    # Few PBKDF2 iterations keep the test fast; production hashes use the default.
    users.write_text(
        f"""
collections:
  - {{id: "{COL}", title: shared-campaigns}}
  - {{id: "{OTHER}", title: read-only-feed}}
users:
  acme:
    password_hash: "{hash_password('acme-pw', 1000)}"
    read: ["*"]
    write: ["{COL}"]
  reader:
    password_hash: "{hash_password('reader-pw', 1000)}"
    read: ["{COL}"]
""",
        encoding="utf-8",
    )
    store = TaxiiStore(tmp / "taxii.duckdb")
    with background_server(store, load_server_config(users)) as url:
        yield url
    store.close()


@pytest.fixture(scope="module")
def bundle() -> dict:
    b = export_bundle(load_campaigns(FIXTURES), None, KEY, "ACME AI")
    return orjson.loads(b.serialize())


def _auth(user: str, pw: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{pw}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Accept": TAXII_MEDIA_TYPE}


def test_discovery_and_collections(server: str) -> None:
    srv = Server(f"{server}/taxii2/", user="acme", password="acme-pw")
    assert srv.title
    root = srv.api_roots[0]
    assert root.versions == [TAXII_MEDIA_TYPE]
    cols = {c.id: c for c in root.collections}
    assert cols[COL].can_write and cols[COL].can_read
    assert cols[OTHER].can_read and not cols[OTHER].can_write


def test_push_pull_round_trip(server: str, bundle: dict) -> None:
    status = push_bundle(f"{server}/distillguard/", COL, "acme", "acme-pw", bundle)
    assert status.status == "complete"
    assert status.failure_count == 0
    assert status.success_count == len(bundle["objects"])

    con = duckdb.connect()
    summary = pull(f"{server}/taxii2/", COL, "reader", "reader-pw", con, source="ACME",
                   confidence=70)
    assert summary.added > 0
    kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM partner_indicators").fetchall()}
    assert {"ip_prefix", "account_hmac", "payment_hmac", "template_minhash"} <= kinds
    # Pulling again adds nothing.
    again = pull(f"{server}/taxii2/", COL, "reader", "reader-pw", con, source="ACME",
                 confidence=70)
    assert again.added == 0


def test_pagination_added_after_and_versions(server: str, bundle: dict) -> None:
    root = ApiRoot(f"{server}/distillguard/", user="acme", password="acme-pw")
    col = next(c for c in root.collections if c.id == COL)
    push_bundle(f"{server}/distillguard/", COL, "acme", "acme-pw", bundle)  # idempotent
    pages = list(as_pages(col.get_objects, per_request=7))
    ids = [o["id"] for p in pages for o in p.get("objects", [])]
    assert len(pages) > 1
    assert all(len(p.get("objects", [])) <= 7 for p in pages)
    assert len(ids) == len(set(ids)) == len({o["id"] for o in bundle["objects"]})
    assert pages[0]["more"] is True and "next" in pages[0]
    assert pages[-1]["more"] is False

    # A re-export adds a new version of the campaign objects; added_after returns only it.
    last_added = col.get_manifest()["objects"][-1]["date_added"]
    newer = export_bundle(load_campaigns(FIXTURES), None, KEY, "ACME AI")
    newer_objs = orjson.loads(newer.serialize())["objects"]
    campaign = next(o for o in newer_objs if o["type"] == "campaign")
    push_bundle(f"{server}/distillguard/", COL, "acme", "acme-pw", newer)
    fresh = col.get_objects(added_after=last_added)
    fresh_ids = {o["id"] for o in fresh.get("objects", [])}
    assert campaign["id"] in fresh_ids
    assert not any(o["type"] == "marking-definition" for o in fresh.get("objects", []))
    versions = col.object_versions(campaign["id"])["versions"]
    assert len(versions) == 2 and versions[-1] == campaign["modified"]
    only = col.get_objects(id=campaign["id"], type="campaign")
    assert [o["modified"] for o in only["objects"]] == [campaign["modified"]]
    all_versions = col.get_objects(id=campaign["id"], version="all")
    assert len(all_versions["objects"]) == 2


def test_auth_and_permissions(server: str, bundle: dict) -> None:
    url = f"{server}/distillguard/collections/{COL}/objects/"
    r = httpx.get(url, headers={"Accept": TAXII_MEDIA_TYPE})
    assert r.status_code == 401
    assert r.headers["content-type"] == TAXII_MEDIA_TYPE
    assert "basic" in r.headers["www-authenticate"].lower()
    assert httpx.get(url, headers=_auth("acme", "wrong")).status_code == 401

    envelope = orjson.dumps({"objects": bundle["objects"][:2]})
    headers = {**_auth("reader", "reader-pw"), "Content-Type": TAXII_MEDIA_TYPE}
    assert httpx.post(url, content=envelope, headers=headers).status_code == 403
    other = f"{server}/distillguard/collections/{OTHER}/objects/"
    headers = {**_auth("acme", "acme-pw"), "Content-Type": TAXII_MEDIA_TYPE}
    assert httpx.post(other, content=envelope, headers=headers).status_code == 403
    # reader cannot see OTHER at all
    assert httpx.get(other, headers=_auth("reader", "reader-pw")).status_code == 404
    # wrong media types
    bad = {**_auth("acme", "acme-pw"), "Content-Type": "application/json"}
    assert httpx.post(url, content=envelope, headers=bad).status_code == 415
    r = httpx.get(url, headers={**_auth("acme", "acme-pw"), "Accept": "text/html"})
    assert r.status_code == 406
    # the client refuses to write where the collection says can_write=false
    with pytest.raises(IntelError):
        push_bundle(f"{server}/distillguard/", OTHER, "acme", "acme-pw", bundle)
    assert AccessError  # (raised inside push_bundle, re-raised as IntelError)


def test_invalid_objects_are_reported_as_failures(server: str) -> None:
    url = f"{server}/distillguard/collections/{COL}/objects/"
    headers = {**_auth("acme", "acme-pw"), "Content-Type": TAXII_MEDIA_TYPE}
    bad = {"objects": [{"type": "indicator", "id": "indicator--nope", "spec_version": "2.1"}]}
    r = httpx.post(url, content=orjson.dumps(bad), headers=headers)
    assert r.status_code == 202
    assert r.json()["failure_count"] == 1
    status = httpx.get(f"{server}/distillguard/status/{r.json()['id']}/",
                       headers=_auth("acme", "acme-pw"))
    assert status.json()["failure_count"] == 1
