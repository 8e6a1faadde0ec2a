"""Fixed STIX 2.1 objects distillguard emits: its extension, TLP markings, attack patterns.

Everything here is deterministic (fixed ids and timestamps) so that every provider's bundle
carries byte-identical copies and consumers deduplicate them.
"""

from __future__ import annotations

from typing import Any

import stix2
from stix2.properties import (
    DictionaryProperty,
    FloatProperty,
    IntegerProperty,
    ListProperty,
    ReferenceProperty,
    StringProperty,
    TimestampProperty,
)
from stix2.v21 import AttackPattern, CustomObject, ExtensionDefinition, Identity, MarkingDefinition

from distillguard.intel._common import CUSTOM_TYPE, EXTENSION_DEFINITION_ID, IntelError, stix_id

__all__ = [
    "DISTILLGUARD_IDENTITY",
    "EXTENSION_DEFINITION",
    "LLMDistillationCampaign",
    "TLP2_EXTENSION_ID",
    "tlp_marking",
    "ATLAS_EXTRACT_MODEL",
    "TACTICS",
    "attack_pattern",
]

#: Timestamp of everything defined by distillguard itself (not by a producer).
_FIXED = "2025-01-01T00:00:00.000Z"

#: Author of the extension definition and the tactic attack patterns (the project).
DISTILLGUARD_IDENTITY = Identity(
    id=stix_id("identity", "distillguard-project"),
    created=_FIXED,
    modified=_FIXED,
    name="distillguard project",
    identity_class="organization",
    description="Open-source tool for detecting illicit distillation of LLMs via their APIs.",
)

EXTENSION_DEFINITION = ExtensionDefinition(
    id=EXTENSION_DEFINITION_ID,
    created_by_ref=DISTILLGUARD_IDENTITY.id,
    created=_FIXED,
    modified=_FIXED,
    name="LLM distillation campaign",
    description=(
        "New SDO x-llm-distillation-campaign: privacy-preserving fingerprint of a multi-account "
        "campaign harvesting model outputs (HMAC'd identifiers, MinHash template signatures, "
        "capability mix, volumes). Companion to a STIX campaign object."
    ),
    schema=(
        "distillguard docs/intel.md, section 'The x-llm-distillation-campaign extension' "
        "(properties, types and hashing scheme)."
    ),
    version="1.0.0",
    extension_types=["new-sdo"],
)


@CustomObject(
    CUSTOM_TYPE,
    [
        ("name", StringProperty(required=True)),
        ("description", StringProperty()),
        ("campaign_ref", ReferenceProperty(valid_types="campaign", spec_version="2.1")),
        ("hash_scheme", StringProperty(required=True)),
        ("hmac_key_id", StringProperty()),
        ("account_hmacs", ListProperty(StringProperty)),
        ("email_hmacs", ListProperty(StringProperty)),
        ("payment_hmacs", ListProperty(StringProperty)),
        ("api_key_hmacs", ListProperty(StringProperty)),
        ("org_hmacs", ListProperty(StringProperty)),
        ("identifier_bloom", DictionaryProperty()),
        ("template_minhashes", ListProperty(DictionaryProperty)),
        ("capability_mix", DictionaryProperty()),
        ("tactics", ListProperty(StringProperty)),
        ("request_count", IntegerProperty(min=0)),
        ("account_count", IntegerProperty(min=0)),
        ("score", FloatProperty(min=0.0, max=1.0)),
        ("first_seen", TimestampProperty()),
        ("last_seen", TimestampProperty()),
    ],
    extension_name=EXTENSION_DEFINITION_ID,
)
class LLMDistillationCampaign:
    """STIX SDO ``x-llm-distillation-campaign`` (see docs/intel.md for every property)."""


# --- TLP ----------------------------------------------------------------------------------

#: OASIS TLP 2.0 extension (cti-stix-common-objects, extension-definition-specifications/tlp-2.0).
TLP2_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
_TLP2_IDS = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
_TLP1 = {
    "clear": stix2.v21.TLP_WHITE,
    "green": stix2.v21.TLP_GREEN,
    "amber": stix2.v21.TLP_AMBER,
    "red": stix2.v21.TLP_RED,
}


