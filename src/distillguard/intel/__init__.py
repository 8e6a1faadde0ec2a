"""Coordinated response: share campaign indicators privately (STIX 2.1 / TAXII 2.1).

Public API (heavy dependencies are imported on first use, so ``import distillguard.intel``
works without the ``intel`` extra)::

    export_bundle(campaigns, con, key, producer, tlp="amber") -> stix2.Bundle
    import_bundle(bundle_json, con, source, confidence) -> ImportSummary
    match_partner_indicators(con, key) -> polars.DataFrame
    export_misp(campaigns, con, key, producer, tlp="amber") -> dict
    write_report(campaign, out_dir, key, producer, con=None) -> Path
    pull(url, collection_id, user, password, con, ...) / push_bundle(...)
    create_app(store, config) / serve(db, users, host, port)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "IntelError",
    "export_bundle",
    "load_campaigns",
    "select_campaigns",
    "import_bundle",
    "match_partner_indicators",
    "export_misp",
    "write_report",
    "pull",
    "push_bundle",
    "create_app",
    "serve",
    "hash_password",
    "hmac_id",
    "load_key",
]

_WHERE = {
    "IntelError": "_common",
    "export_bundle": "export",
    "load_campaigns": "export",
    "select_campaigns": "export",
    "import_bundle": "partner",
    "match_partner_indicators": "partner",
    "export_misp": "misp",
    "write_report": "report",
    "pull": "taxii_client",
    "push_bundle": "taxii_client",
    "create_app": "taxii_server",
    "serve": "taxii_server",
    "hash_password": "taxii_server",
    "hmac_id": "hashing",
    "load_key": "hashing",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'distillguard.intel' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"distillguard.intel.{_WHERE[name]}")
    except ImportError as exc:
        raise ImportError(
            f"distillguard.intel.{name} needs the intel extra: pip install 'distillguard[intel]'"
            f" ({exc})"
        ) from exc
    return getattr(module, name)
