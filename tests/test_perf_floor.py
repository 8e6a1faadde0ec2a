"""The scaling benchmark's floor query and its gzipped-JSONL input format."""

from __future__ import annotations

import json

import duckdb

from distillguard.bench.perf import floor_sql, generate, perf, write_jsonl


def test_floor_reads_the_same_traffic_from_parquet_and_jsonl(tmp_path):
    files, _ = generate(3000, tmp_path / "logs", seed=3, rows_per_file=1000)
    jsonl = write_jsonl(files, tmp_path / "jsonl")
    assert [f.name for f in jsonl] == [f"requests-{i:04d}.jsonl.gz" for i in range(3)]
    con = duckdb.connect()
    got = {fmt: con.execute(floor_sql(con, fs, fmt)).fetchone()[:2]
           for fmt, fs in (("parquet", files), ("jsonl.gz", jsonl))}
    assert got["parquet"] == got["jsonl.gz"]
    accounts, digests = got["parquet"]
    assert accounts == con.execute(
        f"SELECT count(DISTINCT account_id) FROM read_parquet({[str(f) for f in files]})"
    ).fetchone()[0]
    assert 0 < digests <= 3000


def test_perf_reports_detection_against_the_floor_per_format(tmp_path):
    out = perf([2000], tmp_path, seed=5, formats=("parquet", "jsonl.gz"))
    rs = out["results"]
    assert [r["format"] for r in rs] == ["parquet", "jsonl.gz"]
    for r in rs:
        assert r["floor_s"] > 0 and r["floor_cpu_s"] >= 0 and r["floor_accounts"] > 0
        assert r["rows_ok"] == 2000 and r["rows_bad"] == 0
    # Same traffic, same verdicts, whichever format it came in.
    assert rs[0]["flagged"] == rs[1]["flagged"] and rs[0]["campaigns"] == rs[1]["campaigns"]
    saved = json.loads((tmp_path / "perf.json").read_text())
    assert saved["formats"] == ["parquet", "jsonl.gz"] and len(saved["results"]) == 2
    md = (tmp_path / "perf.md").read_text()
    assert "detection / floor" in md and "jsonl.gz" in md
    assert not (tmp_path / "n2000" / "logs").exists()            # cleaned up without keep
