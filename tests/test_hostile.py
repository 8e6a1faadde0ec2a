"""Hostile-input corpus (``distillguard.bench.hostile``) and regression tests for what it found.

Each regression test below failed before its fix (a crash that aborted the whole ingest, a
row silently dropped, or a whole line read into memory).
"""

from __future__ import annotations

import gzip
import os
import tracemalloc

import orjson
import pytest

from distillguard.bench.hostile import build_corpus, main, run_corpus
from distillguard.config import load_config
from distillguard.ingest import ingest_files
from distillguard.store import connect

LIMITS = load_config()["ingest"]
LONG = os.environ.get("DG_LONG") == "1"


def _rec(rid: str, **kw) -> dict:
    r = {"request_id": rid, "ts": "2026-11-01T10:00:00Z", "account_id": "a", "model": "m",
         "prompt": f"q {rid}"}
    r.update(kw)
    return r


def _ingest(path):
    con = connect(None)
    rep = ingest_files([path], con, limits=LIMITS)
    ids = {r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()}
    reasons = [r[0] for r in con.execute("SELECT reason FROM quarantine").fetchall()]
    return rep, ids, reasons


def test_hostile_corpus_loses_no_row(tmp_path):
    """The whole corpus: no row lost, doubled or misplaced; stored rows unchanged."""
    build_corpus(tmp_path / "c", big_line_mb=100 if LONG else 17)
    s = run_corpus(tmp_path / "c")
    assert s["rows_tried"] > 2000 and s["rows_quarantined"] > 50
    assert (s["rows_lost"], s["rows_double"], s["rows_wrong"]) == (0, 0, 0), s
    assert s["stored_rows_unchanged"] and s["store_rows"] == s["rows_stored"]
    assert not s["file_errors"]


def test_cli_exit_code(tmp_path, capsys):
    assert main([str(tmp_path / "c"), "--big-line-mb", "17"]) == 0
    assert '"rows_lost": 0' in capsys.readouterr().out


# --- regressions ------------------------------------------------------------------------------


def test_bom_first_row_is_stored(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(_rec("b1")) + b"\n")
    assert _ingest(p)[1] == {"b1"}


