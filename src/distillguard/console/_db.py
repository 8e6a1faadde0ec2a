"""The console's tables, kept in the detection store beside the tables detection writes.

Detection owns ``requests``, ``signals``, ``scores``, ``edges``, ``communities``, ``groups``,
``features`` (docs/CONTRACTS.md) and rewrites them on every run; the console only reads them.
The console owns the ``console_*`` tables, which survive re-detection:

* ``console_users``: name, role, argon2 hash; ``console_sessions``: SHA-256 of the session
  token, user, CSRF token, expiry;
* ``console_actions``: one row per action on one account (a bulk action writes one row per
  account), with the audit log entry's ``seq`` and ``hash``;
* ``console_exceptions``: documented, reviewable exceptions (dismissed patterns, allow-lists);
* ``console_calibrations``: recalibration proposals and which one was applied;
* ``console_account_index``: one row per account summarising its requests (models, countries,
  orgs, keys, prefixes, user agents, time span) so the queue never scans ``requests``; rebuilt
  when the store's detection output changes (``console_meta.index_signature``).

All access goes through :class:`ConsoleDB`, which serialises it on one DuckDB connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from distillguard.config import Config, load_config
from distillguard.errors import StoreError
from distillguard.features.defs import ip_prefix_sql
from distillguard.store import connect, scalar, table_exists

__all__ = ["ConsoleDB", "REQUIRED_TABLES"]

#: Detection tables the console reads (``groups``/``edges``/``features`` are optional).
REQUIRED_TABLES = ("requests", "scores")

_DDL = """
CREATE TABLE IF NOT EXISTS console_meta (k VARCHAR PRIMARY KEY, v VARCHAR);
CREATE TABLE IF NOT EXISTS console_users (
    username VARCHAR PRIMARY KEY, role VARCHAR NOT NULL, pw_hash VARCHAR NOT NULL,
    created_at TIMESTAMP DEFAULT now(), disabled BOOLEAN DEFAULT false);
CREATE TABLE IF NOT EXISTS console_sessions (
    token_hash VARCHAR PRIMARY KEY, username VARCHAR NOT NULL, csrf VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL, expires_at TIMESTAMP NOT NULL);
CREATE SEQUENCE IF NOT EXISTS console_action_id;
CREATE TABLE IF NOT EXISTS console_actions (
    id BIGINT DEFAULT nextval('console_action_id'), ts TIMESTAMP NOT NULL,
    actor VARCHAR NOT NULL, role VARCHAR NOT NULL, action VARCHAR NOT NULL,
    account_id VARCHAR, campaign_id VARCHAR, reason VARCHAR, params VARCHAR,
    audit_seq BIGINT, audit_hash VARCHAR);
CREATE SEQUENCE IF NOT EXISTS console_exception_id;
CREATE TABLE IF NOT EXISTS console_exceptions (
    id BIGINT DEFAULT nextval('console_exception_id'), kind VARCHAR NOT NULL,
    value VARCHAR NOT NULL, reason VARCHAR NOT NULL, pattern VARCHAR,
    created_by VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, review_by DATE NOT NULL,
    status VARCHAR NOT NULL DEFAULT 'active', revoked_by VARCHAR, revoked_at TIMESTAMP,
    source_action BIGINT);
CREATE SEQUENCE IF NOT EXISTS console_calibration_id;
CREATE TABLE IF NOT EXISTS console_calibrations (
    id BIGINT DEFAULT nextval('console_calibration_id'), created_at TIMESTAMP NOT NULL,
    created_by VARCHAR NOT NULL, body VARCHAR NOT NULL, applied_at TIMESTAMP,
    applied_by VARCHAR, path VARCHAR);
