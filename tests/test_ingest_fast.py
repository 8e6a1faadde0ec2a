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


def _jsonl(path, recs, sep=b"\n", gz=False):
    import gzip

    import orjson

    body = b"".join(orjson.dumps(r) + sep for r in recs)
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


def test_jsonl_fast_path_matches_row_path(tmp_path, monkeypatch):
    """Clean canonical JSONL goes through Arrow and the same SQL as Parquet; the store,
    quarantine and counts equal the row path's. Files it does not vouch for (an unknown
    field, a blank line, two objects on a line) are read by the row path whole."""
    rows = _rows()
    ints = [{"request_id": 1001 + i, "ts": ts, "account_id": 7, "model": "m",
             "prompt": p, "status": st}
            for i, (ts, p, st) in enumerate([(1_762_000_000, "a", 200),
                                             (1_762_000_000_123, "b", 429),
                                             (1_762_000_000_123_456, "c", None), (5, "d", 200),
                                             (None, "e", 200)])]
    extra = [{"request_id": "z1", "ts": "2026-11-01T00:00:00Z", "account_id": "a",
              "model": "m", "prompt": "q", "custom": 3}]
    tail = [{**r, "request_id": f"t{i}"} for i, r in enumerate(rows[:6])]
    paths = [
        _jsonl(tmp_path / "a.jsonl.gz", rows, gz=True),
        _jsonl(tmp_path / "b.jsonl", ints),
        _jsonl(tmp_path / "c.jsonl", extra),                          # unknown field
        _jsonl(tmp_path / "d.jsonl", tail[:3], sep=b"\n\n"),          # blank lines
        _jsonl(tmp_path / "e.jsonl", tail[3:], sep=b"\r\n"),          # CRLF
    ]
    two = tmp_path / "f.jsonl"                                         # two objects a line
    two.write_bytes(b'{"request_id":"w1","ts":"2026-11-01T00:00:00Z","account_id":"a",'
                    b'"model":"m","prompt":"q"} {"request_id":"w2"}\n')
    paths.append(two)
    con_f, rep_f, rep2_f, calls_f = _ingest(paths, monkeypatch, True, tmp_path, "fast")
    con_r, rep_r, rep2_r, calls_r = _ingest(paths, monkeypatch, False, tmp_path, "row")
    assert calls_f[:6] == [True, True, False, False, True, False] and not any(calls_r)
    fast, row = _snapshot(con_f), _snapshot(con_r)
    for x, y in zip(fast[0], row[0], strict=True):
        assert x == y
    assert fast[1:] == row[1:]
    assert fast == row and len(fast[0]) > 30
    for a, b in ((rep_f, rep_r), (rep2_f, rep2_r)):
        assert [(f.rows_ok, f.rows_bad, f.rows_dup) for f in a.files] == \
               [(f.rows_ok, f.rows_bad, f.rows_dup) for f in b.files]
    assert sorted((tmp_path / "fast.jsonl").read_text().splitlines()) == \
           sorted((tmp_path / "row.jsonl").read_text().splitlines())


@pytest.mark.parametrize("body,lines", [
    (b'{"a":1}\n{"b":2}\n', 2), (b'{"a":1}\n{"b":2}', 2), (b'{"a":1}\r\n', 1), (b"", 0)])
def test_check_lines_counts_clean_lines(body, lines):
    from distillguard.ingest.fast import _check_lines

    assert _check_lines(body, 100) == lines


@pytest.mark.parametrize("body", [b'{"a":1}\n\n', b' {"a":1}\n', b'{"a":1} \n', b'{"a":\n1}\n',
                                  b'[1]\n', b'{"a":"' + b"x" * 200 + b'"}\n', b'{"a":1}\r'
                                  b'\r\n'])
def test_check_lines_rejects(body):
    from distillguard.ingest.fast import _check_lines, _NotClean

    with pytest.raises(_NotClean):
        _check_lines(body, 100)
