"""Read-side queries of the console: the review queue, campaign and account pages.

The queue reads only ``console_account_index``/``console_campaign_index`` (one row per
account / campaign, see :mod:`distillguard.console._db`) and the console's own tables, so it
is paginated in SQL and does not touch ``requests``. Campaign and account pages read
``requests``/``signals``/``edges`` restricted to the members they show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from distillguard.console._db import ConsoleDB

__all__ = ["QueueFilter", "STATES", "account_page", "campaign_page", "facets", "queue"]

PAGE_SIZE = 25
STATES = ("open", "confirmed", "dismissed", "suspended", "responded", "excepted")

#: Latest verdict and latest response per account, from the console's action rows.
STATE_SQL = """
SELECT account_id,
       arg_max(action, id) FILTER (WHERE action IN ('confirm', 'dismiss', 'reopen'))
         AS verdict,
       arg_max(action, id) FILTER (WHERE action IN ('suspend', 'throttle',
         'require_verification', 'strip_reasoning', 'lift')) AS response
FROM console_actions WHERE account_id IS NOT NULL GROUP BY account_id
"""

#: An account (``i``: a row of console_account_index) matched by an active exception.
EXCEPTED_SQL = """
EXISTS (SELECT 1 FROM console_exceptions e WHERE e.status = 'active' AND (
  (e.kind = 'account' AND e.value = i.account_id)
  OR (e.kind = 'org' AND list_contains(i.orgs, e.value))
  OR (e.kind = 'api_key' AND list_contains(i.api_keys, e.value))
  OR (e.kind = 'ip_prefix' AND list_contains(i.prefixes, e.value))
  OR (e.kind = 'user_agent' AND list_contains(i.user_agents, e.value))
  OR (e.kind = 'payment' AND list_contains(i.payments, e.value))))
