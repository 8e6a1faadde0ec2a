"""STIX export: validity, deterministic ids/versioning, content, markings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pytest

stix2 = pytest.importorskip("stix2")

from distillguard.intel import IntelError, export_bundle, load_campaigns  # noqa: E402
from distillguard.intel._common import CUSTOM_TYPE, EXTENSION_DEFINITION_ID  # noqa: E402
from distillguard.intel.hashing import (  # noqa: E402
    BloomFilter,
    hmac_id,
    signature_jaccard,
    template_signature,
)

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
KEY = b"test-sharing-group-key-0123456789"
T1 = datetime(2025, 4, 1, 12, 0, tzinfo=UTC)
T2 = datetime(2025, 4, 2, 12, 0, tzinfo=UTC)


@pytest.fixture()
def campaigns() -> list[dict]:
    return load_campaigns(FIXTURES)


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute((FIXTURES / "requests.sql").read_text()).fetchall()
    return c


def _objects(bundle: object) -> list[dict]:
    return orjson.loads(bundle.serialize())["objects"]  # type: ignore[attr-defined]


def test_bundle_validates_and_has_expected_objects(campaigns: list[dict], con) -> None:
    bundle = export_bundle(campaigns, con, KEY, "ACME AI", now=T1)
    parsed = stix2.parse(bundle.serialize(), allow_custom=True)
    assert len(parsed.objects) == len(bundle.objects)
    objs = _objects(bundle)
    types = {o["type"] for o in objs}
    assert {"identity", "campaign", "intrusion-set", "indicator", "attack-pattern",
            "relationship", "sighting", "marking-definition", "extension-definition",
            CUSTOM_TYPE} <= types
    # ATLAS technique
    atlas = [o for o in objs if o["type"] == "attack-pattern"
             and any(r.get("external_id") == "AML.T0024.002" and r["source_name"] == "mitre-atlas"
                     for r in o["external_references"])]
    assert atlas
    names = {o["name"] for o in objs if o["type"] == "attack-pattern"}
    assert {"Chain-of-thought elicitation for distillation", "Rubric grading harvesting",
            "Censorship-safe rewrites", "Model pivot"} <= names
    # patterns
    patterns = {o["pattern"] for o in objs if o["type"] == "indicator"}
    assert "[ipv4-addr:value = '203.0.113.0/24']" in patterns
    assert "[ipv6-addr:value = '2001:db8:abcd::/48']" in patterns
    assert "[autonomous-system:number = 64500]" in patterns
    assert any("'User-Agent' = 'distill-harvester/2.1 (contact: <email>)'" in p for p in patterns)
    # relationships
    rels = {(o["source_ref"].split("--")[0], o["relationship_type"], o["target_ref"].split("--")[0])
            for o in objs if o["type"] == "relationship"}
    assert {("indicator", "indicates", "campaign"), ("campaign", "uses", "attack-pattern"),
            ("campaign", "attributed-to", "intrusion-set")} <= rels
    # sightings carry store counts
    by_id = {o["id"]: o for o in objs}
    prefix_ind = next(o for o in objs if o.get("pattern") == "[ipv4-addr:value = '203.0.113.0/24']")
    sighting = next(o for o in objs if o["type"] == "sighting"
                    and o["sighting_of_ref"] == prefix_ind["id"])
    assert sighting["count"] == 16
    assert sighting["first_seen"] <= sighting["last_seen"]
    # TLP 2.0 amber marks every producer object
    tlp = by_id["marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"]
    assert tlp["name"] == "TLP:AMBER"
    for o in objs:
        if o.get("created_by_ref") == next(i["id"] for i in objs if i.get("name") == "ACME AI"):
            assert o["object_marking_refs"] == [tlp["id"]]
    # custom extension object
    ext = by_id[EXTENSION_DEFINITION_ID]
    assert ext["extension_types"] == ["new-sdo"]
    x = next(o for o in objs if o["type"] == CUSTOM_TYPE and o["account_count"] == 4)
    assert x["extensions"][EXTENSION_DEFINITION_ID]["extension_type"] == "new-sdo"
    assert hmac_id(KEY, "acct_hydra_0001") in x["account_hmacs"]
    assert hmac_id(KEY, "pf_card_4242_77aa19", "payment") in x["payment_hmacs"]
    assert len(x["api_key_hmacs"]) == 4  # from the store
    assert x["request_count"] == 1200 and x["capability_mix"]["reasoning"] == 0.55
    assert set(x["tactics"]) == {"cot_elicitation", "rubric_grading", "model_pivot"}
    assert len(x["template_minhashes"]) == 2
    assert by_id[x["campaign_ref"]]["type"] == "campaign"


def test_reexport_is_a_new_version_not_a_duplicate(campaigns: list[dict]) -> None:
    a = _objects(export_bundle(campaigns, None, KEY, "ACME AI", now=T1))
    b = _objects(export_bundle(campaigns, None, KEY, "ACME AI", now=T2))
    assert sorted(o["id"] for o in a) == sorted(o["id"] for o in b)
    a_by, b_by = {o["id"]: o for o in a}, {o["id"]: o for o in b}
    camp = next(o["id"] for o in a if o["type"] == "campaign")
    assert a_by[camp]["created"] == b_by[camp]["created"]
    assert a_by[camp]["modified"] < b_by[camp]["modified"]
    # same time → byte-identical bundle
    again = export_bundle(campaigns, None, KEY, "ACME AI", now=T1)
    assert export_bundle(campaigns, None, KEY, "ACME AI", now=T1).serialize() == again.serialize()
    # a different key or producer gives different (unlinkable) ids
    other = _objects(export_bundle(campaigns, None, b"another-group-key-000000000000", "ACME AI",
                                   now=T1))
    assert next(o["id"] for o in other if o["type"] == "campaign") != camp


def test_tlp_options_and_bloom(campaigns: list[dict]) -> None:
    red = _objects(export_bundle(campaigns[:1], None, KEY, "ACME AI", "red", now=T1))
    assert any(o.get("name") == "TLP:RED" for o in red if o["type"] == "marking-definition")
    v1 = _objects(export_bundle(campaigns[:1], None, KEY, "ACME AI", "green", tlp_version=1,
                                now=T1))
    assert any(o.get("definition") == {"tlp": "green"} for o in v1)
    with pytest.raises(IntelError):
        export_bundle(campaigns, None, KEY, "ACME AI", "purple")
    bl = _objects(export_bundle(campaigns[:1], None, KEY, "ACME AI", bloom=True, now=T1))
    x = next(o for o in bl if o["type"] == CUSTOM_TYPE)
    bf = BloomFilter.from_dict(x["identifier_bloom"])
    assert hmac_id(KEY, "acct_hydra_0002") in bf
    assert hmac_id(KEY, "someone_else") not in bf


def test_bad_inputs_raise_intel_error(campaigns: list[dict]) -> None:
    with pytest.raises(IntelError):
        export_bundle(campaigns, None, b"short", "ACME AI")
    with pytest.raises(IntelError):
        export_bundle([{**campaigns[0], "accounts": []}], None, KEY, "ACME AI")
    with pytest.raises(IntelError):
        export_bundle([], None, KEY, "ACME AI")


def test_template_signature_similarity() -> None:
    a = template_signature("summarize the following contract clause by clause and list "
                           "every obligation of each party: <str>")
    b = template_signature("summarize the following contract clause by clause and list "
                           "every obligation of both parties: <str>")
    c = template_signature("write a poem about autumn leaves falling in the quiet park")
    assert a.startswith("rminhash:128:42:") and len(a.split(":")[-1]) == 128 * 8
    assert signature_jaccard(a, a) == 1.0
    assert signature_jaccard(a, b) >= 0.5
    assert signature_jaccard(a, c) < 0.2
