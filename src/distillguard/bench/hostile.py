"""Hostile-input corpus: build the files, ingest them, count every row.

``python -m distillguard.bench.hostile DIR [--big-line-mb 100]`` writes the corpus into DIR
(truncated gzip, mixed encodings, BOMs, NUL bytes, deeply nested JSON, one huge line, CSV with
embedded newlines and quotes, Parquet with wrong column types, OTLP with missing and cyclic
spans, duplicate ``request_id``\\ s with other content, timestamps in year 0 and 9999, NaN and
Infinity token counts, huge ``tools`` arrays, broken OpenAI pairs and LiteLLM rows), ingests a
good file and then every hostile file into one store, and prints a JSON summary.

Every row the corpus holds has an expected fate, written down when the file is built:
``store`` (a valid row), ``quarantine`` (with a reason) or ``dup`` (an identical copy of a row
already stored). A row is *lost* when it is neither stored, nor quarantined, nor an identical
copy of a stored row; *double* when it ends in two places; *wrong* when it ends somewhere
other than expected. Rows stored from the good file must be byte-for-byte unchanged at the
end. ``rows_destroyed`` counts rows whose bytes the truncated gzip cut off: no reader can see
them, so they are not tried (the truncation itself is one quarantined entry).
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Row", "build_corpus", "run_corpus", "main"]

TS = "2026-11-02T10:00:00Z"


@dataclass
class Row:
    file: str
    line: int
    rid: str | None
    expect: str                 # store | quarantine | dup


class _Corpus:
    def __init__(self, out: Path) -> None:
        self.out, self.destroyed = out, 0
        self.rows: list[Row] = []
        out.mkdir(parents=True, exist_ok=True)

    def expect(self, file: str, line: int, rid: str | None, fate: str) -> None:
        self.rows.append(Row(file, line, rid, fate))

    def jsonl(self, name: str, lines: list[tuple[bytes, str | None, str]]) -> None:
        """Write raw lines; each is (bytes, request_id or None, expected fate)."""
        with (self.out / name).open("wb") as fh:
            for i, (data, rid, fate) in enumerate(lines, start=1):
                fh.write(data + b"\n")
                self.expect(name, i, rid, fate)


def _rec(rid: str, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"request_id": rid, "ts": TS, "account_id": "acct-h", "model": "m",
                         "messages": [{"role": "user", "content": f"question {rid}"}]}
    r.update(kw)
    return r


def _j(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _ok(rid: str, **kw: Any) -> tuple[bytes, str, str]:
    return _j(_rec(rid, **kw)), rid, "store"


def _bad(rid: str | None, data: bytes | None = None, **kw: Any) -> tuple[bytes, str | None, str]:
    return (data if data is not None else _j(_rec(rid or "x", **kw))), rid, "quarantine"


def _nested(depth: int, leaf: str = "1", kind: str = "object") -> str:
    return ('{"x":' * depth + leaf + "}" * depth) if kind == "object" else (
        "[" * depth + leaf + "]" * depth)


def build_corpus(out: Path, big_line_mb: int = 100) -> _Corpus:
    """Write the hostile files into ``out``; return the expectations (also manifest.json)."""
    c = _Corpus(out)
    c.jsonl("00-good.jsonl", [_ok(f"g-{i}", account_id=f"acct-{i % 7}", ts=1762000000 + i)
                             for i in range(300)])

    # Truncated gzip: what a reader can decompress is stored, the cut is one quarantine entry.
    body = [_j(_rec(f"t-{i}", prompt=f"p{i}" * 20, messages=None)) for i in range(3000)]
    blob = gzip.compress(b"".join(b + b"\n" for b in body))
    cut = blob[: int(len(blob) * 0.55)]
    (out / "truncated.jsonl.gz").write_bytes(cut)
    plain = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)
    intact = plain.count(b"\n")
    for i in range(intact):
        c.expect("truncated.jsonl.gz", i + 1, f"t-{i}", "store")
    c.expect("truncated.jsonl.gz", intact + 1, None, "quarantine")
    c.destroyed += len(body) - intact
    # Several gzip members in one file (what `cat a.gz b.gz` gives): all rows readable.
    (out / "multi-member.jsonl.gz").write_bytes(
        gzip.compress(_j(_rec("mm-1")) + b"\n") + gzip.compress(_j(_rec("mm-2")) + b"\n"))
    c.expect("multi-member.jsonl.gz", 1, "mm-1", "store")
    c.expect("multi-member.jsonl.gz", 2, "mm-2", "store")

    ok_e = _j(_rec("enc-utf8", prompt="café 😀 𝔘𝔫𝔦", messages=None))
    c.jsonl("encodings.jsonl", [
        (ok_e, "enc-utf8", "store"),
        _bad("enc-latin1", _j(_rec("enc-latin1", prompt="cafe", messages=None)).replace(
            b"cafe", "café".encode("latin-1"))),
        _bad("enc-utf16", json.dumps(_rec("enc-utf16")).encode("utf-16-le")),
        _bad("enc-cp1252", _j(_rec("enc-cp1252", prompt="q", messages=None)).replace(
            b'"q"', "\u201cq\u201d".encode("cp1252"))),
        _bad("enc-overlong", _j(_rec("enc-overlong", prompt="q", messages=None)).replace(
            b'"q"', b'"\xc0\xaf"')),
        _bad("enc-surrogate", _j(_rec("enc-surrogate", prompt="q", messages=None)).replace(
            b'"q"', b'"\xed\xa0\x80"')),
        _ok("enc-escaped-surrogate-pair", prompt="\U0001f600", messages=None),
    ])
    # BOMs at the start of JSONL, a JSON array and a CSV.
    (out / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + _j(_rec("bom-1")) + b"\n"
                                    + _j(_rec("bom-2")) + b"\n")
    c.expect("bom.jsonl", 1, "bom-1", "store")
    c.expect("bom.jsonl", 2, "bom-2", "store")
    (out / "bom.json").write_bytes(b"\xef\xbb\xbf" + _j([_rec("bomj-1"), _rec("bomj-2")]))
    c.expect("bom.json", 1, "bomj-1", "store")
    c.expect("bom.json", 2, "bomj-2", "store")
    (out / "bom.csv").write_bytes(
        b"\xef\xbb\xbfrequest_id,ts,account_id,model,prompt\r\nbomc-1," + TS.encode()
        + b",acct-h,m,hello\r\n")
    c.expect("bom.csv", 2, "bomc-1", "store")

    c.jsonl("nul.jsonl", [
        _ok("nul-escaped", prompt="a\x00b", user_agent="ua\x00", messages=None),
        _ok("nul-in-account", account_id="acct\x00h"),
        _bad("nul-raw", _j(_rec("nul-raw", prompt="ab", messages=None)).replace(
            b'"ab"', b'"a\x00b"')),
        _bad(None, b"\x00" * 64),
    ])

    c.jsonl("deep.jsonl", [
        _bad(None, _nested(100_000, kind="array").encode()),
        _bad("deep-1100", b'{"request_id":"deep-1100","ts":"' + TS.encode()
             + b'","account_id":"a","model":"m","prompt":"q","custom":'
             + _nested(1100).encode() + b"}"),
        _bad("deep-300", b'{"request_id":"deep-300","ts":"' + TS.encode()
             + b'","account_id":"a","model":"m","prompt":"q","custom":'
             + _nested(300).encode() + b"}"),
        (b'{"request_id":"deep-100","ts":"' + TS.encode()
         + b'","account_id":"a","model":"m","prompt":"q","custom":'
         + _nested(100).encode() + b"}", "deep-100", "store"),
        (b'{"request_id":"deep-content","ts":"' + TS.encode()
         + b'","account_id":"a","model":"m","messages":[{"role":"user","content":'
         + _nested(500, '"x"', "array").encode() + b"}]}", "deep-content", "store"),
        _bad("deep-response", b'{"request_id":"deep-response","ts":"' + TS.encode()
             + b'","account_id":"a","model":"m","prompt":"q","response":'
             + _nested(400, kind="array").encode() + b"}"),
    ])

    # One line of big_line_mb MB between good rows: quarantined unread, memory stays bounded.
    with (out / "bigline.jsonl").open("wb") as fh:
        fh.write(_j(_rec("big-before")) + b"\n")
        head = b'{"request_id":"big-line","ts":"' + TS.encode() + \
            b'","account_id":"a","model":"m","prompt":"'
        fh.write(head)
        chunk = b"x" * (1 << 20)
        for _ in range(big_line_mb):
            fh.write(chunk)
        fh.write(b'"}\n' + _j(_rec("big-after")) + b"\n")
    c.expect("bigline.jsonl", 1, "big-before", "store")
    c.expect("bigline.jsonl", 2, None, "quarantine")
    c.expect("bigline.jsonl", 3, "big-after", "store")

    csv_text = (
        "request_id,ts,account_id,model,prompt,org_id\r\n"
        f'csv-1,{TS},acct-h,m,"line one\nline two, with comma",org\r\n'
        f'csv-2,{TS},acct-h,m,"she said ""hi""\r\nand left",NULL\r\n'
        f"csv-3,{TS},acct-h,m,q,org,EXTRA\r\n"
        f"csv-4,{TS},acct-h,m\r\n"
        f'csv-5,{TS},acct-h,m,"<script>alert(1)</script>",\r\n'
        f"csv-6,NaN,acct-h,m,q,org\r\n"
    )
    (out / "embedded.csv").write_bytes(csv_text.encode())
    for line, rid, fate in [(2, "csv-1", "store"), (4, "csv-2", "store"),
                            (6, "csv-3", "quarantine"), (7, "csv-4", "quarantine"),
                            (8, "csv-5", "store"), (9, "csv-6", "quarantine")]:
        c.expect("embedded.csv", line, rid, fate)
    (out / "tokens.csv").write_bytes((
        "request_id,ts,account_id,model,prompt,input_tokens\n"
        f"tc-1,{TS},a,m,q,NaN\n"          # a null cell, as pyarrow's CSV reader reads it
        f"tc-2,{TS},a,m,q,Infinity\n"
        f"tc-3,{TS},a,m,q,-Infinity\n"
        f"tc-4,{TS},a,m,q,1e400\n"
        f"tc-5,{TS},a,m,q,12\n").encode())
    for line, rid, fate in [(2, "tc-1", "store"), (3, "tc-2", "quarantine"),
                            (4, "tc-3", "quarantine"), (5, "tc-4", "quarantine"),
                            (6, "tc-5", "store")]:
        c.expect("tokens.csv", line, rid, fate)

    _parquet_files(c)
    _otlp_files(c)

    c.jsonl("dup-ids.jsonl", [
        _bad("g-0", _j(_rec("g-0", prompt="overwrite attempt", messages=None))),
        (_j(_rec("g-1", account_id="acct-1", ts=1762000001)), "g-1", "dup"),
        _ok("d-1"),
        _bad("d-1", _j(_rec("d-1", account_id="someone-else"))),
        _ok("d-2"),
        (_j(_rec("d-2")), "d-2", "dup"),
    ])
    c.jsonl("ts-extremes.jsonl", [
        _bad("ts-0", ts="0000-01-01T00:00:00Z"),
        _bad("ts-1-offset", ts="0001-01-01T00:00:00+01:00"),
        _bad("ts-9999", ts="9999-12-31T23:59:59Z"),
        _bad("ts-9999-offset", ts="9999-12-31T23:59:59-14:00"),
        _bad("ts-epoch-year1", ts=-62135596800),
        _bad("ts-1e300", ts=1e300),
        _bad("ts-neg-1e300", ts=-1e300),
        _bad("ts-nan-str", ts="NaN"),
        _ok("ts-ok-offset", ts="2026-11-02T10:00:00+14:00"),
        _ok("ts-ok-ms", ts=1762000000123),
    ])
    nan = _j(_rec("tok-nan-literal", input_tokens=1)).replace(b'"input_tokens":1',
                                                             b'"input_tokens":NaN')
    c.jsonl("nan-tokens.jsonl", [
        _bad("tok-nan-literal", nan),
        _bad("tok-inf-literal", nan.replace(b"NaN", b"Infinity").replace(
            b"tok-nan-literal", b"tok-inf-literal")),
        _bad("tok-1e400", nan.replace(b"NaN", b"1e400").replace(
            b"tok-nan-literal", b"tok-1e400")),
        _bad("tok-2e70", nan.replace(b"NaN", str(2 ** 70).encode()).replace(
            b"tok-nan-literal", b"tok-2e70")),
        _bad("tok-nan-str", input_tokens="NaN"),
        _bad("tok-inf-str", input_tokens="Infinity"),
        _bad("tok-neginf-str", output_tokens="-Infinity"),
        _bad("tok-neg", input_tokens=-1),
        _bad("tok-list", input_tokens=[1]),
        _ok("tok-float", input_tokens=12.7),
        _ok("tok-str", output_tokens="12"),
    ])
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    c.jsonl("huge-tools.jsonl", [
        _ok("tools-200k", tools=[tool] * 200_000),
        _bad(None, _j(_rec("tools-over-limit", tools=[tool] * 400_000))),
        _bad("tools-not-list", tools={"a": 1}),
        _ok("tools-after"),
    ])

    c.jsonl("openai-hostile.jsonl", [
        (_j({"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "user": "u1"},
             "response": {"id": "oa-1", "created": 1762000000, "choices": [
                 {"message": {"content": "yo"}}]}}), "oa-1", "store"),
        _bad(None, _j({"request": [1, 2], "response": {"id": "oa-2", "choices": []}})),
        _bad(None, _j({"request": {"model": "m", "messages": []},
                       "response": {"id": "oa-3", "choices": []}})),
        (_j({"request": {"model": "m", "messages": [{"role": "user", "content": "k"}]},
             "api_key": "sk-" + "s" * 40,
             "response": {"id": "oa-4", "created": 1762000000, "choices": []}}), "oa-4",
         "store"),
        _bad(None, _j({"request": {"model": "m", "prompt": "x"},
                       "response": {"id": "oa-5", "created": "9999-12-31T23:59:59-01:00"}})),
    ])
    c.jsonl("litellm-hostile.jsonl", [
        (_j({"request_id": "ll-1", "call_type": "acompletion", "startTime": TS,
             "model": "m", "user": "u", "messages": [{"role": "user", "content": "hi"}],
             "spend": 0.1}), "ll-1", "store"),
        _bad(None, _j({"request_id": "ll-2", "call_type": "acompletion", "startTime": TS,
                       "model": "m", "messages": "not json", "spend": 0.1})),
        _bad(None, _j({"request_id": "ll-3", "call_type": "acompletion", "startTime": "NaN",
                       "model": "m", "user": "u", "messages": [
                           {"role": "user", "content": "x"}], "spend": 0.1})),
        _bad(None, json.dumps({"request_id": "ll-4", "call_type": "acompletion", "spend": 0.1,
                               "standard_logging_object": {"messages": {
                                   "deep": _nested_obj(300)}}}).encode()),
    ])
    (out / "manifest.json").write_text(json.dumps(
        {"rows": [asdict(r) for r in c.rows], "destroyed": c.destroyed}))
    return c


def _nested_obj(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = {"x": v}
    return v


def _parquet_files(c: _Corpus) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = {"account_id": ["a", "a"], "model": ["m", "m"], "prompt": ["q", "q"]}

    def write(name: str, cols: dict[str, Any], fates: list[tuple[str | None, str]]) -> None:
        pq.write_table(pa.table({**base, **cols}), c.out / name)
        for i, (rid, fate) in enumerate(fates, start=1):
            c.expect(name, i, rid, fate)

    write("pq-ts-double.parquet", {"request_id": ["pd-1", "pd-2"],
                                   "ts": pa.array([1762000000.5, float("nan")])},
          [("pd-1", "store"), ("pd-2", "quarantine")])
    write("pq-id-binary.parquet", {"request_id": pa.array([b"pb-1", b"pb-2"]),
                                   "ts": [TS, TS]}, [(None, "quarantine"), (None, "quarantine")])
    write("pq-messages-int.parquet", {"request_id": ["pm-1", "pm-2"], "ts": [TS, TS],
                                      "messages": pa.array([1, 2])},
          [("pm-1", "quarantine"), ("pm-2", "quarantine")])
    write("pq-tokens-double.parquet", {"request_id": ["pt-1", "pt-2"], "ts": [TS, TS],
                                       "input_tokens": pa.array([float("inf"), 3.0])},
          [("pt-1", "quarantine"), ("pt-2", "store")])
    write("pq-ts-timestamp.parquet", {"request_id": ["ps-1", "ps-2"], "ts": pa.array(
        [1762000000_000000, 32503680000_000000], pa.timestamp("us", tz="UTC"))},
          [("ps-1", "store"), ("ps-2", "quarantine")])
    write("pq-ts-bool.parquet", {"request_id": ["pbool-1", "pbool-2"],
                                 "ts": pa.array([True, False])},
          [("pbool-1", "quarantine"), ("pbool-2", "quarantine")])


def _span(sid: str, *, rid: str | None, parent: str | None = None, start: Any = 1762000000e9,
          op: str = "chat", extra: list[dict] | None = None) -> dict[str, Any]:
    attrs = [{"key": "gen_ai.operation.name", "value": {"stringValue": op}},
             {"key": "gen_ai.request.model", "value": {"stringValue": "m"}},
             {"key": "account.id", "value": {"stringValue": "acct-o"}},
             {"key": "gen_ai.prompt", "value": {"stringValue": f"prompt {sid}"}}]
    if rid is not None:
        attrs.append({"key": "gen_ai.response.id", "value": {"stringValue": rid}})
    span: dict[str, Any] = {"traceId": "ab" * 16, "spanId": sid, "attributes":
                            attrs + (extra or [])}
    if parent is not None:
        span["parentSpanId"] = parent
    if start is not None:
        span["startTimeUnixNano"] = str(int(start)) if isinstance(start, float) else start
    return span


def _otlp_files(c: _Corpus) -> None:
    def export(*spans: Any, scopes: Any = None) -> bytes:
        return _j({"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": scopes
                                      if scopes is not None else [{"spans": list(spans)}]}]})

    c.jsonl("otlp-hostile.jsonl", [
        (export(_span("s0", rid="ot-0")), "ot-0", "store"),
        (export(_span("s1", rid="ot-cycle", parent="s1")), "ot-cycle", "store"),
        (export(_span("s2", rid="ot-ring-a", parent="s3"),
                _span("s3", rid="ot-ring-b", parent="s2")), "ot-ring-a", "store"),
        _bad(None, export(_span("s3", rid=None, start=1762000000e9) | {"spanId": None,
                                                                       "traceId": None})),
        _bad("ot-nostart", export(_span("s4", rid="ot-nostart", start=None))),
        _bad("ot-year0", export(_span("s5", rid="ot-year0", start="0"))),
        _bad(None, export(scopes=[{"spans": [None]}])),
        _bad(None, _j({"resourceSpans": "nope"})),
        (export(_span("s6", rid="ot-dupspan")), "ot-dupspan", "store"),
        _bad("ot-dupspan", export(_span("s6", rid="ot-dupspan", extra=[
            {"key": "user_agent.original", "value": {"stringValue": "other"}}]))),
    ])
    c.expect("otlp-hostile.jsonl", 3, "ot-ring-b", "store")    # the ring's second span
    # Exports with nothing to ingest: no scopes, empty scopes, only non-GenAI spans. No rows.
    (c.out / "otlp-empty.jsonl").write_bytes(b"\n".join([
        _j({"resourceSpans": [{"resource": {}}]}),
        _j({"resourceSpans": [{"scopeSpans": [{}, {"spans": []}]}]}),
        export(_span("e1", rid="ot-embed", op="embeddings"),
               _span("e2", rid="ot-tool", op="execute_tool", parent="e1")),
    ]) + b"\n")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_corpus(corpus_dir: Path, db: Path | None = None) -> dict[str, Any]:
    """Ingest the good file, then every hostile file, into one store; count every row."""
    from distillguard.config import load_config
    from distillguard.errors import IngestError
    from distillguard.ingest import ingest_files
    from distillguard.store import connect

    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    rows = [Row(**r) for r in manifest["rows"]]
    limits = load_config()["ingest"]
    con = connect(db)
    t0 = time.perf_counter()
    ingest_files([corpus_dir / "00-good.jsonl"], con, limits=limits)
    snapshot = con.execute("SELECT * FROM requests ORDER BY request_id").fetchall()
    files = sorted(p for p in corpus_dir.iterdir()
                   if p.name not in ("00-good.jsonl", "manifest.json"))
    file_errors = {}
    for p in files:
        try:
            ingest_files([p], con, limits=limits)
        except IngestError as exc:   # an unusable file is refused whole, with a reason
            file_errors[p.name] = str(exc)
    seconds = time.perf_counter() - t0
    stored = dict(con.execute("SELECT request_id, source FROM requests").fetchall())
    n_stored = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    quarantine: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for source, line, reason, raw in con.execute(
            "SELECT source, line, reason, raw FROM quarantine").fetchall():
        quarantine.setdefault((Path(source).name, int(line)), []).append((reason, raw))
    unchanged = con.execute(
        "SELECT * FROM requests WHERE request_id IN (SELECT request_id FROM requests "
        "WHERE source LIKE '00-good.jsonl:%') ORDER BY request_id").fetchall() == snapshot

    lost, double, wrong, fates = [], [], [], {"store": 0, "quarantine": 0, "dup": 0}
    for r in rows:
        here = f"{r.file}:{r.line}"
        stored_here = r.rid is not None and stored.get(r.rid) == here
        q = [e for e in quarantine.get((r.file, r.line), [])
             if r.rid is None or r.rid in e[1] or len(quarantine[(r.file, r.line)]) == 1]
        if any(not reason for reason, _ in q):
            wrong.append(asdict(r) | {"got": "quarantine without a reason"})
        dup = (not stored_here and not q and r.rid is not None and r.rid in stored)
        got = "store" if stored_here else "quarantine" if q else "dup" if dup else None
        if got is None:
            lost.append(asdict(r))
            continue
        if stored_here and q or len(q) > 1:
            double.append(asdict(r))
        fates[got] += 1
        if got != r.expect:
            wrong.append(asdict(r) | {"got": got, "quarantine": [e[0] for e in q]})
    return {
        "files": len(files) + 1, "rows_tried": len(rows), "rows_stored": fates["store"],
        "rows_quarantined": fates["quarantine"], "rows_identical_dup": fates["dup"],
        "rows_lost": len(lost), "rows_double": len(double), "rows_wrong": len(wrong),
        "stored_rows_unchanged": unchanged, "rows_destroyed": manifest["destroyed"],
        "store_rows": n_stored, "file_errors": file_errors, "seconds": round(seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "lost": lost[:20], "double": double[:20], "wrong": wrong[:20],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distillguard.bench.hostile",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="folder to write the corpus into")
    ap.add_argument("--big-line-mb", type=int, default=100,
                    help="size of the single huge JSONL line (default 100)")
    ap.add_argument("--db", type=Path, default=None, help="store file (default: in memory)")
    args = ap.parse_args(argv)
    build_corpus(args.dir, args.big_line_mb)
    summary = run_corpus(args.dir, args.db)
    print(json.dumps(summary, indent=2, default=str))
    ok = (summary["rows_lost"] == 0 and summary["rows_double"] == 0
          and summary["store_rows"] == summary["rows_stored"]
          and summary["rows_wrong"] == 0 and summary["stored_rows_unchanged"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
