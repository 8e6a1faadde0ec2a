"""Describe flagged campaigns for analysts and partners (results/campaigns.json)."""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl

from distillguard.linking.keys import account_keys_sql
from distillguard.store import Query, duckdb_query, registered


def _trunc(s: str | None, n: int) -> str:
    if s is None:
        return ""
    return s if len(s) <= n else s[: n - 1] + "…"


#: Per-request aggregates of a campaign's members (``{members}``: account_id, campaign_id).
#: Each result is O(campaigns x distinct values), never O(requests): the Spark engine runs
#: the same texts on its executors, so the driver never holds the members' requests.
BASE_SQL = """
SELECT m.campaign_id, count(*) AS requests, min(r.ts) AS first_seen, max(r.ts) AS last_seen
FROM requests r JOIN {members} m ON r.account_id = m.account_id GROUP BY 1
"""
CAPABILITIES_SQL = """
SELECT m.campaign_id, s.capability, count(*) AS n
FROM signals s JOIN {members} m ON s.account_id = m.account_id GROUP BY 1, 2
"""
# Templates the campaign owns: most of the template's traffic comes from its members. A
# popular prompt some members also sent (camouflage) is not the campaign's template.
TEMPLATES_SQL = """
SELECT m.campaign_id, s.template_id, min(s.skeleton) AS skeleton,
       count(*) AS requests, count(DISTINCT s.account_id) AS accounts
FROM signals s JOIN {members} m ON s.account_id = m.account_id
GROUP BY 1, 2
HAVING count(*) >= 5 AND count(*) >= 0.8 * any_value(s.template_size)
"""
# md5, not hash(): the same examples on both engines (Spark's hash is another function).
EXAMPLES_SQL = """
SELECT campaign_id, prompt, rn FROM (
  SELECT m.campaign_id, r.prompt,
         row_number() OVER (PARTITION BY m.campaign_id
                            ORDER BY md5(r.request_id), r.request_id) AS rn
  FROM requests r JOIN {members} m ON r.account_id = m.account_id)
WHERE rn <= %d
"""


def keys_subquery(cfg: Any) -> str:
    """``account_keys_sql`` as it appears inside the aggregate texts here: braces doubled,
    since the texts' placeholders are ``str.format`` ones. The Spark engine looks for this
    exact text to read the keys linking already computed."""
    return account_keys_sql(cfg).replace("{", "{{").replace("}", "}}")


def _keys_sql(cfg: Any, keys_table: str | None = None) -> str:
    keys = f"SELECT * FROM {keys_table}" if keys_table else keys_subquery(cfg)
    return f"""
SELECT m.campaign_id, k.kind, k.key, count(DISTINCT k.account_id) AS accounts,
       sum(k.n) AS requests
FROM ({keys}) k JOIN {{members}} m ON k.account_id = m.account_id
GROUP BY 1, 2, 3 HAVING count(DISTINCT k.account_id) >= 2
"""


#: The coordination channels of a campaign's link community: the name in its
#: ``coordination`` record, the ``groups`` column behind it and how reasons and the report
#: word it (a share of the community's accounts; for timing, the test's ramp).
COORDINATION_CHANNELS = (
    ("infrastructure", "g_cover_infra", "share an address, /24 or card"),
    ("client", "g_cover_client", "share a system prompt or template"),
    ("rotation", "g_rotation", "rotate over many network prefixes"),
    ("creation_burst", "g_burst", "were created within days of each other"),
    ("timing", "g_sync", "synchronized timing (the test's ramp, 0 to 1)"))


def _coordination(row: dict[str, Any]) -> dict[str, Any]:
    """What the campaign's link community shows against the null of unrelated accounts:
    the share of members on each channel (the timing channel: its ramped test), the
    coordination beyond the strongest channel (``g_coordination``, what the group item
    scores) and the timing test's standard score against the members' own activity
    shifted in time (``linking.groups.group_sync``)."""
    def num(c: str) -> float | None:
        v = row.get(c)
        return None if v is None else round(float(v), 4)

    return {"score": num("g_coordination"),
            "channels": {name: num(col) for name, col, _ in COORDINATION_CHANNELS},
            "timing_z_vs_shifted": num("g_sync_z"),
            "community_accounts": int(row["g_size"]) if row.get("g_size") is not None
            else None}