"""


@dataclass
class QueueFilter:
    """Queue filters as the query string gives them (empty string: no filter)."""

    q: str = ""
    model: str = ""
    capability: str = ""
    country: str = ""
    state: str = ""
    since: str = ""
    until: str = ""
    show_excepted: bool = False
    page: int = 1

    def where(self) -> tuple[list[str], list[Any]]:
        conds, params = ["(i.flagged OR i.campaign_id IS NOT NULL)"], []
        if self.q.strip():
            q = self.q.strip().lower()
            conds.append("(contains(i.search_blob, ?) OR lower(coalesce(i.campaign_id, '')) = ?)")
            params += [q, q]
        for col, val in (("models", self.model), ("capabilities", self.capability),
                         ("countries", self.country)):
            if val:
                conds.append(f"list_contains(i.{col}, ?)")
                params.append(val)
        if self.since:
            conds.append("i.last_ts >= ?")
            params.append(_day(self.since))
        if self.until:
            conds.append("i.first_ts < ?")
            params.append(_day(self.until) + timedelta(days=1))
        st = {
            "open": "coalesce(st.verdict, 'reopen') = 'reopen'",
            "confirmed": "st.verdict = 'confirm'",
            "dismissed": "st.verdict = 'dismiss'",
            "suspended": "st.response = 'suspend'",
            "responded": "coalesce(st.response, 'lift') <> 'lift'",
            "excepted": EXCEPTED_SQL,
        }
        if self.state:
            if self.state not in st:
                raise ValueError(f"unknown state {self.state!r}")
            conds.append(st[self.state])
        if not self.show_excepted and self.state != "excepted":
            conds.append(f"NOT {EXCEPTED_SQL}")
        return conds, params


def _day(s: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(s), datetime.min.time())
    except ValueError as exc:
        raise ValueError(f"dates are YYYY-MM-DD, got {s!r}") from exc


@dataclass
class QueuePage:
    items: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    hidden_by_exceptions: int
    filters: QueueFilter = field(default_factory=QueueFilter)
    page_size: int = PAGE_SIZE


def queue(db: ConsoleDB, f: QueueFilter, page_size: int = PAGE_SIZE) -> QueuePage:
    """Campaigns and flagged accounts in no campaign matching ``f``, best first, one page."""
    conds, params = f.where()
    page = max(1, int(f.page))
    page_size = max(1, int(page_size))
    sql = f"""
        WITH st AS ({STATE_SQL}),
        m AS (SELECT i.account_id, i.campaign_id, i.score, i.n_requests, i.first_ts,
                     i.last_ts, i.top_capability
              FROM console_account_index i LEFT JOIN st USING (account_id)
              WHERE {' AND '.join(conds)}),
        items AS (
          SELECT 'campaign' AS kind, c.campaign_id AS id, c.score, c.n_accounts AS size,
                 c.n_requests, c.first_ts, c.last_ts, count(*) AS matched,
                 NULL::VARCHAR AS top_capability
          FROM m JOIN console_campaign_index c USING (campaign_id)
          GROUP BY ALL
          UNION ALL
          SELECT 'account', account_id, score, 1, n_requests, first_ts, last_ts, 1,
                 top_capability
          FROM m WHERE campaign_id IS NULL)
        SELECT *, count(*) OVER () AS total FROM items
        ORDER BY score DESC, size DESC, id LIMIT {page_size} OFFSET {(page - 1) * page_size}"""
    items = db.rows(sql, params)
    if items:
        total = int(items[0]["total"])
    else:   # past the last page: count without the window
        total = int(db.value(f"SELECT count(*) FROM ({sql.split(' ORDER BY score DESC')[0]})",
                             params))
    hidden = 0
    if not f.show_excepted and f.state != "excepted":
        hidden = int(db.value(f"""SELECT count(*) FROM console_account_index i
            WHERE (i.flagged OR i.campaign_id IS NOT NULL) AND {EXCEPTED_SQL}"""))
    _attach_states(db, items)
    return QueuePage(items, total, page, max(1, -(-total // page_size)), hidden, f, page_size)


def _attach_states(db: ConsoleDB, items: list[dict[str, Any]]) -> None:
    """Per item: how many of its accounts are confirmed / dismissed / under a response."""
    cids = [i["id"] for i in items if i["kind"] == "campaign"]
    aids = [i["id"] for i in items if i["kind"] == "account"]
    rows = db.rows(f"""
        WITH st AS ({STATE_SQL})
        SELECT coalesce(i.campaign_id, i.account_id) AS id,
               count(*) FILTER (WHERE st.verdict = 'confirm') AS confirmed,
               count(*) FILTER (WHERE st.verdict = 'dismiss') AS dismissed,
               count(*) FILTER (WHERE st.response = 'suspend') AS suspended,
               count(*) FILTER (WHERE coalesce(st.response, 'lift') NOT IN ('lift', 'suspend'))
                 AS other_response
        FROM console_account_index i JOIN st USING (account_id)
        WHERE list_contains(?, i.campaign_id) OR list_contains(?, i.account_id)
        GROUP BY 1""", [cids, aids])
    by = {r["id"]: r for r in rows}
    for it in items:
        it["state"] = by.get(it["id"], {"confirmed": 0, "dismissed": 0, "suspended": 0,
                                        "other_response": 0})


def facets(db: ConsoleDB) -> dict[str, list[str]]:
    """Values offered in the queue's filter menus."""
    out = {}
    for name, col in (("models", "models"), ("capabilities", "capabilities"),
                      ("countries", "countries")):
        out[name] = [r["v"] for r in db.rows(
            f"SELECT DISTINCT unnest({col}) AS v FROM console_account_index "
            f"WHERE flagged OR campaign_id IS NOT NULL ORDER BY 1 LIMIT 500")]
    return out


# ---------------------------------------------------------------------------- campaign
MAX_GRAPH_EDGES = 3000
HEAT_ACCOUNTS = 20
MAX_HOURS = 24 * 14


