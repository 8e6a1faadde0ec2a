"""No secrets or raw identifiers in logs: every log record (DEBUG and up, uvicorn's access and
error logs included) is captured while the TAXII server serves authenticated, refused and
rate-limited requests, and while the intel paths export, report, import (a hostile partner
bundle too) and match; none holds a credential or a raw account id, email, payment
fingerprint, API key id or org id."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest

pytest.importorskip("stix2")
pytest.importorskip("taxii2client")
pytest.importorskip("uvicorn")

from distillguard.intel import (  # noqa: E402
    export_bundle,
    import_bundle,
    load_campaigns,
    match_partner_indicators,
    write_report,
)
from distillguard.intel._common import CUSTOM_TYPE, TAXII_MEDIA_TYPE  # noqa: E402
from distillguard.intel.hashing import EMAIL_RE  # noqa: E402
from distillguard.intel.taxii_client import pull, push_bundle  # noqa: E402
from distillguard.intel.taxii_server import (  # noqa: E402
    TaxiiStore,
    background_server,
    hash_password,
    hash_token,
    load_server_config,
    new_token,
)

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
KEY = b"test-sharing-group-key-0123456789"
COL = "5b2f1a3c-6d4e-4f50-8a9b-0c1d2e3f4a5b"
TOKEN = new_token()
LIMITED = new_token()
PASSWORD = "correct-horse-battery-staple"
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


@contextmanager
def _capture_all(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """caplog on the root logger at DEBUG, plus uvicorn's own (non-propagating) loggers."""
    caplog.set_level(logging.DEBUG)
    added = []
    for name in UVICORN:
        lg = logging.getLogger(name)
        added.append((lg, lg.level))
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for lg, level in added:
            lg.removeHandler(caplog.handler)
            lg.setLevel(level)


def _text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )


def _raw_identifiers(con: duckdb.DuckDBPyConnection) -> set[str]:
    ids: set[str] = set()
    for col in ("account_id", "payment_fingerprint", "api_key_id", "org_id"):
        ids |= {v for (v,) in con.execute(
            f"SELECT DISTINCT {col} FROM requests WHERE {col} IS NOT NULL").fetchall()}
    for (extra, ua) in con.execute("SELECT extra, user_agent FROM requests").fetchall():
        ids |= set(EMAIL_RE.findall(str(extra or ""))) | set(EMAIL_RE.findall(str(ua or "")))
    return {i for i in ids if len(i) >= 4}


def test_taxii_server_logs_hold_no_credentials(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "users.yaml"
    cfg.write_text(f"""
collections:
  - {{id: "{COL}", title: shared}}
users:
  partner-labs:
    password_hash: "{hash_password(PASSWORD, 1000)}"
    read: ["{COL}"]
tokens:
  acme-feed:
    token_hash: "{hash_token(TOKEN)}"
    read: ["{COL}"]
    write: ["{COL}"]
  slow-feed:
    token_hash: "{hash_token(LIMITED)}"
    read: ["{COL}"]
    rate_limit: 1/60
""", encoding="utf-8")
    bundle = orjson.loads(export_bundle(load_campaigns(FIXTURES), None, KEY, "ACME").serialize())
    store = TaxiiStore()
    basic = base64.b64encode(f"partner-labs:{PASSWORD}".encode()).decode()
    wrong = base64.b64encode(b"partner-labs:not-the-password").decode()
    # capture after the server started: uvicorn (re)configures its loggers when it starts
    with background_server(store, load_server_config(cfg), log_level="info") as url, \
            _capture_all(caplog):
        push_bundle(f"{url}/distillguard/", COL, None, None, bundle, token=TOKEN)
        pull(f"{url}/taxii2/", COL, "partner-labs", PASSWORD, duckdb.connect(), source="ACME")
        objs = f"{url}/distillguard/collections/{COL}/objects/"
        accept = {"Accept": TAXII_MEDIA_TYPE}
        assert httpx.get(objs, headers={**accept, "Authorization": f"Bearer {TOKEN}x"}
                         ).status_code == 401
        assert httpx.get(objs, headers={**accept, "Authorization": f"Basic {wrong}"}
                         ).status_code == 401
        for _ in range(2):
            last = httpx.get(objs, headers={**accept, "Authorization": f"Bearer {LIMITED}"})
        assert last.status_code == 429
    store.close()
    text = _text(caplog)
    # the logs say who did what (so the capture worked) ...
    assert "acme-feed POST /distillguard/collections/" in text
    assert "partner-labs GET" in text
    assert "authentication failed" in text and "slow-feed rate limited" in text
    assert "uvicorn.access" in text  # uvicorn's access log was captured too
    # ... and hold no credential in any form
    for secret in (TOKEN, TOKEN[len("dgtaxii_"):], hash_token(TOKEN), LIMITED, PASSWORD,
                   "not-the-password", basic, wrong, f"{TOKEN}x"):
        assert secret not in text


def test_intel_paths_log_no_raw_identifiers(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    src = duckdb.connect()
    src.execute((FIXTURES / "requests.sql").read_text()).fetchall()
    raw = _raw_identifiers(src)
    assert "acct_hydra_0001" in raw and "harvester.one@mailbox.example" in raw
    campaigns = load_campaigns(FIXTURES)
    # a hostile partner bundle: broken pattern, HMAC list and signature made of raw ids
    bundle = orjson.loads(export_bundle(campaigns, src, KEY, "Partner").serialize())
    victim = "harvester.one@mailbox.example"
    for o in bundle["objects"]:
        if o["type"] == "indicator":
            o["pattern"] = f"[email-addr:value = '{victim}' AND acct_hydra_0001"
        if o["type"] == CUSTOM_TYPE:
            o["account_hmacs"] = [*o["account_hmacs"], "acct_hydra_0002", victim]
            o["template_minhashes"] = [{"signature": f"rminhash:{victim}:acct_hydra_0003"}]
    with _capture_all(caplog):
        export_bundle(campaigns, src, KEY, "ACME", bloom=True)
        write_report(campaigns[0], tmp_path / "pkg", KEY, "ACME", con=src)
        import_bundle(bundle, src, "Partner", 60)
        match_partner_indicators(src, [KEY, b"previous-group-key-000000000000"],
                                 use_user_agents=True)
    text = _text(caplog)
    leaked = sorted(i for i in raw if i in text)
    assert leaked == []
    assert "skipping unparsable pattern" in text  # the hostile parts were logged about
    assert "skipping malformed account_hmacs value" in text
    assert "template signature" in text
