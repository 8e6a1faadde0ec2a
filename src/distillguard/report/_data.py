"""DuckDB aggregations for the report.

Every query aggregates (or LIMITs) in SQL, so memory and page size stay bounded however
many requests the store holds. Helper tables are registered under random names on ``con``
and always unregistered again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from distillguard.store import Query, duckdb_query, registered  # noqa: F401 (re-exported)

#: Capability classes of ``signals.capability`` in display order; anything else is "other".
CAPABILITIES: tuple[str, ...] = (
    "coding", "math", "agentic", "reasoning", "roleplay", "writing", "chat", "other",
)


@dataclass
class CampaignMap:
    """Account -> campaign membership, for campaigns ranked by score (rank 0 = top)."""

    ids: list[str]
    account_rank: dict[str, int] = field(default_factory=dict)

    def table(self) -> pa.Table:
        accounts = list(self.account_rank)
        return pa.table({
            "account_id": pa.array(accounts, pa.string()),
            "rank": pa.array([self.account_rank[a] for a in accounts], pa.int32()),
        })


def _one(con: duckdb.DuckDBPyConnection, sql: str,
         params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
    """First row of a query, fetching the result completely (DuckDB refuses further work
    on a connection with an unfinished result)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def build_campaign_map(
    con: duckdb.DuckDBPyConnection, ranked: Sequence[dict[str, Any]]
) -> CampaignMap:
    """Membership from the campaigns' ``accounts`` lists, completed from ``scores.campaign_id``.

    An account in several campaigns is attributed to the highest-ranked one.
    """
    ids = [str(c.get("campaign_id", "")) for c in ranked]
    cmap = CampaignMap(ids=ids)
    for rank, camp in enumerate(ranked):
        accounts = camp.get("accounts") or []
        if not isinstance(accounts, (list, tuple)):
            continue
        for acc in accounts:
            if acc is not None:
                cmap.account_rank.setdefault(str(acc), rank)
    if ids:
        rank_of = {cid: i for i, cid in reversed(list(enumerate(ids)))}
        with registered(con, pa.table({"campaign_id": pa.array(list(rank_of), pa.string())})) as t:
            rows = con.execute(
                f"SELECT s.account_id, s.campaign_id FROM scores s "
                f"JOIN {t} USING (campaign_id) ORDER BY s.account_id"
            ).fetchall()
        for acc, cid in rows:
            if acc is not None:
                cmap.account_rank.setdefault(str(acc), rank_of[str(cid)])
    return cmap


# ----------------------------------------------------------------------- aggregates
#
# The report reads the per-request tables (``requests``, ``signals``) only through the
# aggregate queries below, written once in DuckDB's dialect: the DuckDB engine runs them on
# its store, the Spark engine compiles them to Spark SQL (``engines.sqlcompile.to_spark``) and
# runs them on the executors. Their results are small (one row, the shown accounts, per-hour
# rows of the shown campaigns, capability counts per campaign), so only they reach the
# driver. ``{top}`` / ``{map}`` are small helper tables the report passes along.

TOTALS_SQL = "SELECT count(*) AS n_requests, count(DISTINCT account_id) AS n_accounts FROM requests"

#: Requests, first and last seen of the accounts in ``{top}`` (account_id).
ACCOUNTS_SQL = """
SELECT r.account_id, count(*) AS n, min(r.ts) AS first_ts, max(r.ts) AS last_ts
FROM requests r JOIN {top} t ON r.account_id = t.account_id
GROUP BY r.account_id
"""

#: Requests per campaign rank, model and hour of the accounts in ``{map}`` (account_id, rank).
ACTIVITY_SQL = """
SELECT m.rank, r.model, date_trunc('hour', r.ts) AS t, count(*) AS n,
       min(r.ts) AS first_ts, max(r.ts) AS last_ts
FROM requests r JOIN {map} m ON r.account_id = m.account_id
WHERE r.ts IS NOT NULL
GROUP BY m.rank, r.model, date_trunc('hour', r.ts)
"""

_KNOWN = ", ".join(f"'{c}'" for c in CAPABILITIES)

#: Requests per campaign rank (``{map}``; -1: every account outside it) and capability class.
CAPABILITY_SQL = f"""
SELECT coalesce(m.rank, -1) AS rank,
       CASE WHEN lower(s.capability) IN ({_KNOWN}) THEN lower(s.capability) ELSE 'other' END
         AS capability,
       count(*) AS n
FROM signals s LEFT JOIN {{map}} m ON s.account_id = m.account_id
GROUP BY 1, 2
"""

@dataclass
class Aggregates:
    """Everything the report needs from the per-request tables (see the SQL above)."""

    n_requests: int
    n_accounts: int
    accounts: pa.Table       # account_id, n, first_ts, last_ts (the top flagged accounts)
    activity: pa.Table       # rank, model, t, n, first_ts, last_ts (the timeline campaigns)
    capabilities: pa.Table   # rank, capability, n
    campaign_map: CampaignMap
    edges: str = "edges"     # table with the link edges around campaign accounts


