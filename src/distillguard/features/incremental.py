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
(``defs.own_sql``: its prompt hashed, its address's prefix, ...), its system-prompt key and
what the features read of its template are kept per request and computed for new requests
only. The accounts found ("dirty") get all their ``_req`` rows built (their inter-arrival
gaps need every row) and their features aggregated with the same SQL as a full run
(``defs.enriched_sql``, ``defs.features_sql``), so each account's row equals a full run's.
``_req`` itself is a temporary table here: writing it to the store costs more than building
it.
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
#: Per request, what of its template the features read: the id and whether the template
#: reaches ``min_template_size``, as of the last run.
TPL = "_inc_tpl"
BASE = "_inc_features_base"
STATE_TABLES = (*STATE.values(), OWN, TPL, BASE)


def build(con: duckdb.DuckDBPyConnection, cfg: Config) -> None:
    """A full build of ``_req`` and the features base that leaves the incremental state."""
    done: dict[str, str] = {}
    for name in GLOBAL_PARTS:              # in order: sys_a reads the sys_r just kept
        con.execute(f"CREATE OR REPLACE TABLE {STATE[name]} AS "
                    f"{global_part_sql(cfg, name, materialized=done)}")
        done[name] = STATE[name]
    con.execute(f"CREATE OR REPLACE TABLE {OWN} AS {own_sql(cfg)}")
    m = int(cfg["features"]["min_template_size"])
    con.execute(f"CREATE OR REPLACE TABLE {TPL} AS SELECT request_id, template_id, "
                f"template_size >= {m} AS big FROM signals")
    # _req is a working table here: the state above is what the next run compares with,
    # so it is not written to the store file (writing it costs more than computing it).
    con.execute("DROP TABLE IF EXISTS main._req")
    con.execute("CREATE OR REPLACE TEMP TABLE _req AS "
                f"{enriched_sql(cfg, materialized={**STATE, 'own': OWN})}")
    con.execute(f"CREATE OR REPLACE TABLE {BASE} AS {features_sql(cfg)}")
    con.execute("DROP TABLE _req")


def ready(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store holds the state :func:`update` starts from."""
    return all(table_exists(con, t) for t in STATE_TABLES)


def update(con: duckdb.DuckDBPyConnection, cfg: Config) -> int:
    """Bring the features base up to the store; returns the accounts redone."""
    m = int(cfg["features"]["min_template_size"])
    con.execute("CREATE OR REPLACE TEMP TABLE _inc_new AS SELECT request_id, account_id "
                f"FROM requests ANTI JOIN {OWN} USING (request_id)")
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

    # Requests whose template id moved, or crossed min_template_size, since the last run.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _inc_moved AS
        SELECT t.request_id, s.template_id, s.template_size >= {m} AS big
        FROM {TPL} t JOIN signals s USING (request_id)
        WHERE t.template_id IS DISTINCT FROM s.template_id
           OR t.big IS DISTINCT FROM (s.template_size >= {m})""")
    con.execute(f"UPDATE {TPL} SET template_id = x.template_id, big = x.big FROM _inc_moved x "
                f"WHERE {TPL}.request_id = x.request_id")
    con.execute(f"INSERT INTO {TPL} SELECT request_id, template_id, template_size >= {m} "
                "FROM signals SEMI JOIN _inc_new USING (request_id)")
    moved_windows = (f"(SELECT * FROM {STATE['windows']} EXCEPT SELECT * FROM "
                     f"{fresh['windows']}) UNION ALL (SELECT * FROM {fresh['windows']} "
                     f"EXCEPT SELECT * FROM {STATE['windows']})")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _inc_dirty AS
        SELECT DISTINCT account_id FROM (
          SELECT account_id FROM _inc_new
          UNION ALL
          SELECT o.account_id FROM _inc_moved JOIN {OWN} o USING (request_id)
          UNION ALL
          SELECT account_id FROM {OWN} WHERE ip IN ({changed('ip_n', 'ip')})
          UNION ALL
          SELECT account_id FROM {OWN}
          WHERE payment_fingerprint IN ({changed('card_n', 'payment_fingerprint')})
          UNION ALL
          SELECT account_id FROM {STATE['sys_r']} WHERE sys_key IN ({changed('sys_a', 'sys_key')})
          UNION ALL
          SELECT q.account_id FROM {OWN} q JOIN ({moved_windows}) w
            ON q.ts >= w.w0 AND q.ts < w.w1
        )""")
    n = int(scalar(con, "SELECT count(*) FROM _inc_dirty"))
    # Every row of the dirty accounts, as a full run builds _req, then their features.
    con.execute("CREATE OR REPLACE TEMP TABLE _inc_req AS "
                f"{enriched_sql(cfg, materialized=fresh, accounts='_inc_dirty')}")
    con.execute(f"DELETE FROM {BASE} WHERE account_id IN (SELECT account_id FROM _inc_dirty)")
    con.execute(f"INSERT INTO {BASE} BY NAME {features_sql(cfg, source='_inc_req')}")
    con.execute("DROP TABLE _inc_req")
    con.execute("DROP TABLE _inc_moved")
    for name in ("windows", "ip_n", "card_n", "sys_a"):
        con.execute(f"CREATE OR REPLACE TABLE {STATE[name]} AS SELECT * FROM {fresh[name]}")
        con.execute(f"DROP TABLE {fresh[name]}")
    con.execute("DROP TABLE _inc_new")
    con.execute("DROP TABLE _inc_dirty")
    return n


def forget_requests(con: duckdb.DuckDBPyConnection, ids_table: str) -> None:
    """Make the requests in ``ids_table`` new to the next :func:`update` (their text
    changed, e.g. pruned): their rows leave ``_req`` and the kept system-prompt keys."""
    for t in (STATE["sys_r"], OWN, TPL):
        if table_exists(con, t):
            con.execute(f"DELETE FROM {t} WHERE request_id IN (SELECT request_id FROM "
                        f"{ids_table})")


def drop(con: duckdb.DuckDBPyConnection) -> None:
    for t in STATE_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {t}")
