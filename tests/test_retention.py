"""Retention and erasure: audit log rotation keeps the chain verifiable; ``store prune`` and
``store erase`` drop raw text, keep the evidence (same verdicts) and record the deletion."""

from __future__ import annotations

import json

import orjson
import pytest
from typer.testing import CliRunner

from distillguard import api
from distillguard.cli import app
from distillguard.respond.audit import AuditLog, query, segments, verify
from distillguard.sim import simulate
from distillguard.store import connect, scalar


def _fill(path, n, max_bytes=2000):
    log = AuditLog(path, max_bytes=max_bytes)
    for i in range(n):
        log.append("decision", account_id=f"a{i % 5}", action="allow", i=i)
    return log


def test_rotation_keeps_the_chain_verifiable(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = _fill(p, 120)
    files = segments(p)
    assert len(files) > 5 and files[-1] == p
    assert all(f.stat().st_size <= 2000 for f in files)
    res = verify(p)
    assert res.ok and res.head == log.head and res.entries == 120 + len(files) - 1
    assert len(list(query(p, event="decision"))) == 120          # across segments
    # Reopened (also right after a rotation) the writer continues the same chain.
    log2 = AuditLog(p, max_bytes=2000)
    log2.append("decision", i=120)
    assert verify(p).ok and verify(p).entries == res.entries + 1


def test_rotation_tamper_and_retention(tmp_path):
    p = tmp_path / "audit.jsonl"
    _fill(p, 120)
    files = segments(p)
    mid = files[len(files) // 2]
    lines = mid.read_bytes().splitlines(keepends=True)
    e = orjson.loads(lines[2])
    e["action"] = "deny"
    mid.write_bytes(b"".join(lines[:2] + [orjson.dumps(e) + b"\n"] + lines[3:]))
    res = verify(p)
    assert not res.ok and res.file == str(mid) and res.line == 3 and "edited" in res.error
    mid.write_bytes(b"".join(lines))
    assert verify(p).ok
    mid.unlink()                                                  # a segment removed
    assert not verify(p).ok
    # Retention: deleting the *oldest* segments leaves the rest verifiable from its start.
    for f in segments(p)[: len(files) // 2]:
        f.unlink()
    res = verify(p)
    assert res.ok and res.first_seq > 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("ret")
    sim = simulate(d / "t", scenario="tiny", seed=3)
    res = api.detect(sim.logs, d / "before", db=d / "store.duckdb")
    return d, sim, res


def test_prune_drops_text_keeps_verdicts_and_records_it(world):
    d, sim, before = world
    db, audit = d / "store.duckdb", d / "audit.jsonl"
    r = CliRunner().invoke(app, ["store", "prune", "--db", str(db), "--older-than", "0h",
                                 "--audit-log", str(audit)])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    con = connect(db)
    n = scalar(con, "SELECT count(*) FROM requests")
    assert rep["requests"] == n == rep["kept_signals"]
    assert scalar(con, "SELECT count(*) FROM requests WHERE prompt NOT LIKE 'pruned:%' "
                       "OR response IS NOT NULL OR extra IS NOT NULL OR "
                       "system NOT LIKE 'pruned:%'") == 0
    assert scalar(con, "SELECT count(*) FROM retention_log WHERE action = 'prune'") == 1
    con.close()
    entries = list(query(audit, event="store.pruned"))
    assert len(entries) == 1 and entries[0]["requests"] == n and verify(audit).ok
    # The same logs again, the same store: nothing new, nothing quarantined, same verdicts.
    after = api.detect(sim.logs, d / "after", db=db)
    assert after.ingest.rows_ok == 0 and after.ingest.rows_bad == 0
    a = before.accounts.select("account_id", "score", "flagged").sort("account_id")
    b = after.accounts.select("account_id", "score", "flagged").sort("account_id")
    assert a["flagged"].to_list() == b["flagged"].to_list()
    assert (a["score"] - b["score"]).abs().max() < 1e-9
    assert [c["accounts"] for c in before.campaigns] == [c["accounts"] for c in after.campaigns]
    # Pruning again changes nothing more.
    r = CliRunner().invoke(app, ["store", "prune", "--db", str(db), "--older-than", "0h",
                                 "--audit-log", str(audit)])
    assert json.loads(r.output)["requests"] == 0


def test_erase_one_account(tmp_path):
    sim = simulate(tmp_path / "t", scenario="tiny", seed=3)
    db, audit = tmp_path / "s.duckdb", tmp_path / "audit.jsonl"
    api.detect(sim.logs[:2], tmp_path / "o", db=db)
    con = connect(db)
    acct = scalar(con, "SELECT account_id FROM requests GROUP BY 1 ORDER BY count(*) DESC")
    mine = scalar(con, "SELECT count(*) FROM requests WHERE account_id = ?", [acct])
    con.close()
    r = CliRunner().invoke(app, ["store", "erase", "--db", str(db), "--account", acct,
                                 "--audit-log", str(audit)])
    assert r.exit_code == 0, r.output
    con = connect(db)
    assert scalar(con, "SELECT count(*) FROM requests WHERE account_id = ? AND prompt NOT "
                       "LIKE 'pruned:%'", [acct]) == 0
    assert scalar(con, "SELECT count(*) FROM requests WHERE account_id <> ? AND prompt LIKE "
                       "'pruned:%'", [acct]) == 0
    assert scalar(con, "SELECT count(*) FROM requests WHERE account_id = ?", [acct]) == mine
    con.close()
    text = audit.read_text()
    assert "store.erased" in text and acct not in text and verify(audit).ok


def test_prune_rejects_bad_age(tmp_path):
    r = CliRunner().invoke(app, ["store", "prune", "--db", str(tmp_path / "x.duckdb"),
                                 "--older-than", "ninety"])
    assert r.exit_code == 2