def describe_campaigns(con: duckdb.DuckDBPyConnection, cfg, flagged: pl.DataFrame,
                       scores: pl.DataFrame, max_examples: int = 3,
                       query: Query | None = None,
                       keys_table: str | None = None) -> list[dict[str, Any]]:
    """One record per flagged campaign (``campaigns.json``): members, volume, capabilities,
    indicators, example prompts and reasons.

    ``con`` holds ``scores``' tables and ``edges``; the per-request aggregates run through
    ``query`` (default: on ``con``'s ``requests`` and ``signals``), which the Spark engine
    points at its executors. ``keys_table``: a table of ``con`` holding the account keys
    this run's linking computed (``linking.LINK_KEYS``), read instead of deriving them from
    every request again."""
    if flagged.is_empty():
        return []
    members = scores.filter(pl.col("campaign_id").is_not_null()).select(
        "account_id", "campaign_id")
    run = query or duckdb_query(con)
    tables = {"members": members.to_arrow()}

    def agg(sql: str) -> pl.DataFrame:
        return pl.from_arrow(run(sql, tables))

    base = agg(BASE_SQL)
    caps = agg(CAPABILITIES_SQL)
    keys = (pl.from_arrow(duckdb_query(con)(_keys_sql(cfg, keys_table), tables)) if keys_table
            else agg(_keys_sql(cfg)))
    skel = agg(TEMPLATES_SQL)
    examples = agg(EXAMPLES_SQL % int(max_examples)).sort("campaign_id", "rn")
    with registered(con, tables["members"]) as m:
        sync = con.sql(f"""
            SELECT ma.campaign_id, count(*) FILTER (e.kinds LIKE '%sync%') AS pairs,
                   count(*) FILTER (e.kinds LIKE '%content%') AS content_pairs
            FROM edges e JOIN {m} ma ON e.a = ma.account_id
                         JOIN {m} mb ON e.b = mb.account_id
            WHERE ma.campaign_id = mb.campaign_id
              AND (e.kinds LIKE '%sync%' OR e.kinds LIKE '%content%')
            GROUP BY 1""").pl()
    out = []
    for row in flagged.sort(["campaign_score", "campaign_id"], descending=[True, False]
                            ).iter_rows(named=True):
        cid = row["campaign_id"]
        accts = members.filter(pl.col("campaign_id") == cid)["account_id"].sort().to_list()
        b = base.filter(pl.col("campaign_id") == cid)
        c = caps.filter(pl.col("campaign_id") == cid)
        tot = max(int(c["n"].sum()), 1)
        # Ties broken on every column: the same store gives the same campaigns.json.
        kk = keys.filter(pl.col("campaign_id") == cid).sort(
            ["accounts", "requests", "key"], descending=[True, True, False])

        def top(kind: str, n: int = 10, _kk: pl.DataFrame = kk) -> list[dict[str, Any]]:
            return [{"value": _trunc(r["key"], 200), "accounts": int(r["accounts"]),
                     "requests": int(r["requests"])}
                    for r in _kk.filter(pl.col("kind") == kind).head(n).iter_rows(named=True)]

        tpl = (skel.filter(pl.col("campaign_id") == cid).sort(
            ["requests", "template_id"], descending=[True, False]).head(5))
        s = sync.filter(pl.col("campaign_id") == cid)
        rs = list(row["reasons"])
        kinds = [k for k, v in (("payment", kk.filter(pl.col("kind") == "payment").height),
                                ("template", kk.filter(pl.col("kind") == "template").height),
                                ("IP prefix", kk.filter(pl.col("kind") == "ip_prefix").height))
                 if v]
        if kinds:
            rs.append(f"{len(accts)} accounts linked by shared {', '.join(kinds)}")
        if s.height and int(s["pairs"][0]):
            rs.append(f"synchronized activity between {int(s['pairs'][0])} account pairs")
        if s.height and int(s["content_pairs"][0]):
            rs.append(f"the same set of templates between {int(s['content_pairs'][0])} "
                      "account pairs")
        out.append({
            "campaign_id": cid,
            "score": round(float(row["campaign_score"]), 6),
            "n_accounts": len(accts),
            "accounts": accts,
            "requests": int(b["requests"][0]) if b.height else 0,
            "first_seen": b["first_seen"][0].isoformat() + "Z" if b.height else None,
            "last_seen": b["last_seen"][0].isoformat() + "Z" if b.height else None,
            "capabilities": {r["capability"]: round(r["n"] / tot, 4)
                             for r in c.sort(["n", "capability"], descending=[True, False])
                             .iter_rows(named=True)},
            "indicators": {
                "ip_prefixes": top("ip_prefix"),
                "user_agents": top("user_agent", 5),
                "payment_fingerprints": top("payment"),
                "orgs": top("org", 5),
                "templates": [{"template_id": r["template_id"],
                               "skeleton": _trunc(r["skeleton"], 240),
                               "requests": int(r["requests"]), "accounts": int(r["accounts"])}
                              for r in tpl.iter_rows(named=True)],
                "synchronized_timing": {
                    "linked_pairs": int(s["pairs"][0]) if s.height else 0,
                    "coordination_share": round(float(row["coord_share"]), 4)},
            },
            "coordination": _coordination(row),
            "example_prompts": [_trunc(p, 300) for p in
                                examples.filter(pl.col("campaign_id") == cid)["prompt"]],
            "reasons": rs,
        })
    return out
