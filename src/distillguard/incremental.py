"""Incremental runs of a file-backed store: what a re-run may keep, and when it may not.

A store analysed daily grows by a day at a time. With the state this module guards, a re-run
computes the per-request signals only for new requests (``signals.enable_incremental``) and
the features only for the accounts whose requests changed (``features.incremental``);
linking, scoring and self-calibration run over every account as before. See
docs/incremental.md.

The state is valid for one fingerprint: the detection config's signal, feature and linking
sections, the SQL the definitions compile to, and the source of the modules that define them
(plus the shipped elicitation model). Any change, ``full=True``, or a run that stopped half
way (the fingerprint is removed when a run starts and written back when it ends) makes the
next run recompute everything and rebuild the state.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import duckdb

import distillguard
from distillguard.config import Config
from distillguard.features import incremental as feat_inc
from distillguard.features.defs import enriched_sql, features_sql
from distillguard.signals import template_counts
from distillguard.signals.elicit_model import shipped_model_bytes
from distillguard.store import scalar, table_exists

META = "_incremental_meta"
#: Request ids whose stored content changed since the last run (``retention.prune``): the
#: next run treats them as new.
CHANGED = "_incremental_changed"
#: The signals stage's cache (``signals.enable_incremental``).
_SIGNAL_TABLES = ("_signals_cache", "_signals_cache_meta", "_signals_elicit_hint")
#: Modules whose code defines per-request or per-account values; editing one invalidates.
_DEFINING = ("features/defs.py", "features/incremental.py", "features/__init__.py",
             "signals/__init__.py", "signals/sql.py", "signals/rules.py",
             "signals/templates.py", "signals/_workers.py", "signals/elicit_model.py",
             "signals/template_counts.py", "signals/elicit_user.py",
             "retention.py", "incremental.py")


def fingerprint(cfg: Config) -> str:
    """What the kept state depends on; a different value means recompute everything."""
    h = hashlib.sha256()
    sections = {k: cfg.raw.get(k) for k in ("signals", "features", "linking")}
    h.update(json.dumps(sections, sort_keys=True, default=str).encode())
    h.update(enriched_sql(cfg).encode())
    h.update(features_sql(cfg).encode())
    h.update(distillguard.__version__.encode())
    root = Path(distillguard.__file__).parent
    for rel in _DEFINING:
        p = root / rel
        h.update(p.read_bytes() if p.exists() else b"-")
    h.update(shipped_model_bytes())
    h.update(resources.files("distillguard.data").joinpath("signals.yaml").read_bytes())
    return h.hexdigest()[:20]


def begin(con: duckdb.DuckDBPyConnection, cfg: Config, *, full: bool = False) -> str:
    """Start an incremental-capable run; returns ``"incremental"`` when the kept state is
    valid (the stages then update it), ``"full"`` when it was dropped (they rebuild it)."""
    fp = fingerprint(cfg)
    con.execute(f"CREATE TABLE IF NOT EXISTS {META} (fingerprint VARCHAR, finished_at "
                "TIMESTAMP)")
    rows = con.execute(f"SELECT fingerprint FROM {META}").fetchall()
    valid = (not full and len(rows) == 1 and rows[0][0] == fp and feat_inc.ready(con)
             and table_exists(con, "_signals_cache") and table_exists(con, "signals"))
    con.execute(f"DELETE FROM {META}")      # written back by finish(): a crash leaves none
    from distillguard.signals import enable_incremental

    if valid:
        if table_exists(con, CHANGED) and scalar(con, f"SELECT count(*) FROM {CHANGED}"):
            con.execute("DELETE FROM _signals_cache WHERE request_id IN "
                        f"(SELECT request_id FROM {CHANGED})")
            feat_inc.forget_requests(con, CHANGED)
            con.execute(f"DELETE FROM {CHANGED}")
            # Their template keys change: buckets shrink, so choose over every request.
            template_counts.drop_state(con)
    else:
        drop(con)
    con.execute(f"CREATE TABLE IF NOT EXISTS {CHANGED} (request_id VARCHAR)")
    enable_incremental(con)
    template_counts.enable(con)
    return "incremental" if valid else "full"


def finish(con: duckdb.DuckDBPyConnection, cfg: Config) -> None:
    con.execute(f"DELETE FROM {META}")
    con.execute(f"INSERT INTO {META} VALUES (?, now())", [fingerprint(cfg)])


def invalidate(con: duckdb.DuckDBPyConnection) -> None:
    """A run that does not keep the state (e.g. in-memory, calibrate) rewrites ``signals``
    and ``_req``: the next incremental-capable run must start over."""
    if table_exists(con, META):
        con.execute(f"DELETE FROM {META}")


def drop(con: duckdb.DuckDBPyConnection) -> None:
    for t in (*_SIGNAL_TABLES, CHANGED):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    template_counts.drop_state(con, disable=True)
    feat_inc.drop(con)
