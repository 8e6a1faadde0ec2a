"""Features on a growing store: recompute only the accounts whose ``_req`` rows changed.

Every feature is an aggregate over one account's rows of ``_req``, so an account's features
change only when one of its rows does. A row changes when

* the request is new (appended, or its text pruned since the last run: ``retention`` hands
  those to the next run as new);
* its template id, or whether the template reaches ``features.min_template_size``, changed
  (templates are chosen over all requests, so new requests can move old ones);
* a count over every account changed for its key: accounts per address (``ip_n``), per card
  (``card_n``), per system prompt (``sys_a``);
* the new-model windows changed (a model seen for the first time, the store's first
  timestamp) and its timestamp lies in an old or new window that differs.

The parts of ``_req`` over all accounts (``defs.GLOBAL_PARTS``) are kept between runs, so
each run compares them with their new values. What depends on the request alone
(``defs.own_sql``: its prompt hashed, its address's prefix, ...) and its system-prompt key are
kept per request and computed for new requests only. The accounts found
("dirty") get all their ``_req`` rows rebuilt (their inter-arrival gaps need every row) and
their features re-aggregated with the same SQL as a full run (``defs.features_sql``), so
each account's row equals a full run's.

``_req`` keeps, for accounts not rebuilt, the template size it was built with where that
size moved but stayed on the same side of ``min_template_size``: no feature reads more.
"""

from __future__ import annotations

import duckdb

from distillguard.config import Config
from distillguard.features.defs import (
    GLOBAL_PARTS,
    enriched_sql,
    features_sql,
    global_part_sql,
    own_sql,
)
from distillguard.store import scalar, table_exists

#: Tables an incremental run keeps: the global parts of ``_req`` and the features before
#: partner indicators are joined in (``features`` itself is rebuilt from it every run).
STATE = {name: f"_inc_{name}" for name in GLOBAL_PARTS}
#: ``defs.own_sql`` of every request: the per-request part of ``_req`` (prompt hash, ...).
OWN = "_inc_own"
BASE = "_inc_features_base"
STATE_TABLES = (*STATE.values(), OWN, BASE)


def build(con: duckdb.DuckDBPyConnection, cfg: Config) -> None:
    """A full build of ``_req`` and the features base that leaves the incremental state."""
    done: dict[str, str] = {}
    for name in GLOBAL_PARTS:              # in order: sys_a reads the sys_r just kept
        con.execute(f"CREATE OR REPLACE TABLE {STATE[name]} AS "
                    f"{global_part_sql(cfg, name, materialized=done)}")
        done[name] = STATE[name]
    con.execute(f"CREATE OR REPLACE TABLE {OWN} AS {own_sql(cfg)}")
    con.execute("CREATE OR REPLACE TABLE _req AS "
                f"{enriched_sql(cfg, materialized={**STATE, 'own': OWN}, request_id=True)}")
    con.execute(f"CREATE OR REPLACE TABLE {BASE} AS {features_sql(cfg)}")


def ready(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store holds the state :func:`update` starts from."""
    return (all(table_exists(con, t) for t in (*STATE_TABLES, "_req"))
            and bool(scalar(con, "SELECT count(*) FROM information_schema.columns "
                                 "WHERE table_name = '_req' AND column_name = 'request_id'")))


def update(con: duckdb.DuckDBPyConnection, cfg: Config) -> int:
    """Bring ``_req`` and the features base up to the store; returns the accounts redone."""
    m = int(cfg["features"]["min_template_size"])
    con.execute("CREATE OR REPLACE TEMP TABLE _inc_new AS SELECT request_id, account_id "
                "FROM requests ANTI JOIN _req USING (request_id)")
    con.execute(f"""INSERT INTO {STATE['sys_r']} BY NAME {global_part_sql(
        cfg, 'sys_r', requests='(SELECT * FROM requests SEMI JOIN _inc_new USING (request_id))')}""")
    con.execute(f"INSERT INTO {OWN} BY NAME "
                f"{own_sql(cfg, '(SELECT * FROM requests SEMI JOIN _inc_new USING (request_id))')}")
    fresh = {"sys_r": STATE["sys_r"], "own": OWN}
    for name in ("windows", "ip_n", "card_n", "sys_a"):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _inc_next_{name} AS "
                    f"{global_part_sql(cfg, name, materialized={'sys_r': STATE['sys_r']})}")
        fresh[name] = f"_inc_next_{name}"

    def changed(name: str, key: str) -> str:
        return (f"SELECT {key} FROM {STATE[name]} o FULL JOIN {fresh[name]} n USING ({key}) "
                "WHERE o.n IS DISTINCT FROM n.n")

    moved_windows = (f"(SELECT * FROM {STATE['windows']} EXCEPT SELECT * FROM "
                     f"{fresh['windows']}) UNION ALL (SELECT * FROM {fresh['windows']} "
                     f"EXCEPT SELECT * FROM {STATE['windows']})")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _inc_dirty AS
        SELECT DISTINCT account_id FROM (
          SELECT account_id FROM _inc_new
          UNION ALL
          SELECT q.account_id FROM _req q JOIN signals s USING (request_id)
          WHERE q.template_id IS DISTINCT FROM s.template_id
             OR (q.template_size >= {m}) IS DISTINCT FROM (s.template_size >= {m})
          UNION ALL
          SELECT account_id FROM _req WHERE ip IN ({changed('ip_n', 'ip')})
          UNION ALL
          SELECT account_id FROM {OWN}
          WHERE payment_fingerprint IN ({changed('card_n', 'payment_fingerprint')})
          UNION ALL
          SELECT account_id FROM {STATE['sys_r']} WHERE sys_key IN ({changed('sys_a', 'sys_key')})
          UNION ALL
          SELECT q.account_id FROM _req q JOIN ({moved_windows}) w
            ON q.ts >= w.w0 AND q.ts < w.w1
        )""")
    n = int(scalar(con, "SELECT count(*) FROM _inc_dirty"))
    con.execute("DELETE FROM _req WHERE account_id IN (SELECT account_id FROM _inc_dirty)")
    con.execute("INSERT INTO _req BY NAME "
                f"{enriched_sql(cfg, materialized=fresh, accounts='_inc_dirty', request_id=True)}")
    con.execute(f"DELETE FROM {BASE} WHERE account_id IN (SELECT account_id FROM _inc_dirty)")
    con.execute("CREATE OR REPLACE TEMP VIEW _inc_req AS SELECT * FROM _req "
                "WHERE account_id IN (SELECT account_id FROM _inc_dirty)")
    con.execute(f"INSERT INTO {BASE} BY NAME {features_sql(cfg, source='_inc_req')}")
    con.execute("DROP VIEW _inc_req")
    for name in ("windows", "ip_n", "card_n", "sys_a"):
        con.execute(f"CREATE OR REPLACE TABLE {STATE[name]} AS SELECT * FROM {fresh[name]}")
        con.execute(f"DROP TABLE {fresh[name]}")
    con.execute("DROP TABLE _inc_new")
    con.execute("DROP TABLE _inc_dirty")
    return n


def forget_requests(con: duckdb.DuckDBPyConnection, ids_table: str) -> None:
    """Make the requests in ``ids_table`` new to the next :func:`update` (their text
    changed, e.g. pruned): their rows leave ``_req`` and the kept system-prompt keys."""
    for t in ("_req", STATE["sys_r"], OWN):
        if table_exists(con, t):
            con.execute(f"DELETE FROM {t} WHERE request_id IN (SELECT request_id FROM "
                        f"{ids_table})")


def drop(con: duckdb.DuckDBPyConnection) -> None:
    for t in STATE_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {t}")
