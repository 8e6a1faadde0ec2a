"""Partner intel: idempotent import and matching of local accounts."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import pytest

pytest.importorskip("stix2")

from distillguard.intel import (  # noqa: E402
    IntelError,
    export_bundle,
    import_bundle,
    match_partner_indicators,
)

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
KEY = b"test-sharing-group-key-0123456789"

#: What a partner provider detected on its side (its own accounts; shared infrastructure).
PARTNER_CAMPAIGN = {
    "campaign_id": "p-17",
    "score": 0.8,
    "accounts": ["partner_acct_1", "partner_acct_2"],
    "n_accounts": 2,
    "requests": 50,
    "first_seen": "2025-02-01T00:00:00Z",
    "last_seen": "2025-02-10T00:00:00Z",
    "capabilities": {"writing": 1.0},
    "indicators": {
        "ip_prefixes": ["198.51.100.0/24"],
        "user_agents": ["curl/8.0"],
        "payment_fingerprints": ["pf_card_9999_partner"],
        "emails": ["victim.shared@provider.example"],
        "orgs": [],
        "templates": [{
            "template_id": "t9",
            "skeleton": "summarize the following legal contract clause by clause and list "
                        "every obligation of each party: <str>",
            "requests": 50,
        }],
    },
    "example_prompts": [],
    "reasons": [],
}


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute((FIXTURES / "requests.sql").read_text()).fetchall()
    return c


@pytest.fixture()
def partner_bundle() -> str:
    return export_bundle([PARTNER_CAMPAIGN], None, KEY, "Partner Labs").serialize()


def test_import_is_idempotent(con, partner_bundle: str) -> None:
    first = import_bundle(partner_bundle, con, "Partner Labs", 80)
    assert first.added == first.by_kind["account_hmac"] + 4  # prefix, ua, payment, template
    n = con.execute("SELECT count(*) FROM partner_indicators").fetchall()[0][0]
    second = import_bundle(partner_bundle, con, "Partner Labs", 80)
    assert second.added == 0 and second.unchanged == first.added
    assert con.execute("SELECT count(*) FROM partner_indicators").fetchall()[0][0] == n
    # re-import with another confidence updates, does not duplicate
    import_bundle(orjson.loads(partner_bundle), con, "Partner Labs", 60)
    rows = con.execute("SELECT DISTINCT confidence FROM partner_indicators").fetchall()
    assert rows == [(60,)]
    kinds = dict(con.execute("SELECT kind, count(*) FROM partner_indicators GROUP BY 1")
                 .fetchall())
    assert set(kinds) == {"ip_prefix", "user_agent", "account_hmac", "payment_hmac",
                          "template_minhash"}
    refs = {r for (r,) in con.execute("SELECT DISTINCT campaign_ref FROM partner_indicators")
            .fetchall()}
    assert len(refs) == 1 and next(iter(refs)).startswith("campaign--")


def test_match_finds_planted_accounts(con, partner_bundle: str) -> None:
    import_bundle(partner_bundle, con, "Partner Labs", 80)
    frame = match_partner_indicators(con, KEY)
    assert frame.columns[:3] == ["account_id", "partner_hits", "reasons"]
    n_accounts = con.execute("SELECT count(DISTINCT account_id) FROM requests").fetchall()[0][0]
    assert frame.height == n_accounts
    got = {r["account_id"]: r for r in frame.iter_rows(named=True)}
    assert "payment fingerprint on partner Partner Labs's list (confidence 80)" \
        in got["acct_local_7"]["reasons"]
    assert "198.51.100.0/24" in got["acct_local_8"]["reasons"]
    assert "template" in got["acct_local_9"]["reasons"]
    assert "email on partner" in got["acct_local_10"]["reasons"]  # case-normalised email
    hit = {a for a, r in got.items() if r["partner_hits"] > 0}
    assert hit == {"acct_local_7", "acct_local_8", "acct_local_9", "acct_local_10"}
    assert got["acct_benign_1"]["reasons"] == ""
    # user agents are opt-in (curl/8.0 is also acct_local_8's)
    with_ua = match_partner_indicators(con, KEY, use_user_agents=True)
    assert with_ua.filter(with_ua["account_id"] == "acct_local_8")["partner_hits"][0] == 2
    # another key sees no identifier matches
    other = match_partner_indicators(con, b"not-the-group-key-00000000000000")
    other_hits = {r["account_id"] for r in other.iter_rows(named=True) if r["partner_hits"]}
    assert other_hits == {"acct_local_8", "acct_local_9"}


def test_account_on_partner_list(con) -> None:
    # The partner shares a campaign that includes an account id we also have
    # (e.g. a reseller account id or an email used as account id).
    campaign = {**PARTNER_CAMPAIGN, "accounts": ["acct_quiet_0100"],
                "indicators": {"ip_prefixes": []}}
    import_bundle(export_bundle([campaign], None, KEY, "ACME"), con, "ACME", 90)
    frame = match_partner_indicators(con, KEY)
    row = frame.filter(frame["account_id"] == "acct_quiet_0100").row(0, named=True)
    assert row["partner_hits"] == 1
    assert row["reasons"] == "account id on partner ACME's list (confidence 90)"
    assert row["max_confidence"] == 90


def test_no_partner_table_and_bad_input(con) -> None:
    frame = match_partner_indicators(con, KEY)
    assert frame["partner_hits"].sum() == 0
    with pytest.raises(IntelError):
        import_bundle("not json", con, "X", 50)
    with pytest.raises(IntelError):
        import_bundle('{"type": "bundle", "objects": []}', con, "X", 101)
