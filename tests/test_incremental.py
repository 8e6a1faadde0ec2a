"""Incremental runs (docs/incremental.md): a store grown by a day and re-run gives what a full
run over every day gives, recomputing less; a config or code change starts over."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from distillguard import api
from distillguard.bench.incremental import compare_results, generate_days
from distillguard.config import load_config
from distillguard.retention import prune
from distillguard.store import connect, scalar

# Day 5 (index 4) is the perf generator's new-model release: appending it moves the
# new-model windows, on top of new requests, template moves and new shared addresses.
DAYS, PER_DAY = 5, 600


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> list[Path]:
    return generate_days(tmp_path_factory.mktemp("days") / "logs", DAYS, PER_DAY, seed=11)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    wal = Path(str(src) + ".wal")
    if wal.exists():
        shutil.copyfile(wal, Path(str(dst) + ".wal"))
    return dst


def test_appended_day_equals_full_run(days, tmp_path):
    db = tmp_path / "store.duckdb"
    first = api.detect(days[:-1], tmp_path / "r1", db=db)
    assert first.mode == "full"
    inc = api.detect(days[-1:], tmp_path / "inc", db=db)
    assert inc.mode == "incremental"
    ref = api.detect(days, tmp_path / "ref", db=tmp_path / "ref.duckdb", incremental=False)
    assert ref.mode == "once"
    assert compare_results(tmp_path / "inc", db, tmp_path / "ref", tmp_path / "ref.duckdb") == {}
    assert [c["accounts"] for c in inc.campaigns] == [c["accounts"] for c in ref.campaigns]
    # Nothing new: no account is re-aggregated, the results stay.
    again = api.detect([], tmp_path / "again", db=db)
    assert again.mode == "incremental" and again.features_recomputed == 0
    assert compare_results(tmp_path / "again", db, tmp_path / "ref",
                           tmp_path / "ref.duckdb") == {}


def test_day_by_day_and_prune_equal_full_runs(days, tmp_path):
    db = tmp_path / "store.duckdb"
    api.detect(days[:2], tmp_path / "r", db=db)
    for d in days[2:]:
        res = api.detect([d], tmp_path / "r", db=db)
        assert res.mode == "incremental"
    # Erase one account and prune the oldest day: their text changes, the next run redoes
    # them (and the accounts sharing their system prompts) as a full run would.
    con = connect(db)
    acct = scalar(con, "SELECT account_id FROM requests GROUP BY 1 ORDER BY count(*) DESC "
                       "LIMIT 1")
    t_end = scalar(con, "SELECT max(ts) FROM requests")
    prune(con, account=acct)
    prune(con, older_than=timedelta(days=DAYS - 1), now=t_end)
    con.close()
    ref_db = _copy(db, tmp_path / "ref.duckdb")
    inc = api.detect([], tmp_path / "inc", db=db)
    assert inc.mode == "incremental" and 0 < inc.features_recomputed
    ref = api.detect([], tmp_path / "ref", db=ref_db, full=True)
    assert ref.mode == "full"
    assert compare_results(tmp_path / "inc", db, tmp_path / "ref", ref_db) == {}


def test_config_change_full_flag_and_crash_recompute_everything(days, tmp_path):
    db = tmp_path / "store.duckdb"
    api.detect(days[:2], tmp_path / "r", db=db)
    assert api.detect(days[2:3], tmp_path / "r", db=db).mode == "incremental"
    # A feature setting changes: everything again, then incremental under the new config.
    cfg = load_config(overrides={"features": {"min_template_size": 7}})
    res = api.detect(days[3:4], tmp_path / "c", db=db, config=cfg)
    assert res.mode == "full"
    api.detect(days[:4], tmp_path / "cref", db=tmp_path / "cref.duckdb", config=cfg,
               incremental=False)
    assert compare_results(tmp_path / "c", db, tmp_path / "cref", tmp_path / "cref.duckdb") == {}
    assert api.detect([], tmp_path / "c", db=db, config=cfg).mode == "incremental"
    # Back to the defaults: another change of fingerprint.
    assert api.detect([], tmp_path / "r", db=db).mode == "full"
    assert api.detect([], tmp_path / "r", db=db, full=True).mode == "full"
    # A run that stopped half way leaves no fingerprint: the next one starts over.
    con = connect(db)
    con.execute("DELETE FROM _incremental_meta")
    con.close()
    assert api.detect([], tmp_path / "r", db=db).mode == "full"
    # A run that keeps no state (e.g. analyse without incremental) invalidates it too.
    con = connect(db)
    api.analyse(con, load_config())
    con.close()
    assert api.detect([], tmp_path / "r", db=db).mode == "full"
    # In memory there is nothing to keep.
    assert api.detect(days[:1], None, db=None).mode == "once"
