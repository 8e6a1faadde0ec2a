"""The columnar Parquet fast path stores exactly what the row path stores, and quarantines the
same rows with the same reasons."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distillguard.ingest.core as core
from distillguard.ingest import ingest_files
from distillguard.ingest.fast import eligible
from distillguard.store import connect

LIMITS = {"max_prompt_chars": 40, "max_prompt_chars_reject": 120, "max_line_bytes": 16_000_000,
          "max_id_chars": 12, "max_field_chars": 24}
MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _m(*turns):
    return [None if t is None else {"role": t[0], "content": t[1]} for t in turns]


def _rows() -> list[dict]:
    base = {"ts": "2026-11-01T10:00:00Z", "account_id": "a1", "model": "m"}
    good = [
        {"messages": _m(("system", "be brief"), ("user", "question one"))},
        {"messages": _m(("user", "hi"), ("assistant", "hello there"), ("user", "more?"))},
        {"messages": _m(("developer", "dev says"), ("system", "sys"), ("user", "q"))},
        {"messages": _m(("user", "run it"), ("tool", "output of tool"))},      # no last user
        {"messages": _m(("system", "s"), ("user", None))},                    # null content
        {"messages": _m(("system", "inner"), ("user", "q")), "system": "top"},
        {"messages": _m(("system", "inner"), ("user", "q")), "system": ""},
        {"prompt": "plain prompt", "system": "sys field"},
        {"prompt": "x" * 60},                                                  # truncated
        {"prompt": "é" * 45 + "👍"},                                            # unicode cut
        {"prompt": "p", "ts": "2026-11-01T10:00:00.1Z"},
        {"prompt": "p", "ts": "2026-11-01T10:00:00.123456+05:30"},
        {"prompt": "p", "ts": "2026-11-01 23:59:59-02:00"},
        {"prompt": "p", "ts": "2026-11-01T10:00:00z"},
        {"prompt": "p", "ts": "2026-11-01T10:00:00"},
        {"prompt": "p", "ts": "1762000000"},                                   # row path
        {"prompt": "p", "ts": " 2026-11-01T10:00:00Z "},                       # row path
        {"prompt": "p", "account_created": "2026-10-01T00:00:00Z"},
        {"prompt": "p", "account_created": ""},
        {"prompt": "p", "org_id": "", "ip": "10.0.0.1", "user_agent": "u" * 40,
         "country": "United Kingdom of GB", "reasoning_effort": "high", "status": "200"},
        {"prompt": "p", "input_tokens": 0, "output_tokens": 12},
        {"prompt": "p", "tools": [{"type": "function"}, {"type": "function"}]},
        {"prompt": "p", "tools": []},
        {"prompt": "p", "response": ""},
        {"prompt": "p", "response": "r" * 50},
        {"prompt": "p", "model": "m" * 30},                                   # too long
        {"prompt": "p", "account_id": "\u3000x"},                              # row path
        {"prompt": "dup first", "request_id": "dup"},
        {"prompt": "dup second", "request_id": "dup"},
    ]
    bad = [
        {"prompt": "p", "ts": "yesterday"},
        {"prompt": "p", "ts": "2026-02-30T00:00:00Z"},
        {"prompt": "p", "ts": "1999-12-31T23:59:59Z"},
        {"prompt": "p", "ts": "2026-11-01T24:00:00Z"},
        {"prompt": "p", "ts": None},
        {"prompt": "p", "account_created": "soon"},
        {"prompt": "p", "account_id": None},
        {"prompt": "p", "account_id": "   "},
        {"prompt": "p", "account_id": "\u3000"},
        {"prompt": "p", "request_id": ""},
        {"prompt": "p", "account_id": "a" * 13},
        {"prompt": ""},
        {},
        {"messages": []},
        {"messages": _m(("user", "x"), None)},
        {"messages": [{"role": None, "content": "x"}]},
        {"prompt": "y" * 121},
        {"messages": _m(("user", "z" * 121))},
        {"prompt": "p", "input_tokens": -1},
    ]
    out = []
    for i, r in enumerate(good + bad):
        rec = {"request_id": f"r{i}", **base, **r}
        out.append(rec)
    return out


def _table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([
        ("request_id", pa.string()), ("ts", pa.string()), ("account_id", pa.string()),
        ("model", pa.string()), ("messages", MSG), ("prompt", pa.string()),
        ("system", pa.string()), ("org_id", pa.string()), ("ip", pa.string()),
        ("user_agent", pa.string()), ("country", pa.string()),
        ("reasoning_effort", pa.string()), ("status", pa.string()),
        ("account_created", pa.string()), ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()), ("response", pa.string()),
        ("tools", pa.list_(pa.struct([("type", pa.string())]))),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def _ingest(paths, monkeypatch, fast: bool, tmp_path, name: str):
    calls = []
    real = core.ingest_parquet_fast

    def spy(*a, **k):
        res = real(*a, **k) if fast else None
        calls.append(res is not None)
        return res

    monkeypatch.setattr(core, "ingest_parquet_fast", spy)
    con = connect(None)
    rep = ingest_files(paths, con, limits=LIMITS, quarantine_path=tmp_path / f"{name}.jsonl")
    rep2 = ingest_files(paths, con, limits=LIMITS)            # idempotent
    monkeypatch.setattr(core, "ingest_parquet_fast", real)
    return con, rep, rep2, calls


def _snapshot(con):
    req = con.execute("SELECT * FROM requests WHERE request_id <> 'dup' "
                      "ORDER BY request_id").fetchall()
    dup = con.execute("SELECT * EXCLUDE (source, prompt) FROM requests "
                      "WHERE request_id = 'dup'").fetchall()
    q = con.execute("SELECT source, line, reason FROM quarantine ORDER BY source, line, reason"
                    ).fetchall()
    return req, dup, q


def test_fast_path_matches_row_path(tmp_path, monkeypatch):
    p1 = tmp_path / "a.parquet"
    pq.write_table(_table(_rows()), p1)
    # A second file: integer timestamps (s, ms, µs) and integer status / ids.
    t2 = pa.table({
        "request_id": pa.array([1001, 1002, 1003, 1004, 1005], pa.int64()),
        "ts": pa.array([1_762_000_000, 1_762_000_000_123, 1_762_000_000_123_456, 5, None]),
        "account_id": pa.array([7, 7, 8, 8, 9]),
        "model": ["m"] * 5,
        "prompt": ["a", "b", "c", "d", "e"],
        "status": pa.array([200, 429, None, 200, 200]),
    })
    p2 = tmp_path / "b.parquet"
    pq.write_table(t2, p2)
    # A third file with an unknown column: not eligible, row path (extra JSON) for all.
    p3 = tmp_path / "c.parquet"
    pq.write_table(pa.table({"request_id": ["z1"], "ts": ["2026-11-01T00:00:00Z"],
                             "account_id": ["a"], "model": ["m"], "prompt": ["q"],
                             "custom": [3]}), p3)
    paths = [p1, p2, p3]
    con_f, rep_f, rep2_f, calls_f = _ingest(paths, monkeypatch, True, tmp_path, "fast")
    con_r, rep_r, rep2_r, calls_r = _ingest(paths, monkeypatch, False, tmp_path, "row")
    assert calls_f[:3] == [True, True, False] and not any(calls_r)
    fast, row = _snapshot(con_f), _snapshot(con_r)
    assert fast[0] == row[0]
    assert fast[1] == row[1] and len(fast[1]) == 1
    assert fast[2] == row[2]
    for a, b in ((rep_f, rep_r), (rep2_f, rep2_r)):
        assert [(f.rows_ok, f.rows_bad, f.rows_dup) for f in a.files] == \
               [(f.rows_ok, f.rows_bad, f.rows_dup) for f in b.files]
    # 'dup second' reuses a stored request_id with other content: quarantined, not dropped.
    assert rep_f.rows_bad == 1 + 19 + 2 + 1 and rep2_f.rows_ok == 0
    assert any("'dup' is already stored with different content" in r[2] for r in fast[2])
    # File order decides which duplicate is kept on the fast path.
    assert con_f.execute("SELECT prompt FROM requests WHERE request_id = 'dup'"
                         ).fetchone()[0] == "dup first"
    qf = (tmp_path / "fast.jsonl").read_text().splitlines()
    assert len(qf) == rep_f.rows_bad
    assert sorted(qf) == sorted((tmp_path / "row.jsonl").read_text().splitlines())


@pytest.mark.parametrize("typ,ok", [
    (pa.string(), True), (pa.int64(), True), (pa.float64(), False), (pa.bool_(), False)])
def test_eligible_types(typ, ok):
    s = pa.schema([("request_id", pa.string()), ("ts", pa.string()),
                   ("account_id", pa.string()), ("model", pa.string()), ("status", typ)])
    assert eligible(s) is ok
    assert not eligible(pa.schema([*s, ("custom", pa.string())]))
    assert not eligible(pa.schema([*s, ("messages", pa.string())]))
