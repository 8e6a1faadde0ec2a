"""Ingest: formats, bad rows to quarantine, strict mode, idempotency, crash consistency."""

from __future__ import annotations

import gzip
import json

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillguard.errors import BadRowError, IngestError
from distillguard.ingest import ingest_files
from distillguard.store import connect, scalar


def _rec(i: int, **kw) -> dict:
    r = {"request_id": f"r{i}", "ts": "2026-11-01T10:00:00Z", "account_id": f"a{i % 3}",
         "model": "m", "messages": [{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": f"question {i}"}]}
    r.update(kw)
    return r


def _write_jsonl(path, recs, extra_lines=()):
    with open(path, "wb") as fh:
        for r in recs:
            fh.write(orjson.dumps(r) + b"\n")
        for line in extra_lines:
            fh.write(line + b"\n")


def test_good_rows_and_every_kind_of_bad_row(tmp_path, cfg):
    p = tmp_path / "logs.jsonl"
    bad = [
        b'{"request_id": "x1", "ts": ',                                      # malformed JSON
        orjson.dumps({"request_id": "x2", "ts": 1, "model": "m", "prompt": "hi"}),  # no account
        orjson.dumps(_rec(900, ts="yesterday")),                              # bad timestamp
        orjson.dumps(_rec(901, messages=None, prompt="x" * 3_000_000)),        # absurdly long
        b'{"request_id": "x5", "ts": 1, "account_id": "a", "model": "m", "prompt": "\xff"}',
        orjson.dumps(_rec(902, messages="not a list")),
        orjson.dumps(_rec(903, input_tokens=-5)),
    ]
    _write_jsonl(p, [_rec(i) for i in range(20)], bad)
    con = connect(None)
    q = tmp_path / "out" / "quarantine.jsonl"
    rep = ingest_files([p], con, limits=cfg["ingest"], quarantine_path=q)
    assert (rep.rows_ok, rep.rows_bad) == (20, len(bad))
    rows = [json.loads(line) for line in q.open()]
    reasons = " | ".join(r["reason"] for r in rows)
    for needle in ("malformed JSON", "account_id is missing", "not RFC 3339",
                   "exceeds the limit", "invalid UTF-8", "messages must be", "negative"):
        assert needle in reasons
    assert all(r["source"].endswith("logs.jsonl") and r["line"] > 20 for r in rows)
    assert scalar(con, "SELECT count(*) FROM quarantine") == len(bad)
    # System prompt and last user turn are split out.
    sys_, prompt = con.execute(
        "SELECT system, prompt FROM requests WHERE request_id = 'r3'").fetchall()[0]
    assert (sys_, prompt) == ("be brief", "question 3")


def test_strict_mode_stops_at_first_bad_row(tmp_path, cfg):
    p = tmp_path / "logs.jsonl"
    _write_jsonl(p, [_rec(1)], [b"{oops"])
    with pytest.raises(BadRowError) as ei:
        ingest_files([p], connect(None), limits=cfg["ingest"], strict=True)
    assert ei.value.line == 2 and "malformed JSON" in str(ei.value)


def test_idempotent_and_keeps_unknown_fields(tmp_path, cfg):
    p = tmp_path / "logs.jsonl.gz"
    with gzip.open(p, "wb") as fh:
        for i in range(50):
            fh.write(orjson.dumps(_rec(i, ts=1762000000 + i, custom_field={"k": i})) + b"\n")
    con = connect(None)
    r1 = ingest_files([p], con, limits=cfg["ingest"])
    r2 = ingest_files([p], con, limits=cfg["ingest"])
    assert (r1.rows_ok, r2.rows_ok, r2.rows_dup) == (50, 0, 50)
    assert scalar(con, "SELECT count(*) FROM requests") == 50
    extra = scalar(con, "SELECT extra FROM requests WHERE request_id = 'r7'")
    assert json.loads(extra)["custom_field"] == {"k": 7}


def test_timestamps_in_all_forms(tmp_path, cfg):
    p = tmp_path / "ts.jsonl"
    forms = ["2026-11-01T10:00:00Z", "2026-11-01T11:00:00+01:00", 1793527200,
             1793527200000, "1793527200"]
    _write_jsonl(p, [_rec(i, ts=t) for i, t in enumerate(forms)])
    con = connect(None)
    ingest_files([p], con, limits=cfg["ingest"])
    assert scalar(con, "SELECT count(DISTINCT ts) FROM requests") == 1


def test_csv_and_parquet(tmp_path, cfg):
    recs = [_rec(i) for i in range(10)]
    flat = [{**r, "messages": json.dumps(r["messages"])} for r in recs]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "a.parquet")
    import csv

    with (tmp_path / "b.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(flat[0]))
        w.writeheader()
        for r in flat:
            w.writerow({**r, "request_id": "c" + r["request_id"]})
    con = connect(None)
    rep = ingest_files([tmp_path / "a.parquet", tmp_path / "b.csv"], con, limits=cfg["ingest"])
    assert rep.rows_ok == 20 and rep.rows_bad == 0
    assert scalar(con, "SELECT count(*) FROM requests WHERE prompt LIKE 'question%'") == 20


def test_crash_mid_ingest_leaves_whole_batches(tmp_path, cfg, monkeypatch):
    # The row path's batches (clean JSONL otherwise takes the fast path: one transaction).
    import distillguard.ingest.core as core

    monkeypatch.setattr(core, "ingest_parquet_fast", lambda *a, **k: None)
    p = tmp_path / "big.jsonl"
    _write_jsonl(p, [_rec(i) for i in range(250)])
    db = tmp_path / "store.duckdb"
    con = connect(db)
    calls = {"n": 0}

    def boom(n: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        ingest_files([p], con, limits=cfg["ingest"], batch_rows=100, on_progress=boom)
    con.close()
    con = connect(db)
    stored = scalar(con, "SELECT count(*) FROM requests")
    assert stored % 100 == 0 and stored >= 100           # only whole batches
    rep = ingest_files([p], con, limits=cfg["ingest"], batch_rows=100)
    assert scalar(con, "SELECT count(*) FROM requests") == 250
    assert rep.rows_dup == stored


def test_missing_file_and_unknown_type(tmp_path, cfg):
    con = connect(None)
    with pytest.raises(IngestError, match="no such file"):
        ingest_files([tmp_path / "nope.jsonl"], con, limits=cfg["ingest"])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(IngestError, match="unknown file type"):
        ingest_files([tmp_path / "x.txt"], con, limits=cfg["ingest"])