#: Flagged accounts by score, then id. The score is rounded first: the engines sum the same
#: evidence in different orders, so identical accounts can differ in the last bits and would
#: be listed in a different order by DuckDB and Spark.
TOP_ORDER = "round(score, 9) DESC NULLS LAST, account_id"


def _rank_map(cmap: CampaignMap, max_rank: int) -> pa.Table:
    t = cmap.table()
    return t.filter(pa.compute.less(t.column("rank"), max_rank))


def aggregates(con: duckdb.DuckDBPyConnection, ranked: Sequence[dict[str, Any]],
               query: Query, *, max_accounts: int, max_timeline: int,
               max_capability: int) -> Aggregates:
    """Run the aggregate queries through ``query``; ``con`` holds ``scores`` (for the campaign
    map and the top flagged accounts)."""
    cmap = build_campaign_map(con, ranked)
    tot = query(TOTALS_SQL, {}).to_pylist()
    top = con.sql(
        f"SELECT account_id FROM scores WHERE flagged ORDER BY {TOP_ORDER} "
        f"LIMIT {int(max_accounts)}").to_arrow_table()
    return Aggregates(
        n_requests=int(tot[0]["n_requests"] or 0) if tot else 0,
        n_accounts=int(tot[0]["n_accounts"] or 0) if tot else 0,
        accounts=query(ACCOUNTS_SQL, {"top": top}),
        activity=query(ACTIVITY_SQL, {"map": _rank_map(cmap, max_timeline)}),
        capabilities=query(CAPABILITY_SQL, {"map": _rank_map(cmap, max_capability)}),
        campaign_map=cmap)


# ----------------------------------------------------------------------- figures


def store_counts(con: duckdb.DuckDBPyConnection, agg: Aggregates) -> dict[str, int]:
    n_flag = _one(con, "SELECT count(*) FILTER (WHERE flagged) FROM scores")
    return {
        "n_requests": agg.n_requests,
        "n_accounts": agg.n_accounts,
        "n_flagged": int(n_flag[0] or 0) if n_flag else 0,
    }


@dataclass
class Timeline:
    unit: str                                   # "hour" or "day"
    start: dt.datetime | None
    end: dt.datetime | None
    counts: dict[int, list[tuple[dt.datetime, int]]]   # rank -> [(bin start, n)]
    models: dict[int, list[tuple[str, dt.datetime]]]   # rank -> [(model, first seen)]


