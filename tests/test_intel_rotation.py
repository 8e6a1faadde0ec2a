"""HMAC key rotation: the key id travels in the bundle and into ``partner_indicators``; an
importer holding the current and previous keys matches indicators made under either."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from typer.testing import CliRunner

pytest.importorskip("stix2")

from distillguard.intel import export_bundle, import_bundle, match_partner_indicators  # noqa: E402
from distillguard.intel._common import CUSTOM_TYPE  # noqa: E402
from distillguard.intel.hashing import key_id  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
OLD = b"sharing-group-key-2025-q4-0123456789"
NEW = b"sharing-group-key-2026-q1-9876543210"

BASE: dict[str, Any] = {
    "score": 0.8, "n_accounts": 2, "requests": 50,
    "first_seen": "2025-02-01T00:00:00Z", "last_seen": "2025-02-10T00:00:00Z",
    "capabilities": {"writing": 1.0}, "example_prompts": [], "reasons": [],
}
#: Shared before the rotation (under OLD): a payment fingerprint and an email we also see.
BEFORE = {**BASE, "campaign_id": "p-1", "accounts": ["partner_acct_1", "partner_acct_2"],
          "indicators": {"payment_fingerprints": ["pf_card_9999_partner"],
                         "emails": ["victim.shared@provider.example"]}}
#: Shared after it (under NEW): an account id we also have.
AFTER = {**BASE, "campaign_id": "p-2", "accounts": ["acct_quiet_0100"], "indicators": {}}
EXPECTED_OLD = {"acct_local_7", "acct_local_10"}
EXPECTED_NEW = {"acct_quiet_0100"}


def _store() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute((FIXTURES / "requests.sql").read_text()).fetchall()
    return con


def _bundle(campaign: dict[str, Any], key: bytes) -> dict[str, Any]:
    return orjson.loads(export_bundle([campaign], None, key, "Partner Labs").serialize())


def _hit(con: Any, keys: Any) -> set[str]:
    frame = match_partner_indicators(con, keys)
    return {r["account_id"] for r in frame.iter_rows(named=True) if r["partner_hits"]}


def test_key_id_is_carried_and_stored() -> None:
    b = _bundle(BEFORE, OLD)
    ext = next(o for o in b["objects"] if o["type"] == CUSTOM_TYPE)
    assert ext["hmac_key_id"] == key_id(OLD) != key_id(NEW)
    con = _store()
    import_bundle(b, con, "Partner Labs", 80)
    rows = con.execute("SELECT kind, key_id FROM partner_indicators "
                       "WHERE kind IN ('account_hmac', 'payment_hmac')").fetchall()
    assert rows and {kid for _, kid in rows} == {key_id(OLD)}


def test_matches_survive_rotation(caplog: pytest.LogCaptureFixture) -> None:
    con = _store()
    import_bundle(_bundle(BEFORE, OLD), con, "Partner Labs", 80)
    import_bundle(_bundle(AFTER, NEW), con, "Partner Labs", 80)
    # current + previous key: every match of both generations
    assert _hit(con, [NEW, OLD]) == EXPECTED_OLD | EXPECTED_NEW
    assert _hit(con, [OLD, NEW]) == EXPECTED_OLD | EXPECTED_NEW
    # one key alone: only its generation, and the other is reported (by key id only)
    with caplog.at_level(logging.WARNING, logger="distillguard.intel.partner"):
        assert _hit(con, NEW) == EXPECTED_NEW
    assert key_id(OLD) in caplog.text and "4 partner identifier HMACs" in caplog.text  # 2 accounts, email, payment
    assert _hit(con, [OLD]) == EXPECTED_OLD


def test_key_id_binds_hmacs_to_their_key() -> None:
    """An HMAC labelled with one key id is checked under that key only: HMACs made under
    OLD but labelled NEW do not match even when OLD is held."""
    b = _bundle(BEFORE, OLD)
    for o in b["objects"]:
        if o["type"] == CUSTOM_TYPE:
            o["hmac_key_id"] = key_id(NEW)
    con = _store()
    import_bundle(b, con, "Partner Labs", 80)
    assert _hit(con, [NEW, OLD]) == set()


def test_store_from_before_key_ids() -> None:
    """Rows imported before key ids were kept (no ``key_id`` column) match under any held
    key; importing into such a store adds the column."""
    con = _store()
    import_bundle(_bundle(BEFORE, OLD), con, "Partner Labs", 80)
    con.execute("ALTER TABLE partner_indicators DROP COLUMN key_id")
    assert _hit(con, [NEW, OLD]) == EXPECTED_OLD
    assert _hit(con, [NEW]) == set()
    import_bundle(_bundle(AFTER, NEW), con, "Partner Labs", 80)
    assert _hit(con, [NEW, OLD]) == EXPECTED_OLD | EXPECTED_NEW


def test_cli_match_with_two_keys(tmp_path: Path) -> None:
    from distillguard.cli import app

    db = tmp_path / "store.duckdb"
    con = duckdb.connect(str(db))
    con.execute((FIXTURES / "requests.sql").read_text()).fetchall()
    con.close()
    runner = CliRunner()
    for i, (campaign, key) in enumerate(((BEFORE, OLD), (AFTER, NEW))):
        path = tmp_path / f"b{i}.json"
        path.write_bytes(orjson.dumps(_bundle(campaign, key)))
        r = runner.invoke(app, ["intel", "import", str(path), "--db", str(db),
                                "--source", "Partner Labs"])
        assert r.exit_code == 0, r.output
    (tmp_path / "new.key").write_bytes(NEW)
    (tmp_path / "old.key").write_bytes(OLD)
    out = tmp_path / "m.csv"
    r = runner.invoke(app, ["intel", "match", "--db", str(db), "--key-file",
                            str(tmp_path / "new.key"), "--key-file", str(tmp_path / "old.key"),
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 of" in r.output
    r = runner.invoke(app, ["intel", "match", "--db", str(db), "--key-file",
                            str(tmp_path / "new.key")])
    assert r.exit_code == 0 and "1 of" in r.output


def test_detect_partner_feature_takes_both_keys() -> None:
    """The partner feature of ``detect`` (``intel_key=[current, previous]``) sees both."""
    from distillguard.features import _partner_hits

    con = _store()
    import_bundle(_bundle(BEFORE, OLD), con, "Partner Labs", 80)
    import_bundle(_bundle(AFTER, NEW), con, "Partner Labs", 80)
    assert set(_partner_hits(con, [NEW, OLD])["account_id"]) == EXPECTED_OLD | EXPECTED_NEW
    assert set(_partner_hits(con, NEW)["account_id"]) == EXPECTED_NEW


def test_detect_cli_with_two_key_files(tmp_path: Path) -> None:
    """`distillguard detect --intel-key-file NEW --intel-key-file OLD`: the partner feature
    of accounts shared under either key is set in the store's features."""
    import csv

    from distillguard.cli import app
    from distillguard.sim import simulate

    sim = simulate(tmp_path / "traffic", scenario="tiny", seed=3)
    with open(tmp_path / "traffic" / "labels.csv", encoding="utf-8") as f:
        accounts = sorted(r["account_id"] for r in csv.DictReader(f))
    old_acct, new_acct = accounts[0], accounts[1]
    db = tmp_path / "store.duckdb"
    con = duckdb.connect(str(db))
    import_bundle(_bundle({**AFTER, "accounts": [old_acct]}, OLD), con, "Partner Labs", 80)
    import_bundle(_bundle({**AFTER, "campaign_id": "p-3", "accounts": [new_acct]}, NEW), con,
                  "Partner Labs", 80)
    con.close()
    (tmp_path / "new.key").write_bytes(NEW)
    (tmp_path / "old.key").write_bytes(OLD)
    r = CliRunner().invoke(app, ["detect", *map(str, sim.logs), "--out", str(tmp_path / "out"),
                                 "--db", str(db), "--quiet",
                                 "--intel-key-file", str(tmp_path / "new.key"),
                                 "--intel-key-file", str(tmp_path / "old.key")])
    assert r.exit_code == 0, r.output
    con = duckdb.connect(str(db), read_only=True)
    hits = dict(con.execute("SELECT account_id, partner_hits FROM features "
                            "WHERE partner_hits > 0").fetchall())
    con.close()
    assert set(hits) == {old_acct, new_acct}