def campaign_members(db: ConsoleDB, cid: str) -> list[str]:
    return [r["account_id"] for r in db.rows(
        "SELECT account_id FROM console_account_index WHERE campaign_id = ? ORDER BY account_id",
        [cid])]


def campaign_page(db: ConsoleDB, cid: str) -> dict[str, Any] | None:
    """Everything the campaign page shows, or None for an unknown campaign id.

    The members' requests are read from ``requests`` once, into a temp table the page's
    request-level queries share (one scan of a large store instead of three)."""
    with db.lock:
        return _campaign_page(db, cid)


def _campaign_page(db: ConsoleDB, cid: str) -> dict[str, Any] | None:
    head = db.one("SELECT * FROM console_campaign_index WHERE campaign_id = ?", [cid])
    if head is None:
        return None
    members = db.rows(f"""
        WITH st AS ({STATE_SQL})
        SELECT i.account_id, i.score, i.n_requests, i.first_ts, i.last_ts, i.top_capability,
               s.reasons, st.verdict, st.response, {EXCEPTED_SQL} AS excepted
        FROM console_account_index i JOIN scores s USING (account_id)
        LEFT JOIN st USING (account_id)
        WHERE i.campaign_id = ? ORDER BY i.score DESC, i.account_id""", [cid])
    mem_sql = "SELECT account_id FROM console_account_index WHERE campaign_id = ?"
    p = [cid]
    db.execute(f"""CREATE OR REPLACE TEMP TABLE _page_req AS
                   SELECT request_id, account_id, ts, model, prompt, user_agent FROM requests
                   WHERE account_id IN ({mem_sql})""", p)
    out: dict[str, Any] = {"campaign": head, "members": members}
    out["reasons"] = _campaign_reasons(db, cid, members)
    if db.has["edges"]:
        out["edges"] = db.rows(f"""
            SELECT a, b, weight, kinds FROM edges
            WHERE a IN ({mem_sql}) AND b IN ({mem_sql})
            ORDER BY weight DESC LIMIT {MAX_GRAPH_EDGES}""", p + p)
    else:
        out["edges"] = []
    top = [m["account_id"] for m in sorted(members, key=lambda m: -m["n_requests"])
           [:HEAT_ACCOUNTS]]
    t0 = head["first_ts"]
    out["heat"] = _hourly(db, top, t0, head["last_ts"], "_page_req")
    sig = "signals" if db.has["signals"] else None
    out["capabilities"] = db.rows(f"""
        SELECT capability, count(*) AS n, count(*) / sum(count(*)) OVER () AS share
        FROM {sig} WHERE account_id IN ({mem_sql}) GROUP BY 1 ORDER BY n DESC""", p) \
        if sig else []
    out["models"] = db.rows("""
        SELECT model, CAST(date_trunc('day', ts) AS DATE) AS day, count(*) AS n
        FROM _page_req GROUP BY 1, 2 ORDER BY 2, 1""")
    out["indicators"] = _indicators(db, cid)
    out["samples"] = db.rows("""
        SELECT request_id, account_id, ts, model, prompt, user_agent FROM _page_req
        WHERE prompt IS NOT NULL ORDER BY hash(request_id) LIMIT 12""")
    out["partner"] = db.rows(f"""
        SELECT account_id, partner_hits, partner_confidence, partner_reasons FROM features
        WHERE account_id IN ({mem_sql}) AND partner_hits > 0
        ORDER BY partner_confidence DESC LIMIT 50""", p) \
        if db.has["features"] and "partner_hits" in _cols(db, "features") else []
    out["actions"] = db.rows(
        "SELECT * FROM console_actions WHERE campaign_id = ? ORDER BY id DESC LIMIT 200", p)
    return out


def _cols(db: ConsoleDB, table: str) -> set[str]:
    return {r["column_name"] for r in db.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table])}


