"""Partner intel: store indicators other providers shared, and match local accounts to them.

``import_bundle`` keeps only what can be matched: IPs and prefixes, user agents, account /
payment HMACs and template MinHash signatures, in ``partner_indicators``. Re-importing the
same bundle is a no-op (rows are keyed by kind, value, source, campaign_ref). Identifier
HMACs keep the id of the key they were made under (``hmac_key_id`` in the bundle), so after a
key rotation an importer holding the current and previous keys matches both generations.
``match_partner_indicators`` turns them into a per-account detection signal.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import polars as pl

from distillguard.errors import StoreError
from distillguard.intel._common import CUSTOM_TYPE, TEMPLATE_MATCH_JACCARD, IntelError
from distillguard.intel.hashing import (
    check_key,
    hmac_id,
    is_hmac,
    key_id,
    parse_signature,
    scrub_user_agent,
    skeletonize,
    template_signature,
)
from distillguard.store import table_columns, table_exists

__all__ = [
    "PARTNER_KINDS",
    "ensure_partner_table",
    "extract_partner_indicators",
    "import_bundle",
    "match_partner_indicators",
    "ImportSummary",
]

log = logging.getLogger(__name__)

PARTNER_KINDS = ("ip", "ip_prefix", "user_agent", "account_hmac", "payment_hmac",
                 "template_minhash")

_DDL = """
CREATE TABLE IF NOT EXISTS partner_indicators (
    kind VARCHAR, value VARCHAR, source VARCHAR, confidence INTEGER,
    campaign_ref VARCHAR, imported_at TIMESTAMP, key_id VARCHAR
)
"""
_UA_PATH = ["extensions", "http-request-ext", "request_header", "User-Agent"]


@dataclass
class ImportSummary:
    """What an import did: rows added, rows already present, and per-kind totals."""

    added: int
    unchanged: int
    by_kind: dict[str, int]


def ensure_partner_table(con: Any) -> None:
    """Create ``partner_indicators`` if missing (and add ``key_id`` to an older one)."""
    try:
        con.execute(_DDL)
        con.execute("ALTER TABLE partner_indicators ADD COLUMN IF NOT EXISTS key_id VARCHAR")
    except Exception as exc:  # duckdb.Error and friends; re-raised as our type
        raise StoreError(f"cannot create partner_indicators: {exc}") from exc


def _load(bundle_json: str | bytes | dict[str, Any] | Any) -> list[dict[str, Any]]:
    if hasattr(bundle_json, "serialize"):
        bundle_json = bundle_json.serialize()
    if isinstance(bundle_json, str | bytes):
        try:
            data: Any = orjson.loads(bundle_json)
        except orjson.JSONDecodeError as exc:
            raise IntelError(f"bundle is not valid JSON: {exc}") from exc
    else:
        data = bundle_json
    if isinstance(data, list):
        objects = data
    elif isinstance(data, dict) and isinstance(data.get("objects", []), list):
        objects = data.get("objects", [])  # STIX bundle or TAXII envelope
    else:
        raise IntelError("expected a STIX bundle, a TAXII envelope or a list of objects")
    return [o for o in objects if isinstance(o, dict) and "type" in o and "id" in o]


def _latest(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the newest version of each id (by ``modified``/``created``); drop revoked."""
    best: dict[str, dict[str, Any]] = {}
    for o in objects:
        cur = best.get(o["id"])
        ver = str(o.get("modified") or o.get("created") or "")
        if cur is None or ver > str(cur.get("modified") or cur.get("created") or ""):
            best[o["id"]] = o
    return [o for o in best.values() if not o.get("revoked")]


def _unquote(literal: str) -> str:
    text = literal.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1]
    return text.replace("\\'", "'").replace("\\\\", "\\")


