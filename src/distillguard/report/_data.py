"""DuckDB aggregations for the report.

Every query aggregates (or LIMITs) in SQL, so memory and page size stay bounded however
many requests the store holds. Helper tables are registered under random names on ``con``
and always unregistered again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

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


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, table: pa.Table) -> Iterator[str]:
    """Register an Arrow table on ``con`` under a fresh name; unregister on exit."""
    name = f"_dg_report_{uuid.uuid4().hex[:12]}"
    con.register(name, table)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            con.unregister(name)


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


def store_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    n_req = _one(con, "SELECT count(*), count(DISTINCT account_id) FROM requests")
    n_flag = _one(con, "SELECT count(*) FILTER (WHERE flagged) FROM scores")
    return {
        "n_requests": int(n_req[0]) if n_req else 0,
        "n_accounts": int(n_req[1]) if n_req else 0,
        "n_flagged": int(n_flag[0] or 0) if n_flag else 0,
    }


@dataclass
class Timeline:
    unit: str                                   # "hour" or "day"
    start: dt.datetime | None
    end: dt.datetime | None
    counts: dict[int, list[tuple[dt.datetime, int]]]   # rank -> [(bin start, n)]
    models: dict[int, list[tuple[str, dt.datetime]]]   # rank -> [(model, first seen)]


def timeline(
    con: duckdb.DuckDBPyConnection, map_table: str, max_campaigns: int, max_models: int = 12
) -> Timeline:
    span = _one(
        con, f"SELECT min(r.ts), max(r.ts) FROM requests r JOIN {map_table} m USING (account_id) "
        f"WHERE m.rank < ?", [max_campaigns]
    )
    start, end = (span or (None, None))
    if start is None or end is None:
        return Timeline("hour", None, None, {}, {})
    unit = "hour" if (end - start) <= dt.timedelta(days=45) else "day"
    counts: dict[int, list[tuple[dt.datetime, int]]] = {}
    for rank, t, n in con.execute(
        f"SELECT m.rank, date_trunc('{unit}', r.ts) AS t, count(*) FROM requests r "
        f"JOIN {map_table} m USING (account_id) WHERE m.rank < ? AND r.ts IS NOT NULL "
        f"GROUP BY 1, 2 ORDER BY 1, 2", [max_campaigns]
    ).fetchall():
        counts.setdefault(int(rank), []).append((t, int(n)))
    models: dict[int, list[tuple[str, dt.datetime]]] = {}
    for rank, model, first in con.execute(
        f"SELECT rank, model, first FROM (SELECT m.rank, r.model, min(r.ts) AS first, "
        f"row_number() OVER (PARTITION BY m.rank ORDER BY min(r.ts), r.model) AS k "
        f"FROM requests r JOIN {map_table} m USING (account_id) "
        f"WHERE m.rank < ? AND r.ts IS NOT NULL GROUP BY 1, 2) WHERE k <= ? ORDER BY 1, 3",
        [max_campaigns, max_models],
    ).fetchall():
        models.setdefault(int(rank), []).append((str(model), first))
    return Timeline(unit, start, end, counts, models)


def capability_mix(
    con: duckdb.DuckDBPyConnection, map_table: str, max_campaigns: int
) -> dict[int, dict[str, int]]:
    """rank -> {capability: requests}; rank -1 is all traffic outside campaigns."""
    known = ", ".join(f"'{c}'" for c in CAPABILITIES)
    out: dict[int, dict[str, int]] = {}
    for rank, cap, n in con.execute(
        f"SELECT coalesce(m.rank, -1) AS rk, "
        f"CASE WHEN lower(s.capability) IN ({known}) THEN lower(s.capability) ELSE 'other' END, "
        f"count(*) FROM signals s LEFT JOIN {map_table} m USING (account_id) "
        f"WHERE coalesce(m.rank, -1) < ? GROUP BY 1, 2", [max_campaigns]
    ).fetchall():
        out.setdefault(int(rank), {})[str(cap)] = int(n)
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


def top_flagged(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    cur = con.execute(
        "WITH top AS (SELECT account_id, score, campaign_id, reasons FROM scores "
        "WHERE flagged ORDER BY score DESC NULLS LAST, account_id LIMIT ?), "
        "cnt AS (SELECT account_id, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts "
        "FROM requests WHERE account_id IN (SELECT account_id FROM top) GROUP BY 1) "
        "SELECT top.account_id, top.score, top.campaign_id, top.reasons, cnt.n, cnt.first_ts, "
        "cnt.last_ts FROM top LEFT JOIN cnt USING (account_id) "
        "ORDER BY top.score DESC NULLS LAST, top.account_id", [limit]
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
    con: duckdb.DuckDBPyConnection, cmap: CampaignMap, max_nodes: int, max_edges: int
) -> Graph:
    """Accounts of the ranked campaigns plus their direct neighbours in ``edges``.

    Deterministic under the cap: campaign accounts in rounds of ``_ROUND`` per campaign (so a
    huge top campaign cannot crowd out the others), by campaign rank then id, keeping a quarter
    of the nodes for neighbours; then neighbours by strongest link weight, then id.
    Neighbours that are flagged get group -1, the others -2.
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
        nbq = (f"SELECT nb, max(w) AS w FROM (SELECT e.b AS nb, e.weight AS w FROM edges e "
               f"JOIN {st} s ON e.a = s.account_id UNION ALL SELECT e.a, e.weight FROM edges e "
               f"JOIN {st} s ON e.b = s.account_id) WHERE nb IS NOT NULL AND nb NOT IN "
               f"(SELECT account_id FROM {st}) GROUP BY nb")
        row = _one(con, f"SELECT count(*) FROM ({nbq})")
        n_nb_total = int(row[0]) if row else 0
        room = max_nodes - len(seeds)
        neighbours = con.execute(
            f"SELECT n.nb, coalesce(bool_or(sc.flagged), false) FROM ({nbq}) n "
            f"LEFT JOIN scores sc ON sc.account_id = n.nb GROUP BY n.nb, n.w "
            f"ORDER BY n.w DESC NULLS LAST, n.nb LIMIT ?", [room]
        ).fetchall() if room > 0 else []
    nodes = [a for a, _ in seeds] + [str(n) for n, _ in neighbours]
    group = [g for _, g in seeds] + [-1 if f else -2 for _, f in neighbours]
    index = {a: i for i, a in enumerate(nodes)}
    with registered(con, pa.table({"account_id": pa.array(nodes, pa.string())})) as nt:
        where = (f"a IN (SELECT account_id FROM {nt}) AND b IN (SELECT account_id FROM {nt}) "
                 f"AND a <> b")
        row = _one(con, f"SELECT count(*) FROM edges WHERE {where}")
        n_edges_total = int(row[0]) if row else 0
        erows = con.execute(
            f"SELECT a, b, weight FROM edges WHERE {where} "
            f"ORDER BY weight DESC NULLS LAST, a, b LIMIT ?", [max_edges]
        ).fetchall()
    edges = [(index[a], index[b], float(w) if w is not None else 0.0) for a, b, w in erows]
    return Graph(nodes, group, edges, n_seeds_total + n_nb_total, n_edges_total)