def _campaign_reasons(db: ConsoleDB, cid: str, members: list[dict[str, Any]]) -> list[str]:
    """The group's coordination (as scoring words it) and its members' commonest reasons."""
    out: list[str] = []
    if db.has["groups"] and db.has["communities"]:
        from distillguard.scoring import _group_reason

        g = db.one("""
            SELECT g.* FROM groups g JOIN communities c USING (community)
            JOIN console_account_index i USING (account_id)
            WHERE i.campaign_id = ? GROUP BY ALL ORDER BY count(*) DESC LIMIT 1""", [cid])
        if g:
            out.append(_group_reason(g))
    counts: dict[str, int] = {}
    for m in members:
        for r in (m["reasons"] or "").split("; "):
            if r and not r.startswith("member of campaign"):
                key = r.split(" in ")[0] if " in " in r else r
                counts[key] = counts.get(key, 0) + 1
    for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6]:
        out.append(f"{k} ({n} of {len(members)} accounts)")
    return out


def _hourly(db: ConsoleDB, accounts: list[str], t0: Any, t1: Any,
            source: str = "requests") -> dict[str, Any]:
    if not accounts or t0 is None:
        return {"accounts": [], "hours": 0, "cells": [], "max": 0, "start": None}
    hours = min(MAX_HOURS, int((t1 - t0).total_seconds() // 3600) + 1)
    cells = db.rows(f"""
        SELECT account_id, CAST(floor(epoch(ts - ?::TIMESTAMP) / 3600) AS INTEGER) AS h,
               count(*) AS n
        FROM {source} WHERE list_contains(?, account_id) AND ts >= ?::TIMESTAMP
          AND ts < ?::TIMESTAMP + INTERVAL {hours} HOUR
        GROUP BY 1, 2""", [t0, accounts, t0, t0])
    return {"accounts": accounts, "hours": hours, "cells": cells,
            "max": max((c["n"] for c in cells), default=0), "start": t0}


_IND = (("ip_prefix", "prefixes", "IP prefix"), ("user_agent", "user_agents", "user agent"),
        ("payment", "payments", "payment fingerprint"), ("org", "orgs", "org"),
        ("api_key", "api_keys", "API key"))


def _indicators(db: ConsoleDB, cid: str) -> list[dict[str, Any]]:
    """Values two or more members share, with how many accounts use each store-wide: the
    fewer outside the campaign, the more unusual the sharing."""
    parts = []
    for kind, col, _ in _IND:
        parts.append(f"""
            SELECT '{kind}' AS kind, v AS value, count(*) AS in_campaign FROM (
              SELECT unnest({col}) AS v FROM console_account_index WHERE campaign_id = ?)
            GROUP BY v HAVING count(*) >= 2""")
    rows = db.rows(f"""
        WITH c AS ({' UNION ALL '.join(parts)}),
        top AS (SELECT * FROM c QUALIFY row_number() OVER (PARTITION BY kind
                ORDER BY in_campaign DESC, value) <= 8)
        SELECT top.kind, top.value, top.in_campaign,
               (SELECT count(*) FROM console_account_index i WHERE CASE top.kind
                  WHEN 'ip_prefix' THEN list_contains(i.prefixes, top.value)
                  WHEN 'user_agent' THEN list_contains(i.user_agents, top.value)
                  WHEN 'payment' THEN list_contains(i.payments, top.value)
                  WHEN 'org' THEN list_contains(i.orgs, top.value)
                  ELSE list_contains(i.api_keys, top.value) END) AS store_wide
        FROM top ORDER BY kind, in_campaign DESC""", [cid] * len(_IND))
    n_all = int(db.value("SELECT count(*) FROM console_account_index"))
    label = {k: lab for k, _, lab in _IND}
    for r in rows:
        r["label"] = label[r["kind"]]
        outside = int(r["store_wide"]) - int(r["in_campaign"])
        r["outside"] = outside
        # share of the store's accounts holding the value: small = unusual to share
        r["store_share"] = int(r["store_wide"]) / max(n_all, 1)
        r["unusual"] = "very" if outside == 0 else ("somewhat" if outside < r["in_campaign"]
                                                    else "common")
    return rows


# ---------------------------------------------------------------------------- account
REQ_PAGE = 50


def account_page(db: ConsoleDB, aid: str, page: int = 1) -> dict[str, Any] | None:
    """Everything the account page shows (its requests read once), or None."""
    with db.lock:
        return _account_page(db, aid, page)


def _account_page(db: ConsoleDB, aid: str, page: int) -> dict[str, Any] | None:
    head = db.one(f"""
        WITH st AS ({STATE_SQL})
        SELECT i.*, s.reasons, s.raw, s.final_raw, st.verdict, st.response,
               {EXCEPTED_SQL} AS excepted
        FROM console_account_index i JOIN scores s USING (account_id)
        LEFT JOIN st USING (account_id) WHERE i.account_id = ?""", [aid])
    if head is None:
        return None
    page = max(1, page)
    out: dict[str, Any] = {"account": head}
    db.execute("""CREATE OR REPLACE TEMP TABLE _page_req AS SELECT request_id, ts, model,
                  prompt, user_agent, ip, org_id, api_key_id, country, output_tokens, account_id
                  FROM requests WHERE account_id = ?""", [aid])
    out["timeline"] = _hourly(db, [aid], head["first_ts"], head["last_ts"], "_page_req") \
        if head["first_ts"] else _hourly(db, [], None, None)
    sj = ("LEFT JOIN (SELECT * FROM signals WHERE account_id = ?) g USING (request_id)"
          if db.has["signals"] else "")
    scols = ("g.capability, g.cot_elicit, g.rubric_grading, g.censorship_safe, g.elicit_p"
             if db.has["signals"] else "NULL AS capability, NULL AS cot_elicit, "
             "NULL AS rubric_grading, NULL AS censorship_safe, NULL AS elicit_p")
    out["requests"] = db.rows(f"""
        SELECT r.request_id, r.ts, r.model, r.prompt, r.user_agent, r.ip, r.org_id,
               r.api_key_id, r.country, r.output_tokens, {scols}
        FROM _page_req r {sj} ORDER BY r.ts DESC
        LIMIT {REQ_PAGE} OFFSET {(page - 1) * REQ_PAGE}""", [aid] if sj else [])
    out["req_page"], out["req_pages"] = page, max(1, -(-int(head["n_requests"]) // REQ_PAGE))
    out["signals"] = db.one("""
        SELECT count(*) AS n, avg(cot_elicit::INT) AS cot, avg(rubric_grading::INT) AS rubric,
               avg(censorship_safe::INT) AS censor, avg(elicit_p) AS elicit_p
        FROM signals WHERE account_id = ?""", [aid]) if db.has["signals"] else None
    out["features"] = db.one("SELECT * FROM features WHERE account_id = ?", [aid]) \
        if db.has["features"] else None
    out["links"] = db.rows("""
        SELECT CASE WHEN a = ? THEN b ELSE a END AS other, weight, kinds, evidence
        FROM edges WHERE a = ? OR b = ? ORDER BY weight DESC LIMIT 50""", [aid, aid, aid]) \
        if db.has["edges"] else []
    out["actions"] = db.rows(
        "SELECT * FROM console_actions WHERE account_id = ? ORDER BY id DESC", [aid])
    out["exceptions"] = db.rows("""
        SELECT e.* FROM console_exceptions e, console_account_index i
        WHERE i.account_id = ? AND e.status = 'active' AND (
          (e.kind = 'account' AND e.value = i.account_id)
          OR (e.kind = 'org' AND list_contains(i.orgs, e.value))
          OR (e.kind = 'api_key' AND list_contains(i.api_keys, e.value))
          OR (e.kind = 'ip_prefix' AND list_contains(i.prefixes, e.value))
          OR (e.kind = 'user_agent' AND list_contains(i.user_agents, e.value))
          OR (e.kind = 'payment' AND list_contains(i.payments, e.value)))""", [aid])
    return out