def _pattern_indicators(pattern: str, oid: str = "?") -> list[tuple[str, str]]:
    """(kind, value) pairs from the equality comparisons of a STIX pattern."""
    from stix2patterns.v21.pattern import Pattern

    try:
        comparisons = Pattern(pattern).inspect().comparisons
    except Exception as exc:  # stix2patterns raises its own ParseException types
        # Neither the pattern nor the parser's message (which quotes it) is logged: a
        # partner's pattern may hold identifiers (an email, an account id).
        log.warning("skipping unparsable pattern of %s (%s)", oid, type(exc).__name__)
        return []
    out: list[tuple[str, str]] = []
    for obj_type, comps in comparisons.items():
        for path, op, literal in comps:
            if op not in ("=", "ISSUBSET"):
                continue
            value = _unquote(literal)
            if obj_type in ("ipv4-addr", "ipv6-addr") and path == ["value"]:
                try:
                    net = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    continue
                if net.prefixlen == net.max_prefixlen:
                    out.append(("ip", str(net.network_address)))
                else:
                    out.append(("ip_prefix", str(net)))
            elif obj_type == "network-traffic" and path == _UA_PATH:
                out.append(("user_agent", value))
    return out


def extract_partner_indicators(
    bundle_json: str | bytes | dict[str, Any] | Any,
) -> list[tuple[str, str, str | None]]:
    """(kind, value, campaign_ref) triples a bundle carries, deduplicated and sorted."""
    return sorted({(k, v, r) for k, v, r, _ in _extract(bundle_json)},
                  key=lambda r: (r[0], r[1], r[2] or ""))


def _extract(
    bundle_json: str | bytes | dict[str, Any] | Any,
) -> list[tuple[str, str, str | None, str | None]]:
    """(kind, value, campaign_ref, key_id) rows; key_id only for identifier HMACs (the
    ``hmac_key_id`` of the object that carries them), None for the rest."""
    objects = _latest(_load(bundle_json))
    indicates: dict[str, set[str]] = defaultdict(set)
    for o in objects:
        if o["type"] == "relationship" and o.get("relationship_type") == "indicates":
            target = str(o.get("target_ref", ""))
            if target.startswith(("campaign--", "intrusion-set--")):
                indicates[str(o.get("source_ref"))].add(target)
    rows: set[tuple[str, str, str | None, str | None]] = set()
    for o in objects:
        if o["type"] == "indicator" and o.get("pattern_type", "stix") == "stix":
            refs = sorted(indicates.get(o["id"], set())) or [None]
            for kind, value in _pattern_indicators(str(o.get("pattern", "")), str(o["id"])):
                rows.update((kind, value, ref, None) for ref in refs)
        elif o["type"] == CUSTOM_TYPE:
            ref = o.get("campaign_ref")
            kid = o.get("hmac_key_id")
            kid = str(kid) if isinstance(kid, str) and kid else None
            for prop, kind in (("account_hmacs", "account_hmac"), ("email_hmacs", "account_hmac"),
                               ("payment_hmacs", "payment_hmac")):
                for h in o.get(prop) or []:
                    if is_hmac(h):
                        rows.add((kind, h, ref, kid))
                    else:
                        log.warning("skipping malformed %s value in %s", prop, o["id"])
            for t in o.get("template_minhashes") or []:
                sig = t.get("signature") if isinstance(t, dict) else None
                try:
                    parse_signature(str(sig))
                except IntelError:
                    # not the message: it quotes the value, which may be anything
                    log.warning("skipping malformed template signature in %s", o["id"])
                    continue
                rows.add(("template_minhash", str(sig), ref, None))
    return sorted(rows, key=lambda r: (r[0], r[1], r[2] or "", r[3] or ""))


