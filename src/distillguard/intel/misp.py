"""MISP event export: the same privacy rules as the STIX export, in MISP's JSON format.

Attributes: ``ip-src`` (prefixes and IPs), ``user-agent`` (emails scrubbed), ``AS``, and
hashed identifiers as ``text`` with a comment naming the scheme and key id. No raw
identifiers, prompts or skeletons are written.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from distillguard.intel._common import NAMESPACE, IntelError, parse_time, utcnow
from distillguard.intel.export import campaign_fingerprint, gather_facts
from distillguard.intel.hashing import (
    check_key,
    hmac_id,
    key_id,
    scrub_user_agent,
    template_signature,
)

__all__ = ["export_misp"]

_TLP_TAGS = {"clear": "tlp:clear", "white": "tlp:clear", "green": "tlp:green",
             "amber": "tlp:amber", "amber+strict": "tlp:amber+strict", "red": "tlp:red"}


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(("misp", *parts))))


def export_misp(
    campaigns: Sequence[dict[str, Any]],
    con: Any | None,
    key: bytes,
    producer: str,
    tlp: str = "amber",
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A MISP event (``{"Event": {...}}``, importable via MISP's "Add event from JSON")
    with one attribute per shared indicator of every campaign; TLP as an event tag."""
    check_key(key)
    tag = _TLP_TAGS.get(tlp.strip().lower().removeprefix("tlp:"))
    if tag is None:
        raise IntelError(f"unknown TLP level {tlp!r}")
    if not campaigns:
        raise IntelError("no campaigns to export")
    now = parse_time(now) if now is not None else utcnow()
    kid = key_id(key)
    attributes: list[dict[str, Any]] = []
    fps: list[str] = []
    first = None

    def attr(fp: str, type_: str, category: str, value: str, comment: str, to_ids: bool) -> None:
        attributes.append({
            "uuid": _uuid(producer, fp, type_, value),
            "type": type_,
            "category": category,
            "value": value,
            "comment": comment,
            "to_ids": to_ids,
            "distribution": "5",  # inherit event
            "timestamp": str(int(now.timestamp())),
        })

    for campaign in campaigns:
        f = gather_facts(campaign, con)
        accts = sorted({hmac_id(key, a, "account") for a in f.accounts})
        emails = sorted({hmac_id(key, e, "email") for e in f.emails})
        pays = sorted({hmac_id(key, p, "payment") for p in f.payment_fingerprints})
        fp = campaign_fingerprint(accts, [*emails, *pays])
        fps.append(fp)
        first = f.first_seen if first is None else min(first, f.first_seen)
        label = f"campaign {fp[:12]}"
        for inf in f.infra:
            if inf.kind in ("ip_prefix", "ip"):
                attr(fp, "ip-src", "Network activity", inf.value, f"{label} infrastructure", True)
            elif inf.kind == "user_agent":
                attr(fp, "user-agent", "Network activity", scrub_user_agent(inf.value),
                     f"{label} user agent", False)
            elif inf.kind == "asn":
                attr(fp, "AS", "Network activity", inf.value, f"{label} ASN", False)
        for values, what in ((accts, "account id"), (emails, "account email"),
                             (pays, "payment fingerprint")):
            for h in values:
                attr(fp, "text", "Other", h,
                     f"{label}: HMAC-SHA256 of {what} (sharing key {kid})", False)
        for skel, n in f.templates:
            attr(fp, "text", "Other", template_signature(skel),
                 f"{label}: MinHash of prompt template skeleton ({n} requests)", False)
    event_uuid = _uuid(producer, *sorted(fps))
    return {
        "Event": {
            "uuid": event_uuid,
            "info": f"LLM distillation campaign indicators from {producer} "
                    f"({len(campaigns)} campaign(s))",
            "date": (first or now).strftime("%Y-%m-%d"),
            "threat_level_id": "2",
            "analysis": "2",
            "distribution": "0",
            "published": False,
            "timestamp": str(int(now.timestamp())),
            "Orgc": {"name": producer},
            "Tag": [{"name": tag}, {"name": 'mitre-atlas:technique="AML.T0024.002"'}],
            "Attribute": attributes,
        }
    }