def timeline(con: duckdb.DuckDBPyConnection, agg: Aggregates, max_models: int = 12) -> Timeline:
    with registered(con, agg.activity) as act:
        span = _one(con, f"SELECT min(first_ts), max(last_ts) FROM {act}")
        start, end = (span or (None, None))
        if start is None or end is None:
            return Timeline("hour", None, None, {}, {})
        unit = "hour" if (end - start) <= dt.timedelta(days=45) else "day"
        counts: dict[int, list[tuple[dt.datetime, int]]] = {}
        for rank, t, n in con.execute(
            f"SELECT rank, date_trunc('{unit}', t) AS b, sum(n) FROM {act} "
            f"GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall():
            counts.setdefault(int(rank), []).append((t, int(n)))
        models: dict[int, list[tuple[str, dt.datetime]]] = {}
        for rank, model, first in con.execute(
            f"SELECT rank, model, first FROM (SELECT rank, model, min(first_ts) AS first, "
            f"row_number() OVER (PARTITION BY rank ORDER BY min(first_ts), model) AS k "
            f"FROM {act} GROUP BY 1, 2) WHERE k <= ? ORDER BY 1, 3, 2", [max_models],
        ).fetchall():
            models.setdefault(int(rank), []).append((str(model), first))
    return Timeline(unit, start, end, counts, models)


def capability_mix(agg: Aggregates) -> dict[int, dict[str, int]]:
    """rank -> {capability: requests}; rank -1 is all traffic outside campaigns."""
    out: dict[int, dict[str, int]] = {}
    for r in agg.capabilities.to_pylist():
        d = out.setdefault(int(r["rank"]), {})
        d[str(r["capability"])] = d.get(str(r["capability"]), 0) + int(r["n"])
    return out


def score_histogram(con: duckdb.DuckDBPyConnection, bins: int) -> list[tuple[int, bool, int]]:
    rows = con.execute(
        "SELECT least(greatest(floor(score * ?), 0), ? - 1)::INTEGER AS b, "
        "coalesce(flagged, false) AS f, count(*) FROM scores WHERE score IS NOT NULL "
        "AND isfinite(score) GROUP BY 1, 2 ORDER BY 1, 2", [bins, bins]
    ).fetchall()
    return [(int(b), bool(f), int(n)) for b, f, n in rows]


def min_flagged_score(con: duckdb.DuckDBPyConnection) -> float | None:
    row = _one(con, "SELECT min(score) FROM scores WHERE flagged")
    return None if row is None or row[0] is None else float(row[0])


def top_flagged(con: duckdb.DuckDBPyConnection, agg: Aggregates,
                limit: int) -> list[dict[str, Any]]:
    with registered(con, agg.accounts) as cnt:
        cur = con.execute(
            "WITH top AS (SELECT account_id, score, campaign_id, reasons FROM scores "
            f"WHERE flagged ORDER BY {TOP_ORDER} LIMIT ?) "
            "SELECT top.account_id, top.score, top.campaign_id, top.reasons, cnt.n, "
            f"cnt.first_ts, cnt.last_ts FROM top LEFT JOIN {cnt} cnt USING (account_id) "
            f"ORDER BY {TOP_ORDER}", [limit]
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


_ROUND = 40


@dataclass
class Graph:
    nodes: list[str]
    group: list[int]          # campaign rank; neighbours: -1 flagged, -2 not flagged
    edges: list[tuple[int, int, float]]
    n_candidates: int         # nodes that would be drawn without the cap
    n_edges_total: int


def link_graph(
    con: duckdb.DuckDBPyConnection, cmap: CampaignMap, max_nodes: int, max_edges: int,
    edges: str = "edges",
) -> Graph:
    """Accounts of the ranked campaigns plus their direct neighbours in ``edges``.

    Deterministic under the cap: campaign accounts in rounds of ``_ROUND`` per campaign (so a
    huge top campaign cannot crowd out the others), by campaign rank then id, keeping a quarter
    of the nodes for neighbours; then neighbours by strongest link weight, then id.
    Neighbours that are flagged get group -1, the others -2. ``edges`` names the table of
    links (a, b, weight): the store's ``edges``, or the Spark engine's edges around campaign
    accounts. Weights are rounded before they order anything (see ``TOP_ORDER``).
    """
    by_rank: dict[int, list[str]] = {}
    for acc, rank in cmap.account_rank.items():
        by_rank.setdefault(rank, []).append(acc)
    keyed = [((pos // _ROUND, rank, acc), acc, rank)
             for rank, accs in by_rank.items() for pos, acc in enumerate(sorted(accs))]
    keyed.sort()
    seeds = [(acc, rank) for _, acc, rank in keyed]
    n_seeds_total = len(seeds)
    if not seeds:
        return Graph([], [], [], 0, 0)
    if len(seeds) > max_nodes * 3 // 4:
        seeds = seeds[: max(max_nodes * 3 // 4, 1)]
    seed_tbl = pa.table({"account_id": pa.array([a for a, _ in seeds], pa.string())})
    with registered(con, seed_tbl) as st:
        nbq = (f"SELECT nb, max(w) AS w FROM (SELECT e.b AS nb, e.weight AS w FROM {edges} e "
               f"JOIN {st} s ON e.a = s.account_id UNION ALL SELECT e.a, e.weight FROM {edges} e "
               f"JOIN {st} s ON e.b = s.account_id) WHERE nb IS NOT NULL AND nb NOT IN "
               f"(SELECT account_id FROM {st}) GROUP BY nb")
        row = _one(con, f"SELECT count(*) FROM ({nbq})")
        n_nb_total = int(row[0]) if row else 0
        room = max_nodes - len(seeds)
        neighbours = con.execute(
            f"SELECT n.nb, coalesce(bool_or(sc.flagged), false) FROM ({nbq}) n "
            f"LEFT JOIN scores sc ON sc.account_id = n.nb GROUP BY n.nb, n.w "
            f"ORDER BY round(n.w, 9) DESC NULLS LAST, n.nb LIMIT ?", [room]
        ).fetchall() if room > 0 else []
    nodes = [a for a, _ in seeds] + [str(n) for n, _ in neighbours]
    group = [g for _, g in seeds] + [-1 if f else -2 for _, f in neighbours]
    index = {a: i for i, a in enumerate(nodes)}
    with registered(con, pa.table({"account_id": pa.array(nodes, pa.string())})) as nt:
        where = (f"a IN (SELECT account_id FROM {nt}) AND b IN (SELECT account_id FROM {nt}) "
                 f"AND a <> b")
        row = _one(con, f"SELECT count(*) FROM {edges} WHERE {where}")
        n_edges_total = int(row[0]) if row else 0
        erows = con.execute(
            f"SELECT a, b, round(weight, 9) AS w FROM {edges} WHERE {where} "
            f"ORDER BY w DESC NULLS LAST, a, b LIMIT ?", [max_edges]
        ).fetchall()
    drawn = [(index[a], index[b], float(w) if w is not None else 0.0) for a, b, w in erows]
    return Graph(nodes, group, drawn, n_seeds_total + n_nb_total, n_edges_total)
