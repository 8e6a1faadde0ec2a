"""Two providers sharing STIX indicators: nothing raw crosses, and detection is not hurt."""

from __future__ import annotations

from distillguard.bench.sharing import two_providers


def test_two_providers_share_without_leaking(tmp_path):
    res = two_providers(tmp_path, scenario="tiny", seed=5)
    for p in ("A", "B"):
        alone, shared = res["providers"][p]["alone"], res["providers"][p]["shared"]
        assert shared["recall@1%fpr"] >= alone["recall@1%fpr"]
        assert shared["flag_fpr"] <= alone["flag_fpr"] + 0.05
    for b in res["bundles"].values():
        assert b["bytes"] > 0
        assert b["raw_identifiers_found"] == {"account_id": 0, "payment_fingerprint": 0,
                                              "prompt": 0}
    assert (tmp_path / "bundle-A.json").exists()
