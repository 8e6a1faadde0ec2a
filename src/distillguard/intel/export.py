"""Export detected campaigns as a STIX 2.1 bundle that is safe to share.

What leaves the provider (see docs/intel.md): network infrastructure in the clear (IP
prefixes, user agents with emails scrubbed, ASNs), identifiers only as keyed HMACs, prompt
templates only as MinHash signatures, plus aggregate counts and dates. Free text from
``campaigns.json`` (``reasons``, ``example_prompts``, skeletons) is never copied into a
bundle; descriptions are generated from counts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import stix2
from stix2.v21 import (
    Bundle,
    Campaign,
    Identity,
    Indicator,
    IntrusionSet,
    Relationship,
    Sighting,
)

from distillguard.intel._common import (
    CUSTOM_TYPE,
    IntelError,
    format_time,
    parse_time,
    stix_id,
    utcnow,
)
from distillguard.intel.hashing import (
    EMAIL_RE,
    BloomFilter,
    check_key,
    hmac_id,
    key_id,
    scrub_user_agent,
    template_signature,
)
from distillguard.intel.stix_objects import (
    DISTILLGUARD_IDENTITY,
    EXTENSION_DEFINITION,
    LLMDistillationCampaign,
    attack_pattern,
    tlp_marking,
)
from distillguard.store import table_columns, table_exists

__all__ = [
    "export_bundle",
    "load_campaigns",
    "select_campaigns",
    "CampaignFacts",
    "gather_facts",
    "campaign_fingerprint",
]

log = logging.getLogger(__name__)

#: A tactic is reported when at least this share of the campaign's requests show it
#: (signals table); below that it is incidental use, not the campaign's method.
TACTIC_MIN_SHARE = 0.2
#: Model pivot: a model first used after the campaign started that then carries at least
#: this share of the campaign's later traffic.
PIVOT_MIN_SHARE = 0.5
#: Exact IPs (outside every shared prefix) included per campaign, busiest first; a cap so a
#: residential-proxy campaign does not ship thousands of single-use addresses.
MAX_EXACT_IPS = 100
#: STIX caps sighting counts at 999,999,999.
_MAX_COUNT = 999_999_999

_TACTIC_KEYWORDS = {
    "cot_elicitation": re.compile(r"chain[- ]of[- ]thought|\bcot\b|step[- ]by[- ]step", re.I),
    "rubric_grading": re.compile(r"rubric|\bgrad(?:e|er|ing)\b", re.I),
    "censorship_safe_rewrite": re.compile(r"censor", re.I),
    "model_pivot": re.compile(r"\bpivot", re.I),
}
_SIGNAL_COLUMNS = {
    "cot_elicitation": "cot_elicit",
    "rubric_grading": "rubric_grading",
    "censorship_safe_rewrite": "censorship_safe",
}


# --- inputs -------------------------------------------------------------------------------


def load_campaigns(results_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``results_dir/campaigns.json`` (format in docs/CONTRACTS.md)."""
    path = Path(results_dir) / "campaigns.json"
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise IntelError(f"cannot read {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise IntelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise IntelError(f"{path} must hold a JSON list of campaign objects")
    return data


def select_campaigns(
    campaigns: Sequence[dict[str, Any]], ids: Iterable[str] | None
) -> list[dict[str, Any]]:
    """The campaigns whose ``campaign_id`` is in ``ids`` (all when ``ids`` is None)."""
    if ids is None:
        return list(campaigns)
    wanted = list(dict.fromkeys(ids))
    by_id = {str(c.get("campaign_id")): c for c in campaigns}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise IntelError(f"unknown campaign id(s): {', '.join(missing)}")
    return [by_id[i] for i in wanted]


# --- facts about one campaign --------------------------------------------------------------


@dataclass
class Infra:
    """One network indicator with its observed volume (count None when unknown)."""

    kind: str  # ip_prefix | ip | user_agent | asn
    value: str
    count: int | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None


@dataclass
class CampaignFacts:
    """Everything exported about one campaign, raw identifiers still in the clear.

    Built by :func:`gather_facts` from a campaigns.json entry plus (optionally) the store;
    :func:`export_bundle` hashes what must be hashed.
    """

    campaign_id: str
    score: float
    accounts: list[str]
    emails: list[str]
    payment_fingerprints: list[str]
    api_keys: list[str]
    orgs: list[str]
    requests: int
    first_seen: datetime
    last_seen: datetime
    capabilities: dict[str, float]
    templates: list[tuple[str, int]]  # (skeleton, requests)
    tactics: list[str]
    infra: list[Infra] = field(default_factory=list)
    link_kinds: list[str] = field(default_factory=list)
    daily: list[tuple[str, int]] = field(default_factory=list)  # (YYYY-MM-DD, requests)
    models: list[tuple[str, int]] = field(default_factory=list)

    def identifiers(self) -> list[str]:
        """All raw identifiers (for redaction and privacy checks)."""
        return [*self.accounts, *self.emails, *self.payment_fingerprints, *self.api_keys,
                *self.orgs]


def _strs(values: Iterable[Any]) -> list[str]:
    return sorted({str(v).strip() for v in values if v is not None and str(v).strip()})


def _values(items: Iterable[Any]) -> list[str]:
    """Indicator entries are plain strings or ``{"value": ..., "accounts": ...}`` objects."""
    return _strs(i.get("value") if isinstance(i, dict) else i for i in items)


def gather_facts(campaign: dict[str, Any], con: Any | None = None) -> CampaignFacts:
    """Collect what is known about a campaign from its JSON entry and, if given, the store.

    The store (``requests``, optionally ``signals``) adds exact volumes per IP/user agent,
    API key ids, emails found in ``extra.email``, ASNs from ``extra.asn``, full template
    skeletons, tactic shares and a daily timeline.
    """
    ind = campaign.get("indicators") or {}
    accounts = _strs(campaign.get("accounts") or [])
    if not accounts:
        raise IntelError(f"campaign {campaign.get('campaign_id')!r} has no accounts")
    try:
        first = parse_time(campaign["first_seen"])
        last = parse_time(campaign["last_seen"])
    except KeyError as exc:
        raise IntelError(f"campaign {campaign.get('campaign_id')!r} lacks {exc}") from exc
    infra: list[Infra] = []
    for prefix in _values(ind.get("ip_prefixes") or []):
        try:
            net = ipaddress.ip_network(str(prefix).strip(), strict=False)
        except ValueError:
            log.warning("skipping invalid IP prefix %r", prefix)
            continue
        infra.append(Infra("ip_prefix", str(net)))
    for ua in _values(ind.get("user_agents") or []):
        infra.append(Infra("user_agent", ua))
    for asn in ind.get("asns") or []:
        if str(asn).removeprefix("AS").isdigit():
            infra.append(Infra("asn", str(asn).removeprefix("AS")))
    ua_emails = [m for ua in _values(ind.get("user_agents") or [])
                 for m in EMAIL_RE.findall(ua)]
    templates = [
        (str(t.get("skeleton") or ""), int(t.get("requests") or 0))
        for t in ind.get("templates") or []
        if t.get("skeleton")
    ]
    link_kinds = [
        name
        for name, present in (
            ("shared payment instrument", ind.get("payment_fingerprints")),
            ("shared IP prefixes", ind.get("ip_prefixes")),
            ("shared user agents", ind.get("user_agents")),
            ("shared organisations", ind.get("orgs")),
            ("near-duplicate prompt templates", ind.get("templates")),
            ("synchronized timing", ind.get("synchronized_timing")),
        )
        if present
    ]
    facts = CampaignFacts(
        campaign_id=str(campaign.get("campaign_id")),
        score=float(campaign.get("score") or 0.0),
        accounts=accounts,
        emails=_strs([*_values(ind.get("emails") or []), *ua_emails]),
        payment_fingerprints=_values(ind.get("payment_fingerprints") or []),
        api_keys=_values(ind.get("api_keys") or []),
        orgs=_values(ind.get("orgs") or []),
        requests=int(campaign.get("requests") or 0),
        first_seen=first,
        last_seen=last,
        capabilities={str(k): float(v) for k, v in (campaign.get("capabilities") or {}).items()},
        templates=templates,
        tactics=[],
        infra=infra,
        link_kinds=link_kinds,
    )
    tactics = {t for t in campaign.get("tactics") or [] if t in _TACTIC_KEYWORDS}
    for reason in campaign.get("reasons") or []:
        tactics |= {k for k, rx in _TACTIC_KEYWORDS.items() if rx.search(str(reason))}
    if con is not None:
        cur = con.cursor()  # own cursor: independent of results pending on the caller's
        try:
            if table_exists(cur, "requests"):
                tactics |= _enrich_from_store(facts, cur, ind.get("templates") or [])
        finally:
            cur.close()
    facts.tactics = sorted(tactics)
    return facts


def _enrich_from_store(
    facts: CampaignFacts, con: Any, templates: list[dict[str, Any]]
) -> set[str]:
    """Add store-derived volumes to ``facts``; return tactics seen in the store."""
    import pyarrow as pa

    name = "_dg_intel_accounts"
    con.register(name, pa.table({"account_id": facts.accounts}))
    try:
        cols = table_columns(con, "requests")
        base = f"FROM requests r JOIN {name} a USING (account_id)"
        row = con.execute(f"SELECT count(*), min(ts), max(ts) {base}").fetchall()[0]
        if not row or not row[0]:
            return set()
        facts.requests = max(facts.requests, int(row[0]))
        facts.first_seen = min(facts.first_seen, parse_time(row[1]))
        facts.last_seen = max(facts.last_seen, parse_time(row[2]))

        def volumes(column: str) -> list[tuple[str, int, datetime, datetime]]:
            if column not in cols:
                return []
            rows = con.execute(
                f"SELECT r.{column}, count(*), min(ts), max(ts) {base} "
                f"WHERE r.{column} IS NOT NULL AND r.{column} <> '' GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall()
            return [(str(v), int(n), parse_time(a), parse_time(b)) for v, n, a, b in rows]

        # IPs: fold into the shared prefixes; busiest uncovered IPs become exact indicators.
        prefixes = [(i, ipaddress.ip_network(i.value)) for i in facts.infra
                    if i.kind == "ip_prefix"]
        exact: list[Infra] = []
        for ip_text, n, a, b in volumes("ip"):
            try:
                ip = ipaddress.ip_address(ip_text)
            except ValueError:
                continue
            covering = [inf for inf, net in prefixes if ip.version == net.version and ip in net]
            for inf in covering:
                _add_volume(inf, n, a, b)
            if not covering and len(exact) < MAX_EXACT_IPS:
                exact.append(Infra("ip", str(ip), n, a, b))
        facts.infra.extend(exact)
        ua_infra = {i.value: i for i in facts.infra if i.kind == "user_agent"}
        for ua, n, a, b in volumes("user_agent"):
            if ua in ua_infra:
                _add_volume(ua_infra[ua], n, a, b)
        facts.payment_fingerprints = _strs(
            [*facts.payment_fingerprints, *(v for v, *_ in volumes("payment_fingerprint"))]
        )
        facts.api_keys = _strs([*facts.api_keys, *(v for v, *_ in volumes("api_key_id"))])
        facts.orgs = _strs([*facts.orgs, *(v for v, *_ in volumes("org_id"))])
        if "extra" in cols:
            for field_name, sink in (("email", "emails"), ("asn", "asn")):
                rows = con.execute(
                    f"SELECT DISTINCT json_extract_string(r.extra, '$.{field_name}') {base} "
                    "WHERE r.extra IS NOT NULL AND json_valid(r.extra)"
                ).fetchall()
                values = _strs(v for (v,) in rows)
                if sink == "emails":
                    facts.emails = _strs([*facts.emails, *values])
                else:
                    known = {i.value for i in facts.infra if i.kind == "asn"}
                    facts.infra.extend(
                        Infra("asn", v.removeprefix("AS")) for v in values
                        if v.removeprefix("AS").isdigit() and v.removeprefix("AS") not in known
                    )
        facts.daily = [
            (str(d), int(n))
            for d, n in con.execute(
                f"SELECT strftime(date_trunc('day', ts), '%Y-%m-%d'), count(*) {base} "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
        ]
        models = con.execute(
            f"SELECT model, count(*), min(ts) {base} GROUP BY 1 ORDER BY 3, 1"
        ).fetchall()
        facts.models = [(str(m), int(n)) for m, n, _ in models]
        tactics: set[str] = set()
        if len(models) >= 2:
            newest, _, start = models[-1]
            later = con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE model = ?) {base} WHERE ts >= ?",
                [newest, start],
            ).fetchall()[0]
            if parse_time(start) > facts.first_seen and later and later[0] and \
                    later[1] / later[0] >= PIVOT_MIN_SHARE:
                tactics.add("model_pivot")
        if table_exists(con, "signals"):
            scols = table_columns(con, "signals")
            sbase = f"FROM signals s JOIN {name} a USING (account_id)"
            parts = [
                f"avg(CAST(s.{col} AS DOUBLE))"
                for col in _SIGNAL_COLUMNS.values() if col in scols
            ]
            keys = [k for k, col in _SIGNAL_COLUMNS.items() if col in scols]
            if parts:
                shares = con.execute(f"SELECT {', '.join(parts)} {sbase}").fetchall()[0] or ()
                tactics |= {k for k, v in zip(keys, shares, strict=False)
                            if v is not None and v >= TACTIC_MIN_SHARE}
            if {"template_id", "skeleton"} <= scols:
                full = dict(
                    con.execute(
                        f"SELECT s.template_id, arg_max(s.skeleton, n) FROM (SELECT template_id, "
                        f"skeleton, count(*) AS n {sbase} GROUP BY 1, 2) s GROUP BY 1"
                    ).fetchall()
                )
                facts.templates = [
                    (str(full.get(t.get("template_id")) or t.get("skeleton") or ""),
                     int(t.get("requests") or 0))
                    for t in templates
                    if full.get(t.get("template_id")) or t.get("skeleton")
                ]
        return tactics
    finally:
        con.unregister(name)


def _add_volume(inf: Infra, n: int, first: datetime, last: datetime) -> None:
    inf.count = (inf.count or 0) + n
    inf.first_seen = first if inf.first_seen is None else min(inf.first_seen, first)
    inf.last_seen = last if inf.last_seen is None else max(inf.last_seen, last)


# --- hashing + STIX ------------------------------------------------------------------------


def campaign_fingerprint(account_hmacs: Iterable[str], other_hmacs: Iterable[str] = ()) -> str:
    """SHA-256 over the sorted hashed identifiers: the stable identity of a campaign."""
    items = sorted(set(account_hmacs) | set(other_hmacs))
    return hashlib.sha256("\n".join(items).encode("ascii")).hexdigest()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _pattern(inf: Infra) -> tuple[str, str]:
    """(STIX pattern, indicator name) for a network indicator."""
    if inf.kind in ("ip_prefix", "ip"):
        net = ipaddress.ip_network(inf.value, strict=False)
        obj = "ipv4-addr" if net.version == 4 else "ipv6-addr"
        value = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        return f"[{obj}:value = '{value}']", f"Distillation campaign infrastructure {value}"
    if inf.kind == "user_agent":
        return (
            "[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = "
            f"'{_escape(scrub_user_agent(inf.value))}']",
            "Distillation campaign HTTP user agent",
        )
    if inf.kind == "asn":
        return f"[autonomous-system:number = {int(inf.value)}]", f"Distillation campaign AS{inf.value}"
    raise IntelError(f"unknown indicator kind {inf.kind}")


def _ms(dt: datetime) -> str:
    return format_time(dt, "ms")


def export_bundle(
    campaigns: Sequence[dict[str, Any]],
    con: Any | None,
    key: bytes,
    producer: str,
    tlp: str = "amber",
    *,
    tlp_version: int = 2,
    bloom: bool = False,
    now: datetime | None = None,
) -> Bundle:
    """Build a shareable STIX 2.1 bundle for ``campaigns`` (entries of campaigns.json).

    Parameters
    ----------
    campaigns : list of dict
        Campaign objects as written to ``results/campaigns.json``.
    con : duckdb connection or None
        The store; when given, volumes, API keys, emails, ASNs and tactic shares are read
        from ``requests``/``signals``.
    key : bytes
        The sharing group's HMAC key (>= 16 bytes).
    producer : str
        Name of the providing organisation (becomes the producer identity).
    tlp : str, default "amber"
        TLP level applied to every producer object.
    tlp_version : {2, 1}, default 2
        TLP 2.0 (OASIS extension objects) or stix2's TLP 1.0 objects.
    bloom : bool, default False
        Also ship a Bloom filter over all identifier HMACs (``identifier_bloom``).
    now : datetime, optional
        Export time (``modified`` of the new versions); defaults to now.

    Returns
    -------
    stix2.v21.Bundle
        Re-exporting the same campaign yields the same object ids with a newer ``modified``.
    """
    check_key(key)
    if not producer or not producer.strip():
        raise IntelError("a producer name is required")
    if not campaigns:
        raise IntelError("no campaigns to export")
    now = parse_time(now) if now is not None else utcnow()
    marking = tlp_marking(tlp, tlp_version)
    producer_identity = Identity(
        id=stix_id("identity", "producer", producer.strip()),
        created="2025-01-01T00:00:00.000Z",
        modified="2025-01-01T00:00:00.000Z",
        name=producer.strip(),
        identity_class="organization",
        sectors=["technology"],
        description="AI model provider sharing LLM distillation campaign indicators.",
    )
    objects: dict[str, Any] = {}
    for obj in (DISTILLGUARD_IDENTITY, EXTENSION_DEFINITION, producer_identity, marking):
        objects[obj.id] = obj
    for campaign in campaigns:
        facts = gather_facts(campaign, con)
        for obj in _campaign_objects(facts, key, producer_identity.id, marking.id, now, bloom):
            objects[obj.id] = obj
    ids = sorted(f"{o.id}|{getattr(o, 'modified', '')}" for o in objects.values())
    bundle_id = stix_id("bundle", *ids)
    bundle = Bundle(list(objects.values()), id=bundle_id, allow_custom=True)
    # Validate the way a consumer would: re-parse the serialised bytes.
    stix2.parse(bundle.serialize(), allow_custom=True)
    return bundle


def _campaign_objects(
    f: CampaignFacts, key: bytes, producer_ref: str, marking_ref: str, now: datetime, bloom: bool
) -> list[Any]:
    acc = sorted({hmac_id(key, a, "account") for a in f.accounts})
    emails = sorted({hmac_id(key, e, "email") for e in f.emails})
    pays = sorted({hmac_id(key, p, "payment") for p in f.payment_fingerprints})
    keys = sorted({hmac_id(key, k, "api_key") for k in f.api_keys})
    orgs = sorted({hmac_id(key, o, "org") for o in f.orgs})
    fp = campaign_fingerprint(acc, [*emails, *pays])
    created = min(f.first_seen, now)
    common = {
        "created": _ms(created),
        "modified": _ms(max(now, created)),
        "created_by_ref": producer_ref,
        "object_marking_refs": [marking_ref],
    }
    confidence = max(0, min(100, round(f.score * 100)))
    first, last = _ms(f.first_seen), _ms(max(f.last_seen, f.first_seen))
    short = fp[:12]
    linked = ", ".join(f.link_kinds) or "behavioural similarity"
    campaign = Campaign(
        id=stix_id("campaign", producer_ref, fp),
        name=f"LLM distillation campaign {short}",
        description=(
            f"{len(f.accounts)} API accounts, {f.requests} requests between {first} and "
            f"{last}, harvesting model outputs to train another model. Accounts linked by: "
            f"{linked}."
        ),
        first_seen=first,
        last_seen=last,
        objective="Extract model capabilities through the inference API (illicit distillation).",
        confidence=confidence,
        **common,
    )
    intrusion = IntrusionSet(
        id=stix_id("intrusion-set", producer_ref, fp),
        name=f"Distillation hydra cluster {short}",
        description=f"Operator of {len(f.accounts)} coordinated API accounts ({linked}).",
        first_seen=first,
        last_seen=last,
        goals=["train a competing model on harvested outputs"],
        primary_motivation="organizational-gain",
        confidence=confidence,
        **common,
    )
    out: list[Any] = [campaign, intrusion]
    rel = _relationships(producer_ref, fp, common)
    out.append(rel(campaign.id, "attributed-to", intrusion.id))
    for key_name in ["atlas", *f.tactics]:
        ap = attack_pattern(key_name)
        out.append(ap)
        out.append(rel(campaign.id, "uses", ap.id))
    merged: dict[str, tuple[str, Infra]] = {}
    for inf in f.infra:
        pattern, name = _pattern(inf)
        if pattern in merged:  # two raw user agents that differ only in a scrubbed email
            prev = merged[pattern][1]
            if inf.count is not None and inf.first_seen and inf.last_seen:
                _add_volume(prev, inf.count, inf.first_seen, inf.last_seen)
            continue
        merged[pattern] = (name, Infra(inf.kind, inf.value, inf.count, inf.first_seen,
                                       inf.last_seen))
    for pattern, (name, inf) in merged.items():
        ind = Indicator(
            id=stix_id("indicator", producer_ref, fp, pattern),
            name=name,
            description=f"Observed in LLM distillation campaign {short}.",
            indicator_types=["anomalous-activity"],
            pattern=pattern,
            pattern_type="stix",
            valid_from=first,
            confidence=confidence,
            **common,
        )
        out.append(ind)
        out.append(rel(ind.id, "indicates", campaign.id))
        seen_first = inf.first_seen or f.first_seen
        seen_last = max(inf.last_seen or f.last_seen, seen_first)
        sighting = {
            "sighting_of_ref": ind.id,
            "first_seen": _ms(seen_first),
            "last_seen": _ms(seen_last),
            "where_sighted_refs": [producer_ref],
        }
        if inf.count is not None:
            sighting["count"] = min(inf.count, _MAX_COUNT)
        out.append(Sighting(id=stix_id("sighting", producer_ref, fp, ind.id), **sighting,
                            **common))
    out.append(
        Sighting(
            id=stix_id("sighting", producer_ref, fp, campaign.id),
            sighting_of_ref=campaign.id,
            count=min(f.requests, _MAX_COUNT),
            first_seen=first,
            last_seen=last,
            where_sighted_refs=[producer_ref],
            description="count = API requests attributed to the campaign",
            **common,
        )
    )
    ext: dict[str, Any] = {
        "name": f"LLM distillation campaign {short}",
        "description": "Privacy-preserving fingerprint; identifiers are HMAC-SHA256 under "
        "the sharing group's key, templates are MinHash signatures.",
        "campaign_ref": campaign.id,
        "hash_scheme": "hmac-sha256",
        "hmac_key_id": key_id(key),
        "account_hmacs": acc,
        "template_minhashes": [
            {"signature": template_signature(s), "requests": n, "shingling": "word-3"}
            for s, n in f.templates
        ],
        "capability_mix": {k: round(v, 4) for k, v in sorted(f.capabilities.items())},
        "tactics": f.tactics,
        "request_count": f.requests,
        "account_count": len(f.accounts),
        "score": min(max(f.score, 0.0), 1.0),
        "first_seen": first,
        "last_seen": last,
        "confidence": confidence,
    }
    for prop, values in (("email_hmacs", emails), ("payment_hmacs", pays),
                         ("api_key_hmacs", keys), ("org_hmacs", orgs)):
        if values:
            ext[prop] = values
    if bloom:
        bf = BloomFilter.for_capacity(len(acc) + len(emails) + len(pays) + len(keys))
        for h in [*acc, *emails, *pays, *keys]:
            bf.add(h)
        ext["identifier_bloom"] = bf.to_dict()
    if not ext["template_minhashes"]:
        del ext["template_minhashes"]
    if not ext["tactics"]:
        del ext["tactics"]
    out.append(LLMDistillationCampaign(id=stix_id(CUSTOM_TYPE, producer_ref, fp), **ext,
                                       **common))
    return out


def _relationships(producer_ref: str, fp: str, common: dict[str, Any]) -> Any:
    def make(src: str, rel_type: str, dst: str) -> Relationship:
        return Relationship(
            id=stix_id("relationship", producer_ref, fp, src, rel_type, dst),
            source_ref=src,
            relationship_type=rel_type,
            target_ref=dst,
            **common,
        )

    return make