def tlp_marking(level: str, version: int = 2) -> MarkingDefinition:
    """The marking-definition object for a TLP level (``clear``/``white``, ``green``,
    ``amber``, ``amber+strict``, ``red``).

    TLP 2.0 (default) uses the OASIS-published objects, which the stix2 library parses as
    marking-definitions with a property extension; ``version=1`` returns stix2's built-in
    TLP 1.0 objects for consumers that only know those (no ``amber+strict`` there).
    """
    lvl = level.strip().lower().removeprefix("tlp:")
    lvl = "clear" if lvl == "white" else lvl
    if version == 1:
        if lvl not in _TLP1:
            raise IntelError(f"TLP 1.0 has no level {level!r}; use one of {sorted(_TLP1)}")
        return _TLP1[lvl]
    if lvl not in _TLP2_IDS:
        raise IntelError(f"unknown TLP level {level!r}; use one of {sorted(_TLP2_IDS)}")
    return MarkingDefinition(
        id=_TLP2_IDS[lvl],
        created="2022-10-01T00:00:00.000Z",
        name=f"TLP:{lvl.upper()}",
        extensions={
            TLP2_EXTENSION_ID: {"extension_type": "property-extension", "tlp_2_0": lvl}
        },
        allow_custom=True,
    )


# --- attack patterns ------------------------------------------------------------------------

ATLAS_EXTRACT_MODEL = "AML.T0024.002"

#: Tactic key → (name, description). Keys are the values used in ``tactics`` properties.
TACTICS: dict[str, tuple[str, str]] = {
    "cot_elicitation": (
        "Chain-of-thought elicitation for distillation",
        "Prompts engineered to make the model reveal full step-by-step reasoning traces, "
        "harvested as training targets for a student model.",
    ),
    "rubric_grading": (
        "Rubric grading harvesting",
        "The model is used as a grader/reward model: prompts ask it to score candidate "
        "answers against a rubric, producing preference or reward data.",
    ),
    "model_pivot": (
        "Model pivot",
        "The campaign moves its traffic to a newly released model shortly after launch to "
        "harvest its new capabilities.",
    ),
    "censorship_safe_rewrite": (
        "Censorship-safe rewrites",
        "Prompts ask for politically sensitive content to be rewritten into forms acceptable "
        "to a censorship regime, producing alignment data for the student model.",
    ),
}


def _atlas_pattern() -> AttackPattern:
    return AttackPattern(
        id=stix_id("attack-pattern", "mitre-atlas", ATLAS_EXTRACT_MODEL),
        created=_FIXED,
        modified=_FIXED,
        created_by_ref=DISTILLGUARD_IDENTITY.id,
        name="Extract ML Model",
        description=(
            "Adversaries extract a functional copy of a model by querying its inference API "
            "and training a student on the outputs (illicit distillation)."
        ),
        kill_chain_phases=[{"kill_chain_name": "mitre-atlas", "phase_name": "exfiltration"}],
        external_references=[
            {
                "source_name": "mitre-atlas",
                "external_id": ATLAS_EXTRACT_MODEL,
                "url": f"https://atlas.mitre.org/techniques/{ATLAS_EXTRACT_MODEL}",
            }
        ],
    )


def attack_pattern(key: str) -> AttackPattern:
    """The attack-pattern for ``"atlas"`` (AML.T0024.002) or a tactic key of ``TACTICS``."""
    if key == "atlas":
        return _ATLAS
    if key not in TACTICS:
        raise IntelError(f"unknown tactic {key!r}; known: {sorted(TACTICS)}")
    name, description = TACTICS[key]
    return AttackPattern(
        id=stix_id("attack-pattern", "distillguard", key),
        created=_FIXED,
        modified=_FIXED,
        created_by_ref=DISTILLGUARD_IDENTITY.id,
        name=name,
        description=description,
        kill_chain_phases=[{"kill_chain_name": "mitre-atlas", "phase_name": "exfiltration"}],
        external_references=[
            {
                "source_name": "distillguard",
                "external_id": f"DG-{key}",
                "description": f"Sub-technique of MITRE ATLAS {ATLAS_EXTRACT_MODEL}.",
            },
            {
                "source_name": "mitre-atlas",
                "external_id": ATLAS_EXTRACT_MODEL,
                "url": f"https://atlas.mitre.org/techniques/{ATLAS_EXTRACT_MODEL}",
            },
        ],
    )


_ATLAS = _atlas_pattern()


def as_dict(obj: Any) -> dict[str, Any]:
    """A stix2 object as a plain JSON dict."""
    import json

    return json.loads(obj.serialize())