"""

class ConsoleDB:
    """The store, opened once, with the console's tables created on it.

    Parameters
    ----------
    path : str or Path
        The DuckDB store a detection run wrote (``distillguard detect --db``).
    config : Config, optional
        The detection config (default: the packaged one); its network prefix length is the
        one the index lists and searches, as linking keys on it.
    """

    def __init__(self, path: str | Path, config: Config | None = None) -> None:
        self.prefix_sql = ip_prefix_sql(config or load_config())
        p = Path(path)
        if str(path) != ":memory:" and not p.is_file():
            raise StoreError(f"no store at {path}: run `distillguard detect --db {path}` "
                             "or `distillguard demo` first")
        self.path = p
        self.con = connect(path)
        self.lock = threading.RLock()
        for t in REQUIRED_TABLES:
            if not table_exists(self.con, t):
                raise StoreError(f"{path} has no {t} table: run `distillguard detect` on it")
        if not scalar(self.con, "SELECT count(*) FROM scores"):
            raise StoreError(f"{path}: the scores table is empty: run `distillguard detect`")
        try:
            self.con.execute(_DDL)
        except duckdb.Error as exc:
            raise StoreError(f"cannot create the console's tables in {path}: {exc}") from exc
        self.has = {t: table_exists(self.con, t)
                    for t in ("signals", "edges", "groups", "features", "communities",
                              "calibration", "partner_indicators")}
        self.ensure_index()

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, held for the block (one statement stream at a time)."""
        with self.lock:
            try:
                yield self.con
            except duckdb.Error as exc:
                raise StoreError(f"store query failed: {exc}") from exc

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.cursor() as c:
            cur = c.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def one(self, sql: str, params: list[Any] | None = None) -> dict[str, Any] | None:
        r = self.rows(sql, params)
        return r[0] if r else None

    def value(self, sql: str, params: list[Any] | None = None) -> Any:
        with self.cursor() as c:
            return scalar(c, sql, params)

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        with self.cursor() as c:
            c.execute(sql, params or [])

    def close(self) -> None:
        with self.lock:
            self.con.close()

    # ------------------------------------------------------------------ account index
    def signature(self) -> str:
        """Changes whenever detection rewrites its output (or requests are added)."""
        r = self.one("SELECT count(*) AS n, sum(hash(account_id, score)) AS h FROM scores")
        n_req = self.value("SELECT count(*) FROM requests")
        return f"{n_req}:{r['n']}:{r['h']}" if r else str(n_req)

    def ensure_index(self, force: bool = False) -> bool:
        """(Re)build ``console_account_index`` when detection output changed; True if built."""
        sig = self.signature()
        have = self.value("SELECT v FROM console_meta WHERE k = 'index_signature'")
        if have == sig and not force and table_exists(self.con, "console_account_index"):
            return False
        cap = ("LEFT JOIN (SELECT account_id, arg_max(capability, n) AS top_capability, "
               "list(capability ORDER BY n DESC) AS capabilities FROM (SELECT account_id, "
               "capability, count(*) AS n FROM signals GROUP BY ALL) GROUP BY account_id) c "
               "USING (account_id)") if self.has["signals"] else ""
        cap_cols = ("c.top_capability, c.capabilities" if self.has["signals"] else
                    "NULL::VARCHAR AS top_capability, []::VARCHAR[] AS capabilities")
        # A Spark run's store keeps requests of campaign members only; the others' counts
        # come from their features.
        feat = ("LEFT JOIN (SELECT account_id, n_requests AS f_n FROM features) f "
                "USING (account_id)") if self.has["features"] else ""
        feat_n = "f.f_n" if self.has["features"] else "NULL"
        with self.cursor() as c:
            c.execute(f"""
                CREATE OR REPLACE TABLE console_account_index AS
                WITH r AS (
                  SELECT account_id, count(*) AS n_requests, min(ts) AS first_ts,
                         max(ts) AS last_ts,
                         list(DISTINCT model) FILTER (WHERE model IS NOT NULL) AS models,
                         list(DISTINCT country) FILTER (WHERE country IS NOT NULL) AS countries,
                         list(DISTINCT org_id) FILTER (WHERE org_id IS NOT NULL) AS orgs,
                         list(DISTINCT api_key_id) FILTER (WHERE api_key_id IS NOT NULL)
                           AS api_keys,
                         list(DISTINCT {self.prefix_sql}) FILTER (WHERE ip IS NOT NULL) AS prefixes,
                         list(DISTINCT user_agent) FILTER (WHERE user_agent IS NOT NULL)
                           AS user_agents,
                         list(DISTINCT payment_fingerprint)
                           FILTER (WHERE payment_fingerprint IS NOT NULL) AS payments
                  FROM requests GROUP BY account_id)
                SELECT s.account_id, s.score, s.flagged, s.campaign_id,
                       coalesce(r.n_requests, {feat_n}, 0) AS n_requests, r.first_ts,
                       r.last_ts,
                       coalesce(r.models, []) AS models, coalesce(r.countries, []) AS countries,
                       coalesce(r.orgs, []) AS orgs, coalesce(r.api_keys, []) AS api_keys,
                       coalesce(r.prefixes, []) AS prefixes,
                       coalesce(r.user_agents, []) AS user_agents,
                       coalesce(r.payments, []) AS payments, {cap_cols},
                       lower(' ' || s.account_id || ' ' || array_to_string(
                         list_concat(coalesce(r.orgs, []), coalesce(r.api_keys, []),
                                     coalesce(r.prefixes, []), coalesce(r.user_agents, []),
                                     coalesce(r.payments, [])), ' ')) AS search_blob
                FROM scores s LEFT JOIN r USING (account_id) {feat} {cap}""")
            c.execute("""
                CREATE OR REPLACE TABLE console_campaign_index AS
                SELECT campaign_id, count(*) AS n_accounts, avg(score) AS score,
                       sum(n_requests) AS n_requests, min(first_ts) AS first_ts,
                       max(last_ts) AS last_ts
                FROM console_account_index WHERE campaign_id IS NOT NULL GROUP BY 1""")
            c.execute("INSERT OR REPLACE INTO console_meta VALUES ('index_signature', ?)", [sig])
        return True
