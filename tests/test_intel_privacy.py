"""Nothing that identifies a customer or reveals a prompt leaves in the clear.

Builds a bundle from campaigns with known raw prompts, account ids, payment fingerprints,
emails, API keys and org ids (campaigns.json + the store), then scans every byte of the
bundle, of what the TAXII server sends back, of the MISP export and of the evidence package.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

pytest.importorskip("stix2")
pytest.importorskip("uvicorn")

from distillguard.intel import export_bundle, export_misp, load_campaigns, write_report  # noqa: E402
from distillguard.intel._common import TAXII_MEDIA_TYPE  # noqa: E402
from distillguard.intel.taxii_client import push_bundle  # noqa: E402
from distillguard.intel.taxii_server import (  # noqa: E402
    TaxiiStore,
    background_server,
    hash_password,
    load_server_config,
)

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
KEY = b"test-sharing-group-key-0123456789"
COL = "0c5e2b7a-1d3f-4e6a-9b8c-7d6e5f4a3b2c"


def _secrets(campaigns: list[dict], con: duckdb.DuckDBPyConnection) -> set[str]:
    raw: set[str] = set()
    for c in campaigns:
        raw.update(c["accounts"])
        ind = c["indicators"]
        raw.update(ind.get("payment_fingerprints", []))
        raw.update(ind.get("emails", []))
        raw.update(ind.get("orgs", []))
        raw.update(t["skeleton"] for t in ind.get("templates", []))
        raw.update(c.get("example_prompts", []))
        raw.update(c.get("reasons", []))
    for row in con.execute(
        "SELECT account_id, prompt, payment_fingerprint, api_key_id, org_id, "
        "json_extract_string(extra, '$.email') FROM requests"
    ).fetchall():
        raw.update(v for v in row if v)
    # fragments that must not survive either
    raw.update({"SECRETPROMPT", "acct_", "pf_card", "sk-live", "org_shadowlab",
                "ops.lead@shadowlab.example", "shadowlab.example", "corp-front.example",
                "mailbox.example", "world class expert", "think step by step"})
    return {s for s in raw if s}


def _assert_clean(blob: bytes, secrets: set[str], where: str) -> None:
    text = blob.decode("utf-8")
    variants = {text, text.lower(), orjson.loads(blob).__repr__() if blob[:1] in b"{[" else text}
    for s in secrets:
        for t in variants:
            assert s not in t and s.lower() not in t.lower(), f"{s!r} leaked into {where}"


def test_no_raw_identifier_or_prompt_leaves(tmp_path: Path) -> None:
    campaigns = load_campaigns(FIXTURES)
    con = duckdb.connect()
    con.execute((FIXTURES / "requests.sql").read_text()).fetchall()
    secrets = _secrets(campaigns, con)
    assert len(secrets) > 30

    bundle = export_bundle(campaigns, con, KEY, "ACME AI", bloom=True)
    bundle_bytes = bundle.serialize().encode()
    _assert_clean(bundle_bytes, secrets, "the STIX bundle")

    misp = orjson.dumps(export_misp(campaigns, con, KEY, "ACME AI"))
    _assert_clean(misp, secrets, "the MISP event")

    users = tmp_path / "users.yaml"
    users.write_text(f"""
collections: [{{id: "{COL}", title: c}}]
users:
  acme: {{password_hash: "{hash_password('pw', 1000)}", read: ["*"], write: ["*"]}}
""")
    store = TaxiiStore(":memory:")
    with background_server(store, load_server_config(users)) as url:
        push_bundle(f"{url}/taxii2/", COL, "acme", "pw", bundle)
        served = b""
        with httpx.Client(auth=("acme", "pw"), headers={"Accept": TAXII_MEDIA_TYPE}) as http:
            for path in ("objects/", "objects/?match[version]=all", "manifest/"):
                r = http.get(f"{url}/distillguard/collections/{COL}/{path}")
                assert r.status_code == 200
                served += r.content
                _assert_clean(r.content, secrets, f"TAXII {path}")
    store.close()
    assert b"hmac-sha256:" in served

    # Evidence package in its default (hashed) mode: reasons are shown, but redacted.
    write_report(campaigns[0], tmp_path / "pkg", KEY, "ACME AI", con=con)
    reasons = {r for c in campaigns for r in c["reasons"]}
    for f in (tmp_path / "pkg").iterdir():
        text = f.read_text(encoding="utf-8")
        for s in secrets - reasons:
            assert s not in text, f"{s!r} leaked into {f.name}"