def test_truncated_gzip_keeps_rows_before_the_cut(tmp_path):
    blob = gzip.compress(b"".join(orjson.dumps(_rec(f"t{i}")) + b"\n" for i in range(500)))
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(blob[: len(blob) // 2])
    rep, ids, reasons = _ingest(p)          # was: IngestError, nothing of the file stored
    assert len(ids) > 100 and ids == {f"t{i}" for i in range(len(ids))}
    assert rep.rows_bad == 1 and "truncated" in reasons[0]


def test_inflate_backends_agree_on_corrupt_and_multi_member_gzip(tmp_path, monkeypatch):
    """The inflate in use (ISA-L's when installed) and the standard library's store the same
    rows and quarantine the same way: concatenated gzip members (appended logs) read as one
    stream, a corrupt block is reported, nothing after it is invented."""
    import zlib

    from distillguard.ingest import reader

    lines = [orjson.dumps(_rec(f"c{i}")) + b"\n" for i in range(2000)]
    two = tmp_path / "two.jsonl.gz"
    two.write_bytes(gzip.compress(b"".join(lines[:1000])) + gzip.compress(b"".join(lines[1000:])))
    blob = bytearray(gzip.compress(b"".join(lines), compresslevel=1))
    for i in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[i] ^= 0xFF
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(bytes(blob))
    seen = []
    for backend in (reader._inflate, zlib):
        monkeypatch.setattr(reader, "_inflate", backend)
        ids_two = _ingest(two)[1]
        rep, ids, reasons = _ingest(bad)
        assert ids_two == {f"c{i}" for i in range(2000)}
        assert rep.rows_bad == 1 and reasons[0].startswith("corrupt gzip data")
        seen.append(ids)
    assert seen[0] == seen[1]


@pytest.mark.parametrize("field,value", [
    ("ts", "0001-01-01T00:00:00+01:00"), ("ts", "9999-12-31T23:59:59-01:00"),
    ("input_tokens", "Infinity"), ("output_tokens", "-Infinity"),
    ("input_tokens", 2 ** 63), ("input_tokens", 2 ** 64 - 1)])
def test_out_of_range_values_are_quarantined_not_fatal(tmp_path, field, value):
    """Each crashed the run (OverflowError); 2**63 failed the insert of its whole batch."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(orjson.dumps(_rec("bad", **{field: value})) + b"\n"
                  + orjson.dumps(_rec("good")) + b"\n")
    rep, ids, reasons = _ingest(p)
    assert ids == {"good"} and rep.rows_bad == 1 and field in reasons[0]


@pytest.mark.parametrize("field", ["custom", "response"])
def test_too_deep_to_store_is_quarantined(tmp_path, field):
    p = tmp_path / "deep.jsonl"
    deep = b'{"x":' * 300 + b"1" + b"}" * 300
    line = orjson.dumps(_rec("deep"))[:-1] + f',"{field}":'.encode() + deep + b"}"
    p.write_bytes(line + b"\n" + orjson.dumps(_rec("good")) + b"\n")
    rep, ids, reasons = _ingest(p)          # was: TypeError "Recursion limit reached"
    assert ids == {"good"} and "cannot be stored as JSON" in reasons[0]


def test_csv_bad_row_does_not_drop_the_rest(tmp_path):
    p = tmp_path / "c.csv"
    rows = [f"r{i},2026-11-01T10:00:00Z,a,m,q{i}" for i in range(5)]
    p.write_text("request_id,ts,account_id,model,prompt\n" + "\n".join(
        rows[:2] + ["r9,2026-11-01T10:00:00Z,a,m,q,extra"] + rows[2:]) + "\n")
    rep, ids, reasons = _ingest(p)          # was: IngestError, the whole file refused
    assert ids == {f"r{i}" for i in range(5)} and "6 fields" in reasons[0]


def test_duplicate_id_with_other_content_is_quarantined(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(orjson.dumps(_rec("d")) + b"\n" + orjson.dumps(_rec("d", prompt="x")) + b"\n"
                  + orjson.dumps(_rec("d")) + b"\n")
    rep, ids, reasons = _ingest(p)          # was: silently counted as a duplicate
    assert (rep.rows_ok, rep.rows_bad, rep.rows_dup) == (1, 1, 1)
    assert "already stored with different content" in reasons[0]


def test_huge_line_is_not_read_into_memory(tmp_path):
    """An 80 MB line over the 16 MB limit: Python allocations stay near twice the limit
    (one bounded read and its copy), far below the line's size."""
    p = tmp_path / "big.jsonl"
    with p.open("wb") as fh:
        fh.write(b'{"request_id":"big","prompt":"' + b"x" * (80 << 20) + b'"}\n')
        fh.write(orjson.dumps(_rec("after")) + b"\n")
    tracemalloc.start()
    rep, ids, reasons = _ingest(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ids == {"after"} and "exceeds the limit" in reasons[0]
    assert peak < 2 * LIMITS["max_line_bytes"] + (4 << 20), f"{peak / 2 ** 20:.0f} MB"


def test_csv_parse_error_keeps_the_raw_row(tmp_path):
    """Found by the fuzzer: a lone CR in an unquoted field was quarantined with no raw text,
    so the row could not be traced; the rows around it are still read."""
    p = tmp_path / "cr.csv"
    p.write_text("request_id,ts,account_id,model,prompt,ip\n"
                 "r1,2026-11-01T10:00:00Z,a,m,q,\r,x\n"
                 "r2,2026-11-01T10:00:00Z,a,m,q,1.2.3.4\n", newline="")
    con = connect(None)
    rep = ingest_files([p], con, limits=LIMITS)
    assert (rep.rows_ok, rep.rows_bad) == (1, 1)
    assert con.execute("SELECT raw FROM quarantine").fetchone()[0].startswith("r1,")


def test_json_array_with_a_bad_value_keeps_the_other_elements(tmp_path):
    """Found by the fuzzer: one NaN (or lone surrogate, or 2**70) in a JSON array document
    made the whole file one quarantined line; now only that element is quarantined."""
    import json

    base = {"ts": 1762000000, "account_id": "x", "model": "m", "prompt": "q"}
    recs = [{"request_id": "nan", **base, "input_tokens": float("nan")},
            {"request_id": "sur", **base, "prompt": "q\ud800"},
            {"request_id": "big", **base, "n": 2 ** 70},
            {"request_id": "ok", **base}]
    p = tmp_path / "doc.json"
    p.write_bytes(json.dumps(recs).encode())
    rep, ids, reasons = _ingest(p)
    assert ids == {"ok"} and rep.rows_bad == 3
    assert all(r.startswith("malformed JSON") for r in reasons)
