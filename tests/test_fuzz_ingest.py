"""Property-based ingest tests: every input row ends exactly once in the store or in quarantine.

Hypothesis draws hostile records (wrong types, NaN/Infinity token counts, timestamps in year 0
and 9999, NUL characters, script payloads, nested junk, duplicate ids) and writes them in
every input format: canonical JSONL (plain and gzip), JSON, CSV and Parquet, OpenAI pairs,
LiteLLM spend logs and OTLP GenAI spans. The properties, on a real in-memory DuckDB store:

* ingest never raises on bad rows (only on unusable files), and each input row is stored or
  quarantined with a reason, exactly once; for canonical JSONL the verdict equals
  ``normalize``'s on the parsed line (the one place that defines a valid row);
* rows stored before are unchanged by a later file reusing their ids with other content.

Short profile by default (CI); ``DG_LONG=1`` runs many more examples.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillguard.config import load_config
from distillguard.ingest import ingest_files
from distillguard.ingest.normalize import RowError, normalize
from distillguard.store import connect

LIMITS = load_config()["ingest"]
LONG = os.environ.get("DG_LONG") == "1"
FUZZ = settings(max_examples=400 if LONG else 25, deadline=None, derandomize=not LONG,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

NASTY = st.sampled_from([
    "<script>alert(1)</script>", "\x00", "a\x00b", "\ufeff", "\u202e", "' OR 1=1 --", "a\r\nb",
    '"', "\\", "NULL", "nan", "", " ", "\ud7ff", "é", "𝔘𝔫𝔦", "\"quoted, with comma\"",
    "line1\nline2", "NaN", "Infinity"])
TEXT = st.one_of(st.text(max_size=30), NASTY)
LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 64 - 1),
                 st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON = st.recursive(LEAF, lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=12)
GOOD_TS = st.datetimes().map(lambda d: d.isoformat() + "Z")
TS = st.one_of(
    GOOD_TS, GOOD_TS, st.integers(-(2 ** 62), 2 ** 62), st.floats(),
    st.sampled_from(["0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z",
                     "9999-12-31T23:59:59-01:00", "NaN", "Infinity", "-1", "", "yesterday",
                     "2026-11-01T10:00:00Z", 1762000000, 1762000000123, 1e300]), JSON)
TOKENS = st.one_of(st.none(), st.integers(-5, 2 ** 70), st.floats(),
                   st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "12", "-3", ""]),
                   JSON)
CONTENT = st.one_of(TEXT, st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), TEXT, JSON), max_size=3),
    JSON)
MESSAGE = st.one_of(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]),
    "content": CONTENT}), JSON)
MESSAGES = st.one_of(st.lists(MESSAGE, min_size=1, max_size=4), JSON)
OPTIONAL = {"org_id": TEXT, "ip": TEXT, "user_agent": TEXT, "payment_fingerprint": TEXT,
            "account_created": TS, "country": TEXT, "tools": st.one_of(
                st.lists(JSON, max_size=30), JSON), "input_tokens": TOKENS,
            "output_tokens": TOKENS, "response": st.one_of(TEXT, JSON), "status": LEAF,
            "custom_field": JSON}


@st.composite
def records(draw: Any, n_max: int = 12) -> list[dict[str, Any]]:
    """Canonical records, ``request_id`` first and unique (``fz-<i>``) so each can be traced."""
    out = []
    for i in range(draw(st.integers(1, n_max))):
        rec: dict[str, Any] = {"request_id": f"fz-{i}"}
        if draw(st.integers(0, 9)):
            rec["ts"] = draw(TS)
        for key in ("account_id", "model"):
            if draw(st.integers(0, 9)):
                rec[key] = draw(st.one_of(TEXT.filter(bool), TEXT, LEAF))
        if draw(st.booleans()):
            rec["messages"] = draw(MESSAGES)
        elif draw(st.integers(0, 4)):
            rec["prompt"] = draw(st.one_of(TEXT, JSON))
        for key in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), max_size=5, unique=True)):
            rec[key] = draw(OPTIONAL[key])
        out.append(rec)
    return out


def _dumps(rec: Any) -> bytes:
    """The stdlib writer: bare NaN/Infinity and ints past 64 bits are what hostile files hold."""
    return json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _outcome(con: Any, n: int) -> tuple[dict[str, int], dict[str, int]]:
    """Per ``fz-<i>``: how often it is stored, and how often quarantined (read from raw)."""
    stored = {r[0]: r[1] for r in con.execute(
        "SELECT request_id, count(*) FROM requests WHERE request_id LIKE 'fz-%' GROUP BY 1"
    ).fetchall()}
    quarantined: dict[str, int] = {}
    for (raw,) in con.execute("SELECT raw FROM quarantine").fetchall():
        for i in range(n):
            rid = f"fz-{i}"
            flat = raw.replace(" ", "").replace("'", '"')
            if f'"request_id":"{rid}"' in flat or raw.startswith(f"{rid},"):
                quarantined[rid] = quarantined.get(rid, 0) + 1
    return stored, quarantined


def _assert_each_once(con: Any, n: int, report: Any) -> None:
    stored, quarantined = _outcome(con, n)
    for i in range(n):
        rid = f"fz-{i}"
        assert stored.get(rid, 0) + quarantined.get(rid, 0) == 1, (
            rid, stored.get(rid), quarantined.get(rid))
    assert report.rows_ok + report.rows_bad + report.rows_dup == n
    reasons = [r[0] for r in con.execute("SELECT reason FROM quarantine").fetchall()]
    assert all(reasons), "every quarantined row carries a reason"


@FUZZ
@given(recs=records(), gz=st.booleans())
def test_jsonl_each_row_once_and_verdict_is_normalize(tmp_path_factory: Any,
                                                      recs: list[dict], gz: bool) -> None:
    d = tmp_path_factory.mktemp("jsonl")
    body = b"".join(_dumps(r) + b"\n" for r in recs)
    path = d / ("f.jsonl.gz" if gz else "f.jsonl")
    path.write_bytes(gzip.compress(body) if gz else body)
    con = connect(None)
    rep = ingest_files([path], con, limits=LIMITS, fmt="canonical")
    _assert_each_once(con, len(recs), rep)
    stored, _ = _outcome(con, len(recs))
    for i, line in enumerate(body.splitlines()):
        try:
            normalize(orjson.loads(line), "x", LIMITS)
            valid = True
        except (orjson.JSONDecodeError, RowError):
            valid = False
        assert (f"fz-{i}" in stored) == valid, (recs[i], valid)


@FUZZ
@given(recs=records())
def test_json_document_each_row_once(tmp_path_factory: Any, recs: list[dict]) -> None:
    path = tmp_path_factory.mktemp("json") / "f.json"
    path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(recs, option=orjson.OPT_PASSTHROUGH_DATETIME,
                                                    default=str)
                     if _orjson_ok(recs) else b"[" + b",".join(_dumps(r) for r in recs) + b"]")
    con = connect(None)
    rep = ingest_files([path], con, limits=LIMITS, fmt="canonical")
    _assert_each_once(con, len(recs), rep)


def _orjson_ok(value: Any) -> bool:
    try:
        orjson.dumps(value)
        return True
    except orjson.JSONEncodeError:
        return False


def _flat(rec: dict[str, Any]) -> dict[str, str]:
    """One CSV/Parquet-string cell per field: nested values as JSON text, like exports do."""
    return {k: v if isinstance(v, str) else _dumps(v).decode("utf-8", "surrogatepass")
            for k, v in rec.items()}


@FUZZ
@given(recs=records(), quote_all=st.booleans(), bom=st.booleans())
def test_csv_each_row_once(tmp_path_factory: Any, recs: list[dict], quote_all: bool,
                           bom: bool) -> None:
    """RFC 4180 CSV (CRLF rows; a field holding CR or LF is quoted). A lone CR left
    unquoted (what ``csv.writer`` with ``lineterminator="\\n"`` writes) makes a file whose
    rows no reader can tell apart; that case is a regression test in test_hostile.py."""
    fields = ["request_id"] + sorted({k for r in recs for k in r} - {"request_id"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\r\n",
                       quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    w.writeheader()
    for r in recs:
        w.writerow(_flat(r))
    path = tmp_path_factory.mktemp("csv") / "f.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"")
                     + buf.getvalue().encode("utf-8", "surrogatepass"))
    con = connect(None)
    rep = ingest_files([path], con, limits=LIMITS, fmt="canonical")
    _assert_each_once(con, len(recs), rep)


@FUZZ
@given(recs=records(), as_strings=st.booleans())
def test_parquet_each_row_once(tmp_path_factory: Any, recs: list[dict],
                               as_strings: bool) -> None:
    """Parquet with inferred (often wrong) column types, or every column as text."""
    path = tmp_path_factory.mktemp("pq") / "f.parquet"
    rows = [_flat(r) for r in recs] if as_strings else recs
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowException, OverflowError):
        table = pa.Table.from_pylist([_flat(r) for r in recs])
    try:
        pq.write_table(table, path)
    except (pa.ArrowException, UnicodeEncodeError):     # lone surrogates: not writable at all
        return
    con = connect(None)
    rep = ingest_files([path], con, limits=LIMITS, fmt="canonical")
    _assert_each_once(con, len(recs), rep)


@FUZZ
@given(recs=records(n_max=6), other=records(n_max=6))
def test_stored_rows_unchanged_by_later_files(tmp_path_factory: Any, recs: list[dict],
                                              other: list[dict]) -> None:
    """A later file reusing stored ids (with any content) never changes a stored row."""
    d = tmp_path_factory.mktemp("later")
    good = d / "good.jsonl"
    good.write_bytes(b"".join(orjson.dumps({
        "request_id": f"fz-{i}", "ts": 1762000000 + i, "account_id": "a", "model": "m",
        "prompt": f"q{i}"}) + b"\n" for i in range(6)))
    con = connect(None)
    ingest_files([good], con, limits=LIMITS)
    before = con.execute("SELECT * FROM requests ORDER BY request_id").fetchall()
    bad = d / "later.jsonl"
    bad.write_bytes(b"".join(_dumps(r) + b"\n" for r in recs + other))
    rep = ingest_files([bad], con, limits=LIMITS, fmt="canonical")
    assert con.execute("SELECT * FROM requests ORDER BY request_id").fetchall() == before
    assert rep.rows_ok == 0 and rep.rows_ok + rep.rows_bad + rep.rows_dup == len(recs + other)


# --- adapted formats --------------------------------------------------------------------------

ANY_ATTR = st.one_of(
    st.fixed_dictionaries({"stringValue": TEXT}), st.fixed_dictionaries({"intValue": st.one_of(
        st.integers(-(2 ** 63), 2 ** 63), TEXT)}),
    st.fixed_dictionaries({"doubleValue": st.floats(allow_nan=False, allow_infinity=False)}),
    st.fixed_dictionaries({"arrayValue": st.fixed_dictionaries({"values": st.lists(
        st.fixed_dictionaries({"stringValue": TEXT}), max_size=3)})}), JSON)
GENAI_KEYS = ["gen_ai.request.model", "gen_ai.response.id", "account.id", "user.id",
              "gen_ai.input.messages", "gen_ai.prompt", "gen_ai.usage.input_tokens",
              "gen_ai.output.messages", "client.address", "user_agent.original", "custom"]


@st.composite
def otel_exports(draw: Any) -> tuple[dict[str, Any], int]:
    """An OTLP export whose GenAI chat spans are the rows; missing, cyclic and junk spans."""
    spans, n_genai = [], 0
    ids = [f"{i:016x}" for i in range(draw(st.integers(1, 8)))]
    for i, sid in enumerate(ids):
        genai = draw(st.booleans())
        attrs = [{"key": k, "value": draw(ANY_ATTR)} for k in draw(
            st.lists(st.sampled_from(GENAI_KEYS), max_size=6, unique=True))]
        attrs = [a for a in attrs if a["key"] != "gen_ai.response.id"]
        attrs.append({"key": "gen_ai.response.id", "value": {"stringValue": f"fz-{n_genai}"}}
                     if genai else {"key": "x", "value": {"stringValue": "y"}})
        attrs.append({"key": "gen_ai.operation.name", "value": {
            "stringValue": "chat" if genai else draw(st.sampled_from(
                ["embeddings", "execute_tool", "invoke_agent"]))}})
        span: dict[str, Any] = {"traceId": "t" * 32, "spanId": sid, "attributes": attrs,
                                "parentSpanId": ids[(i + 1) % len(ids)],   # a cycle
                                "startTimeUnixNano": draw(st.one_of(
                                    st.integers(0, 2 ** 64), TEXT, JSON)),
                                "events": draw(st.one_of(st.none(), st.lists(JSON, max_size=2)))}
        n_genai += genai
        spans.append(span)
    scopes: list[Any] = [{"spans": spans}, {}, {"spans": []}]
    return {"resourceSpans": [{"resource": {"attributes": draw(st.one_of(
        st.just([]), st.lists(st.fixed_dictionaries({"key": TEXT, "value": ANY_ATTR}),
                              max_size=3)))}, "scopeSpans": scopes}]}, n_genai


@FUZZ
@given(export=otel_exports())
def test_otel_each_genai_span_once(tmp_path_factory: Any, export: tuple[dict, int]) -> None:
    doc, n = export
    path = tmp_path_factory.mktemp("otel") / "trace.json"
    path.write_bytes(_dumps(doc))
    con = connect(None)
    rep = ingest_files([path], con, limits=LIMITS, fmt="otel")
    stored = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    # Spans are traced by count: a bad span is quarantined from the export's one line.
    assert rep.rows_ok == stored and rep.rows_ok + rep.rows_bad + rep.rows_dup == n
    assert stored == con.execute(
        "SELECT count(*) FROM requests WHERE request_id LIKE 'fz-%'").fetchone()[0]


@st.composite
def openai_pairs(draw: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        req = draw(st.one_of(st.fixed_dictionaries({
            "model": st.one_of(TEXT, LEAF), "messages": MESSAGES,
            "user": st.one_of(TEXT, JSON)}), JSON))
        resp = draw(st.one_of(st.fixed_dictionaries({
            "id": st.just(f"fz-{i}"), "created": TS, "choices": JSON,
            "usage": st.fixed_dictionaries({"prompt_tokens": TOKENS})}), TEXT))
        out.append({"request_id": f"fz-{i}", "request": req, "response": resp,
                    "timestamp": draw(TS), "api_key": draw(st.one_of(TEXT, st.just(
                        "sk-" + "x" * 40)))})
    return out


@st.composite
def litellm_rows(draw: Any) -> list[dict[str, Any]]:
    return [{"request_id": f"fz-{i}", "call_type": "acompletion",
             "startTime": draw(TS), "model": draw(st.one_of(TEXT, LEAF)),
             "user": draw(st.one_of(TEXT, JSON)), "end_user": draw(st.one_of(TEXT, JSON)),
             "api_key": draw(TEXT), "messages": draw(st.one_of(MESSAGES, TEXT)),
             "response": draw(st.one_of(JSON, TEXT)), "prompt_tokens": draw(TOKENS),
             "metadata": draw(st.one_of(JSON, TEXT)), "spend": draw(LEAF)}
            for i in range(draw(st.integers(1, 8)))]


@FUZZ
@given(pairs=openai_pairs())
def test_openai_pairs_each_row_once(tmp_path_factory: Any, pairs: list[dict]) -> None:
    _adapted_once(tmp_path_factory.mktemp("oai") / "pairs.jsonl", pairs, "openai")


@FUZZ
@given(rows=litellm_rows())
def test_litellm_each_row_once(tmp_path_factory: Any, rows: list[dict]) -> None:
    _adapted_once(tmp_path_factory.mktemp("llm") / "spend.jsonl", rows, "litellm")


def _adapted_once(path: Path, objs: list[dict], fmt: str) -> None:
    """One record per object: each is stored or quarantined (traced by line), exactly once."""
    path.write_bytes(b"".join(_dumps(o) + b"\n" for o in objs))
    con = connect(None)
    rep = ingest_files([path], con, limits=LIMITS, fmt=fmt)
    stored_lines = [int(s.rsplit(":", 1)[1]) for (s,) in con.execute(
        "SELECT source FROM requests").fetchall()]
    q_lines = [r[0] for r in con.execute("SELECT line FROM quarantine").fetchall()]
    dup = rep.rows_dup
    assert sorted(stored_lines + q_lines) == sorted(set(stored_lines + q_lines))
    assert len(stored_lines) + len(q_lines) + dup == len(objs)
    assert rep.rows_ok + rep.rows_bad + rep.rows_dup == len(objs)
