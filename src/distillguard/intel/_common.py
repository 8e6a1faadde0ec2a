"""Shared constants, errors and small helpers of the intel stage.

Every number that shapes what is shared lives here, with the reason for its value.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from distillguard.errors import DistillguardError

__all__ = [
    "IntelError",
    "NAMESPACE",
    "EXTENSION_DEFINITION_ID",
    "CUSTOM_TYPE",
    "MINHASH_NUM_PERM",
    "MINHASH_SEED",
    "TEMPLATE_MATCH_JACCARD",
    "TAXII_MEDIA_TYPE",
    "STIX_MEDIA_TYPE",
    "stix_id",
    "parse_time",
    "format_time",
    "utcnow",
]


class IntelError(DistillguardError):
    """Sharing or importing threat intel failed (bad bundle, bad key, bad pattern...).

    Subclasses :class:`distillguard.errors.DistillguardError` so the CLI shows it as a
    usage error. (The lead may move it into ``distillguard.errors``.)
    """


#: Namespace of every deterministic STIX id distillguard emits (uuid5). Never change it:
#: doing so turns every re-export into a duplicate instead of a new version.
NAMESPACE = uuid.UUID("4f7c1f9e-2a4b-5c3d-9e8f-0a1b2c3d4e5f")

#: Custom object type carried by the extension below.
CUSTOM_TYPE = "x-llm-distillation-campaign"

#: Fixed id of distillguard's extension-definition (version 1.0.0 of the extension).
EXTENSION_DEFINITION_ID = "extension-definition--" + str(
    uuid.uuid5(NAMESPACE, "extension-definition|x-llm-distillation-campaign|1")
)

#: MinHash parameters of shared template signatures. Every provider in a sharing group must
#: use the same values or signatures are not comparable; 128 permutations give a Jaccard
#: estimate with standard error ~0.04 at J=0.5.
MINHASH_NUM_PERM = 128
MINHASH_SEED = 42

#: Estimated Jaccard at or above which a local prompt skeleton counts as the partner's
#: template (issue spec: 0.5; near-duplicate templates with different slots land ~0.6-0.9).
TEMPLATE_MATCH_JACCARD = 0.5

TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"
STIX_MEDIA_TYPE = "application/stix+json;version=2.1"


def stix_id(stix_type: str, *parts: str) -> str:
    """Deterministic STIX identifier ``<type>--<uuid5(NAMESPACE, type|parts...)>``."""
    return f"{stix_type}--{uuid.uuid5(NAMESPACE, '|'.join((stix_type, *parts)))}"


def utcnow() -> datetime:
    """Now in UTC, millisecond precision (STIX timestamps in distillguard use ms)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def parse_time(value: str | datetime) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or offset; naive means UTC) to an aware datetime."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip().replace("z", "Z")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        # Python parses at most 6 fractional digits; STIX allows more.
        if "." in text:
            head, _, rest = text.partition(".")
            digits = "".join(c for c in rest if c.isdigit())
            tz = rest[len(digits):]
            text = f"{head}.{digits[:6]}{tz}"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise IntelError(f"not an RFC 3339 timestamp: {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_time(dt: datetime, precision: str = "ms") -> str:
    """Format as STIX/TAXII timestamp ``YYYY-MM-DDTHH:MM:SS.fffZ`` (``us`` for 6 digits)."""
    dt = dt.astimezone(UTC)
    frac = f"{dt.microsecond:06d}" if precision == "us" else f"{dt.microsecond // 1000:03d}"
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"
