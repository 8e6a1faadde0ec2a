"""Crash consistency: ``distillguard detect`` and ``intel import`` SIGKILLed and rerun.

Short profile (CI): one kill inside each of the seven phases of ``detect`` (start-up, ingest,
signals, features, linking, scoring, outputs) and two of ``intel import``. ``DG_LONG=1``:
50 kills of each (the figure in docs/reliability.md).
"""

from __future__ import annotations

import os

import orjson

from distillguard.bench.crash import STAGES, run_crash
from distillguard.config import load_config
from distillguard.ingest import ingest_files
from distillguard.store import connect, scalar

LONG = os.environ.get("DG_LONG") == "1"


def test_kills_survived(tmp_path):
    n = 50 if LONG else len(STAGES)
    s = run_crash(tmp_path / "work", kills=n, import_kills=n if LONG else 2, seed=1)
    assert s["requests"] > 1000 and s["quarantined"] == 3
    d, i = s["detect"], s["intel_import"]
    assert d["failures"] == [] and d["survived"] == d["kills"] == n, d["failures"]
    assert i["failures"] == [] and i["survived"] == i["kills"], i["failures"]
    # The kills really interrupted runs (not all after the process had exited).
    assert d["killed_mid_run"] >= n - 2 and i["killed_mid_run"] >= 1


def test_rerun_does_not_quarantine_twice(tmp_path):
    """Found by the harness: a rerun after a kill re-ingests the file and quarantined its bad
    rows a second time."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(orjson.dumps({"request_id": "r", "ts": 1762000000, "account_id": "a",
                                "model": "m", "prompt": "q"}) + b"\n{broken\n")
    con = connect(None)
    limits = load_config()["ingest"]
    for _ in range(3):
        ingest_files([p], con, limits=limits)
    assert scalar(con, "SELECT count(*) FROM quarantine") == 1
    assert scalar(con, "SELECT count(*) FROM requests") == 1
