"""Learned-elicitation hits the system prompt alone explains.

Agent frameworks (ReAct's "Thought / Action / Observation" loop, code agents' "Thought /
Code" steps) put a reasoning scratchpad in the system prompt every user of the framework
sends: the learned model reads each such request as elicitation whatever the user asked.
For every request the model counts (``elicit_p`` at or above
``signals.elicit_model_threshold``) that has a system prompt and a user prompt, this stage
scores the user part of the scan text alone (``scan_text(prompt, None)``); ``user_p`` below
the threshold means the system prompt made the hit. The features count such hits apart
(``sys_elicit_rate``) and the ``elicit_model`` evidence leaves them out only where the
system prompt is one many accounts send (docs/detection.md, "Scratchpads of agent
frameworks").

Table ``elicit_user (request_id, user_p)``: kept between runs; each run scores only the
requests it lacks, and starts over when the model, the threshold or the scan text change.
The online scorer computes the same value per request (``OnlineScorer.observe``) and the
Spark engine the same rows (``engines.spark.spark_features``).
"""

from __future__ import annotations

import hashlib

import duckdb
import pyarrow as pa

from distillguard.config import Config
from distillguard.signals.elicit_model import scan_probs, shipped_model_bytes
from distillguard.signals.sql import scan_text_sql
from distillguard.store import table_exists

TABLE, _META = "elicit_user", "_elicit_user_meta"
_COLUMNS = "(request_id VARCHAR, user_p DOUBLE)"


def candidates_sql(cfg: Config) -> str:
    """request_id and the user part's scan text of every request to score."""
    thr = float(cfg["signals"]["elicit_model_threshold"])
    return f"""SELECT r.request_id, {scan_text_sql(cfg, system="NULL")} AS scan
FROM requests r JOIN signals s ON r.request_id = s.request_id
WHERE s.elicit_p >= {thr!r} AND r.system IS NOT NULL AND r.system <> ''
  AND coalesce(r.prompt, '') <> ''"""


def _fingerprint(cfg: Config) -> str:
    return hashlib.sha256(candidates_sql(cfg).encode() + shipped_model_bytes()).hexdigest()[:16]


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} {_COLUMNS}")


def update_elicit_user(con: duckdb.DuckDBPyConnection, cfg: Config,
                       batch_rows: int = 50_000) -> int:
    """Bring ``elicit_user`` up to the store's requests; returns the requests scored."""
    fp = _fingerprint(cfg)
    con.execute(f"CREATE TABLE IF NOT EXISTS {_META} (fingerprint VARCHAR)")
    kept = con.execute(f"SELECT fingerprint FROM {_META}").fetchall()
    if kept != [(fp,)] or not table_exists(con, TABLE):
        con.execute(f"CREATE OR REPLACE TABLE {TABLE} {_COLUMNS}")
        con.execute(f"DELETE FROM {_META}")
        con.execute(f"INSERT INTO {_META} VALUES (?)", [fp])
    # The texts stream on a cursor of their own; only ids and probabilities are kept, and
    # inserted once the read is over.
    parts = []
    cur = con.cursor()
    try:
        reader = cur.sql(f"SELECT * FROM ({candidates_sql(cfg)}) c "
                         f"ANTI JOIN {TABLE} USING (request_id)").to_arrow_reader(batch_rows)
        for batch in reader:
            if batch.num_rows:
                parts.append(pa.table({"request_id": batch.column("request_id"),
                                       "user_p": pa.array(scan_probs(batch.column("scan")),
                                                          pa.float64())}))
    finally:
        cur.close()
    done = sum(t.num_rows for t in parts)
    if done:
        con.register("_eu_part", pa.concat_tables(parts))
        con.execute(f"INSERT INTO {TABLE} SELECT request_id, user_p FROM _eu_part")
        con.unregister("_eu_part")
    return done