def import_bundle(
    bundle_json: str | bytes | dict[str, Any] | Any, con: Any, source: str, confidence: int
) -> ImportSummary:
    """Store a partner's indicators in ``partner_indicators`` (idempotent).

    Parameters
    ----------
    bundle_json : str, bytes, dict or stix2 Bundle
        A STIX 2.1 bundle (or TAXII envelope / list of objects).
    con : duckdb connection
    source : str
        Name of the partner, shown in match reasons ("on partner ACME's list").
    confidence : int in [0, 100]
        How much the partner's intel is trusted; importing again updates it.
    """
    if not source or not source.strip():
        raise IntelError("a source name is required")
    if not 0 <= int(confidence) <= 100:
        raise IntelError("confidence must be in [0, 100]")
    rows = _extract(bundle_json)
    con = con.cursor()  # own cursor: independent of results pending on the caller's
    ensure_partner_table(con)
    new = pl.DataFrame(
        {
            "kind": [r[0] for r in rows],
            "value": [r[1] for r in rows],
            "source": [source.strip()] * len(rows),
            "confidence": [int(confidence)] * len(rows),
            "campaign_ref": [r[2] for r in rows],
            "key_id": [r[3] for r in rows],
        },
        schema={"kind": pl.Utf8, "value": pl.Utf8, "source": pl.Utf8, "confidence": pl.Int32,
                "campaign_ref": pl.Utf8, "key_id": pl.Utf8},
    )
    name = "_dg_partner_new"
    match = ("p.kind = n.kind AND p.value = n.value AND p.source = n.source "
             "AND p.campaign_ref IS NOT DISTINCT FROM n.campaign_ref")
    try:
        con.register(name, new.to_arrow())
        try:
            con.execute("BEGIN TRANSACTION")
            existing = con.execute(
                f"SELECT count(*) FROM {name} n WHERE EXISTS "
                f"(SELECT 1 FROM partner_indicators p WHERE {match})"
            ).fetchall()[0][0]
            con.execute(
                f"UPDATE partner_indicators p SET confidence = n.confidence, "
                f"key_id = coalesce(n.key_id, p.key_id) FROM {name} n WHERE {match}"
            )
            con.execute(
                "INSERT INTO partner_indicators (kind, value, source, confidence, campaign_ref, "
                "imported_at, key_id) SELECT n.kind, n.value, n.source, n.confidence, "
                f"n.campaign_ref, now()::TIMESTAMP, n.key_id FROM {name} n WHERE NOT EXISTS "
                f"(SELECT 1 FROM partner_indicators p WHERE {match})"
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister(name)
    except IntelError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot store partner indicators: {exc}") from exc
    by_kind: dict[str, int] = defaultdict(int)
    for r in rows:
        by_kind[r[0]] += 1
    return ImportSummary(added=len(rows) - int(existing), unchanged=int(existing),
                         by_kind=dict(by_kind))


# --- matching ------------------------------------------------------------------------------


_EMPTY = pl.DataFrame(
    schema={"account_id": pl.Utf8, "partner_hits": pl.Int64, "reasons": pl.Utf8,
            "max_confidence": pl.Int64}
)


def match_partner_indicators(
    con: Any,
    key: bytes | Sequence[bytes],
    *,
    min_jaccard: float = TEMPLATE_MATCH_JACCARD,
    use_user_agents: bool = False,
) -> pl.DataFrame:
    """Match every account in ``requests`` against ``partner_indicators``.

    An account hits a partner indicator when one of its IPs equals a partner IP or lies in
    a partner prefix, HMAC(account id), HMAC(email in ``extra.email``) or HMAC(payment
    fingerprint) is on a partner list, or one of its prompt skeletons has estimated Jaccard
    >= ``min_jaccard`` with a partner template signature. User agents are opt-in
    (``use_user_agents``): common client libraries would flag whole populations.

    ``key`` may be several keys (the current one first, then previous ones): an identifier
    HMAC imported with a ``key_id`` is checked under the key with that id only, one imported
    without (older stores) under each key. HMACs made under a key not held here cannot
    match; their count is logged (with the key ids, which are public).

    Returns
    -------
    polars.DataFrame
        One row per account: ``account_id``, ``partner_hits`` (distinct partner indicators
        matched), ``reasons`` ("; "-separated, strongest first, e.g. "on partner ACME's list
        (confidence 80)") and ``max_confidence`` (0 when no hit).
    """
    keys = [key] if isinstance(key, bytes | bytearray) else list(key)
    if not keys:
        raise IntelError("match needs at least one sharing key")
    for k in keys:
        check_key(k)
    key_ids = {key_id(bytes(k)): bytes(k) for k in keys}
    con = con.cursor()  # own cursor: independent of results pending on the caller's
    if not table_exists(con, "requests"):
        raise IntelError("no `requests` table in the store; run ingest first")
    accounts = [r[0] for r in con.execute(
        "SELECT DISTINCT account_id FROM requests WHERE account_id IS NOT NULL ORDER BY 1"
    ).fetchall()]
    if not table_exists(con, "partner_indicators"):
        return _finish(accounts, [])
    kid_col = "key_id" if "key_id" in table_columns(con, "partner_indicators") else "NULL"
    partner = con.execute(
        f"SELECT kind, value, source, max(confidence), max({kid_col}) FROM partner_indicators "
        "GROUP BY kind, value, source"
    ).fetchall()
    by_kind: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    value_kid: dict[str, str | None] = {}
    for kind, value, source, conf, kid in partner:
        by_kind[kind].append((value, source, int(conf or 0)))
        if kind in ("account_hmac", "payment_hmac"):
            value_kid[value] = kid
    cols = table_columns(con, "requests")
    hits: list[tuple[str, str, str, str, int, str]] = []  # acct, kind, value, source, conf, why

    # Identifiers: HMAC the local ones, look them up.
    lists: dict[str, list[tuple[str, int]]] = defaultdict(list)
    foreign: dict[str, int] = defaultdict(int)
    for kind in ("account_hmac", "payment_hmac"):
        for value, source, conf in by_kind.get(kind, []):
            kid = value_kid.get(value)
            if kid is not None and kid not in key_ids:
                foreign[kid] += 1
                continue
            lists[value].append((source, conf))
    if foreign:
        log.warning(
            "%d partner identifier HMACs were made under key ids not held here (%s); they "
            "cannot match: load the previous key with --key-file to match them",
            sum(foreign.values()), ", ".join(sorted(foreign)))
    if lists:
        local: list[tuple[str, str, str]] = [(a, a, "account") for a in accounts]
        if "payment_fingerprint" in cols:
            local += [(a, p, "payment") for a, p in con.execute(
                "SELECT DISTINCT account_id, payment_fingerprint FROM requests "
                "WHERE payment_fingerprint IS NOT NULL AND payment_fingerprint <> ''"
            ).fetchall()]
        if "extra" in cols:
            local += [(a, e, "email") for a, e in con.execute(
                "SELECT DISTINCT account_id, json_extract_string(extra, '$.email') FROM requests "
                "WHERE extra IS NOT NULL AND json_valid(extra) "
                "AND json_extract_string(extra, '$.email') IS NOT NULL"
            ).fetchall()]
        what = {"account": "account id", "payment": "payment fingerprint", "email": "email"}
        for kid, k in key_ids.items():
            for acct, raw, kind in local:
                h = hmac_id(k, raw, kind)
                if h not in lists or value_kid.get(h) not in (None, kid):
                    continue
                for source, conf in lists[h]:
                    hits.append((acct, kind, h, source, conf,
                                 f"{what[kind]} on partner {source}'s list (confidence {conf})"))

    # Network: exact IPs and prefixes.
    nets = [(ipaddress.ip_network(v, strict=False), v, s, c)
            for kind in ("ip", "ip_prefix") for v, s, c in by_kind.get(kind, [])]
    if nets and "ip" in cols:
        by_len: dict[tuple[int, int], dict[Any, list[tuple[str, str, int]]]] = defaultdict(
            lambda: defaultdict(list))
        for net, v, s, c in nets:
            by_len[(net.version, net.prefixlen)][net].append((v, s, c))
        for acct, ip_text in con.execute(
            "SELECT DISTINCT account_id, ip FROM requests WHERE ip IS NOT NULL AND ip <> ''"
        ).fetchall():
            try:
                ip = ipaddress.ip_address(ip_text)
            except ValueError:
                continue
            for (version, plen), table in by_len.items():
                if version != ip.version:
                    continue
                net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
                for v, s, c in table.get(net, []):
                    where = "is on" if plen == net.max_prefixlen else f"is in prefix {v} on"
                    hits.append((acct, "ip", v, s, c,
                                 f"IP {ip} {where} partner {s}'s list (confidence {c})"))

    if use_user_agents and by_kind.get("user_agent") and "user_agent" in cols:
        uas: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for v, s, c in by_kind["user_agent"]:
            uas[v].append((s, c))
        for acct, ua in con.execute(
            "SELECT DISTINCT account_id, user_agent FROM requests WHERE user_agent IS NOT NULL"
        ).fetchall():
            for s, c in uas.get(scrub_user_agent(ua), []):
                hits.append((acct, "user_agent", scrub_user_agent(ua), s, c,
                             f"user agent on partner {s}'s list (confidence {c})"))

    if by_kind.get("template_minhash"):
        hits += _template_hits(con, cols, by_kind["template_minhash"], min_jaccard)
    return _finish(accounts, hits)


def _template_hits(
    con: Any, cols: set[str], partner: list[tuple[str, str, int]], min_jaccard: float
) -> list[tuple[str, str, str, str, int, str]]:
    if table_exists(con, "signals") and {"account_id", "skeleton"} <= table_columns(con, "signals"):
        pairs = con.execute(
            "SELECT DISTINCT account_id, skeleton FROM signals WHERE skeleton IS NOT NULL"
        ).fetchall()
    elif "prompt" in cols:
        pairs = [(a, skeletonize(p)) for a, p in con.execute(
            "SELECT DISTINCT account_id, prompt FROM requests WHERE prompt IS NOT NULL"
        ).fetchall()]
    else:
        return []
    skeletons = sorted({s for _, s in pairs if s})
    if not skeletons:
        return []
    index = {s: i for i, s in enumerate(skeletons)}
    local = np.stack([parse_signature(template_signature(s)) for s in skeletons])
    theirs = np.stack([parse_signature(v) for v, _, _ in partner])
    # Jaccard estimate for every (local skeleton, partner template); chunked over skeletons.
    best = np.zeros((len(skeletons), len(partner)), dtype=np.float32)
    for start in range(0, len(skeletons), 2048):
        chunk = local[start : start + 2048]
        best[start : start + 2048] = (chunk[:, None, :] == theirs[None, :, :]).mean(axis=2)
    out: list[tuple[str, str, str, str, int, str]] = []
    for acct, skel in pairs:
        if not skel:
            continue
        row = best[index[skel]]
        for j in np.nonzero(row >= min_jaccard)[0]:
            v, s, c = partner[int(j)]
            out.append((acct, "template_minhash", v, s, c,
                        f"prompt template ~{row[j]:.2f} similar to partner {s}'s template "
                        f"(confidence {c})"))
    return out


#: Reasons spelled out per account; the rest are summarised as "... and N more".
MAX_REASONS = 5


def _join_reasons(reasons: Any) -> str:
    items = list(reasons)
    text = "; ".join(items[:MAX_REASONS])
    if len(items) > MAX_REASONS:
        text += f"; ... and {len(items) - MAX_REASONS} more partner matches"
    return text


def _finish(accounts: list[str], hits: list[tuple[str, str, str, str, int, str]]) -> pl.DataFrame:
    if not accounts:
        return _EMPTY.clone()
    frame = pl.DataFrame({"account_id": accounts})
    if not hits:
        return frame.with_columns(
            pl.lit(0, dtype=pl.Int64).alias("partner_hits"),
            pl.lit("", dtype=pl.Utf8).alias("reasons"),
            pl.lit(0, dtype=pl.Int64).alias("max_confidence"),
        ).sort("account_id")
    h = pl.DataFrame(
        hits, schema=["account_id", "kind", "value", "source", "confidence", "reason"],
        orient="row",
    )
    # One indicator counts (and is explained) once per account, however many requests,
    # IPs or skeletons hit it; at most MAX_REASONS reasons are spelled out.
    per_indicator = (
        h.sort(["account_id", "confidence", "reason"], descending=[False, True, False])
        .unique(subset=["account_id", "kind", "value", "source"], keep="first",
                maintain_order=True)
    )
    agg = per_indicator.group_by("account_id", maintain_order=True).agg(
        pl.len().cast(pl.Int64).alias("partner_hits"),
        pl.col("reason").unique(maintain_order=True).alias("_reasons"),
        pl.col("confidence").max().cast(pl.Int64).alias("max_confidence"),
    )
    agg = agg.with_columns(
        pl.col("_reasons").map_elements(_join_reasons, return_dtype=pl.Utf8).alias("reasons")
    ).drop("_reasons")
    return (
        frame.join(agg, on="account_id", how="left")
        .with_columns(
            pl.col("partner_hits").fill_null(0),
            pl.col("reasons").fill_null(""),
            pl.col("max_confidence").fill_null(0),
        )
        .sort(["partner_hits", "account_id"], descending=[True, False])
        .select("account_id", "partner_hits", "reasons", "max_confidence")
    )
