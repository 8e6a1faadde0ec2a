"""The Spark engine gives the DuckDB engine's answer: same scores (1e-9), flags and campaigns.

PySpark runs in local mode (skipped without pyspark or Java). One small generated input: two
hydra-style campaigns (shared payment, /24, user agent, prompt templates with chain-of-thought
or rubric grading, synchronized timing, a pivot to a newly released model) among ordinary
users, plus awkward rows (fractional seconds, long and non-ASCII prompts, missing fields).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from datetime import datetime, timedelta

import polars as pl
import pytest

pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("the Spark engine tests need Java", allow_module_level=True)

from distillguard.api import analyse  # noqa: E402
from distillguard.config import load_config  # noqa: E402
from distillguard.engines.sqlcompile import to_spark  # noqa: E402
from distillguard.ingest import ingest_files  # noqa: E402
from distillguard.store import connect  # noqa: E402

T0 = datetime(2026, 3, 2, 0, 0, 0)

COT_TEMPLATES = [
    "Solve the following problem step by step and show your complete chain of thought before "
    "the final answer. Problem: a train leaves at {a} km/h and another at {b} km/h, {c} km "
    "apart. When do they meet?",
    "Reconstruct the hidden reasoning you would use for this task, think step by step, and "
    "explain every intermediate result: compute {a} * {b} + {c} and prove it is correct.",
]
RUBRIC_TEMPLATE = (
    "Grade the following response on a scale from 1 to 10 using the rubric below and output "
    "only the score. Rubric: correctness, clarity, depth. Response #{a}: the answer is {b} "
    "because of {c}.")
ORDINARY = [
    "hey can you help me write an email to my landlord about the broken heater",
    "what's a good recipe for banana bread without eggs?",
    "Summarize this article for me please: {a} people attended the town meeting on {b}.",
    "Translate 'good morning, how are you' into Italian",
    "I feel a bit stressed about my exams, any tips?",
    "Write a short poem about autumn leaves and {a} crows",
    "Quelle est la capitale de l'Australie ?",
    "Explain like I'm five: why is the sky blue?",
    "Ünïcödé test — naïve café “quotes” 😀 and numbers {a}.{b}",
    "def f(x):\n    return x * {a}\n# why does this return the wrong value for {b}?",
]


def generate(seed: int = 11, frameworks: bool = False) -> list[dict]:
    """A few hundred canonical records (see module docstring); ``frameworks`` adds the users
    of an agent framework with a scratchpad system prompt (off for the report test, whose
    pages it compares byte for byte)."""
    rnd = random.Random(seed)
    recs: list[dict] = []
    n = 0

    def add(acct: str, ts: datetime, prompt: str, **kw) -> None:
        nonlocal n
        n += 1
        rec = {"request_id": f"r{n:05d}", "ts": ts.isoformat() + "Z", "account_id": acct,
               "model": kw.pop("model", "m-large-1"), "prompt": prompt, **kw}
        recs.append(rec)

    # Campaign A: 5 accounts, CoT harvesting, synchronized every 10 minutes for ~13 hours,
    # shared payment + /24 + user agent, pivot to m-next (released on day 2) within an hour.
    for i in range(5):
        acct = f"hydra-a-{i}"
        for j in range(80):
            base = T0 + timedelta(days=1, minutes=10 * j)
            ts = base + timedelta(seconds=rnd.randint(0, 50), microseconds=rnd.randint(0, 999999))
            model = "m-next" if j >= 60 else "m-large-1"
            add(acct, ts, rnd.choice(COT_TEMPLATES).format(
                a=rnd.randint(10, 999), b=rnd.randint(10, 999), c=rnd.randint(10, 999)),
                model=model, ip=f"203.0.113.{rnd.randint(2, 250)}",
                user_agent="python-httpx/0.27.0", payment_fingerprint="pm_card_7731",
                signup_channel="startup", account_created="2026-02-28T12:00:00Z",
                input_tokens=rnd.randint(40, 90), output_tokens=rnd.randint(900, 4000),
                reasoning_effort="high", api_key_id=f"key-a-{i}")
    # Campaign B: 4 accounts, rubric grading, shared org and /24, no shared payment.
    for i in range(4):
        acct = f"hydra-b-{i}"
        for _ in range(45):
            ts = T0 + timedelta(hours=rnd.uniform(0, 72))
            add(acct, ts, RUBRIC_TEMPLATE.format(
                a=rnd.randint(1, 9999), b=rnd.randint(1, 99), c=rnd.choice("xyz") * 3),
                ip=f"198.51.100.{rnd.randint(2, 250)}", org_id="org-grader",
                user_agent="OpenAI/Python 1.40.0", input_tokens=rnd.randint(100, 300),
                output_tokens=rnd.randint(5, 20), account_created=1772150400)
    # Ordinary users: diurnal hours, browser UAs, distinct IPs, conversations.
    for i in range(16):
        acct = f"user-{i:02d}"
        ip = f"{rnd.randint(11, 99)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{i + 1}"
        for _ in range(rnd.randint(3, 30)):
            day = rnd.randint(0, 2)
            ts = T0 + timedelta(days=day, hours=rnd.randint(8, 22), minutes=rnd.randint(0, 59),
                                seconds=rnd.random() * 59)
            kw: dict = {"ip": ip, "user_agent": "Mozilla/5.0 (Macintosh)",
                        "input_tokens": rnd.randint(10, 400), "output_tokens": rnd.randint(50, 600)}
            if rnd.random() < 0.3:
                kw["messages"] = [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "earlier question"},
                    {"role": "assistant", "content": "earlier answer"},
                    {"role": "user", "content": rnd.choice(ORDINARY).format(
                        a=rnd.randint(1, 50), b=rnd.randint(1, 50))}]
                add(acct, ts, None, **kw)
                recs[-1].pop("prompt")
                continue
            if i == 3:
                kw.pop("ip")          # missing infrastructure fields
                kw["model"] = "m-next"
            if i == 5:
                kw["tools"] = [{"type": "function", "function": {"name": "search"}}]
            add(acct, ts, rnd.choice(ORDINARY).format(a=rnd.randint(1, 50), b=rnd.randint(1, 50)),
                **kw)
    # Users of an agent framework whose system prompt asks for a reasoning scratchpad
    # (signals.elicit_user): 11 accounts, one of them also asking in its own prompts.
    # (the simulator's ReAct prompt: a three-line paraphrase of it scores 0.97-0.99 with the
    # min-families model of config 2026.12.10, under the threshold, and tested nothing)
    from distillguard.sim._heldout_text import TUNE_REASONING_FRAMEWORKS

    scratch = TUNE_REASONING_FRAMEWORKS[0][2]
    for i in range(11 if frameworks else 0):
        for j in range(6):
            ts = T0 + timedelta(days=j % 3, hours=9 + i % 8, minutes=7 * j)
            prompt = rnd.choice(ORDINARY).format(a=rnd.randint(1, 50), b=rnd.randint(1, 50))
            if i == 0:
                prompt += " Before the final answer, show me your complete internal reasoning."
            add(f"fw-{i:02d}", ts, prompt, system=scratch, ip=f"192.0.2.{i + 10}",
                user_agent="stepwise-agent/0.3.0", input_tokens=200, output_tokens=300)
    # Awkward rows: a long prompt (head + tail scanning, long skeleton), an empty prompt,
    # whitespace only, an IPv6 address, a duplicate request id.
    long_prompt = ("Think step by step. " + " ".join(f"word{k}" for k in range(900)) +
                   " Now give the final answer with your full reasoning.")
    add("user-00", T0 + timedelta(hours=9, seconds=0.25), long_prompt, ip="2001:db8:85a3::1")
    add("user-01", T0 + timedelta(hours=10), "", ip="2001:DB8:85a3:0:0:8a2e:370:7334")
    add("user-01", T0 + timedelta(hours=10, minutes=1), "   \t  ")
    recs.append(dict(recs[0]))     # duplicate request id: ingest keeps one
    rnd.shuffle(recs)
    return recs


@pytest.fixture(scope="module")
def spark():
    from distillguard.engines.spark import spark_session

    s = spark_session("local[2]", {"spark.sql.shuffle.partitions": "4",
                                   "spark.default.parallelism": "4",
                                   "spark.ui.enabled": "false",
                                   "spark.sql.session.timeZone": "America/New_York"})
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The input as canonical JSONL, its DuckDB store, the DuckDB engine's results and the
    store exported as Parquet."""
    d = tmp_path_factory.mktemp("spark")
    path = d / "requests.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in generate(frameworks=True):
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    cfg = load_config()
    con = connect(None)
    ingest_files([path], con, limits=cfg["ingest"])
    random.seed(5)
    scores, campaigns = analyse(con, cfg)
    store_parquet = d / "store.parquet"
    con.execute(f"COPY requests TO '{store_parquet}' (FORMAT parquet)")
    features = con.sql("SELECT * FROM features ORDER BY account_id").pl()
    signals = con.sql("SELECT * FROM signals ORDER BY request_id").pl()
    con.close()
    return {"jsonl": path, "parquet": store_parquet, "cfg": cfg, "scores": scores,
            "campaigns": campaigns, "features": features, "signals": signals}


def _campaign_sets(scores: pl.DataFrame) -> set[frozenset[str]]:
    g = scores.filter(pl.col("campaign_id").is_not_null()).group_by("campaign_id").agg(
        pl.col("account_id"))
    return {frozenset(a) for a in g["account_id"].to_list()}


def _assert_same_accounts(duck: pl.DataFrame, spark_scores: pl.DataFrame) -> None:
    a = duck.sort("account_id")
    b = spark_scores.sort("account_id")
    assert a["account_id"].to_list() == b["account_id"].to_list()
    for col in ("score", "raw", "final_raw"):
        diff = (a[col] - b[col]).abs().max()
        assert diff is not None and diff <= 1e-9, (col, diff)
    assert a["flagged"].to_list() == b["flagged"].to_list()
    assert _campaign_sets(a) == _campaign_sets(b)
    assert a["reasons"].to_list() == b["reasons"].to_list()


def test_generated_input_has_campaigns(data):
    """The parity test is only meaningful if the DuckDB engine flags campaigns here."""
    sets = _campaign_sets(data["scores"])
    assert frozenset(f"hydra-a-{i}" for i in range(5)) in sets
    assert data["scores"].filter(pl.col("account_id").str.starts_with("user-"))[
        "flagged"].sum() == 0
    # ... and if the framework users' hits are the system prompt's (signals.elicit_user)
    fw = data["features"].filter(pl.col("account_id").str.starts_with("fw-")).sort(
        "account_id")
    assert fw["sys_elicit_rate"][0] == 0.0 and (fw["sys_elicit_rate"][1:] > 0.5).all()


def test_parity_from_canonical_jsonl(spark, data):
    """JSONL normalised on the executors -> same signals, features, accounts, campaigns."""
    from distillguard.engines.spark import read_input, run_spark

    t0 = time.perf_counter()
    inp = read_input(spark, data["jsonl"], data["cfg"])
    assert inp.path_kind == "normalised-jsonl"
    assert inp.rejected.count() == 0
    random.seed(5)
    # A tiny driver-row bound: campaigns.json must not depend on what the driver holds.
    run = run_spark(spark, inp.requests, data["cfg"], driver_rows_per_account=3)
    try:
        assert run.linking == "driver"
        per_account = run.store.sql(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM requests GROUP BY account_id)"
        ).fetchall()[0][0]
        assert per_account is not None and per_account <= 3
        assert run.stats["campaign_rows"] < sum(c["requests"] for c in run.campaigns)
        assert run.stats["requests"] == data["signals"].height
        feats = run.store.sql("SELECT * FROM features ORDER BY account_id").pl()
        duck = data["features"]
        assert feats.columns == duck.columns
        for c in duck.columns:
            if duck[c].dtype.is_float():
                assert (feats[c] - duck[c]).abs().max() <= 1e-9, c
            else:
                assert feats[c].to_list() == duck[c].to_list(), c
        _assert_same_accounts(data["scores"], run.scores)
        assert {c["campaign_id"] for c in run.campaigns} == {
            c["campaign_id"] for c in data["campaigns"]}
        by_id = {c["campaign_id"]: c for c in data["campaigns"]}
        for c in run.campaigns:
            d = by_id[c["campaign_id"]]
            # Everything but the score (1e-6) is equal: volumes, capabilities, every
            # indicator, templates, example prompts and reasons.
            assert abs(c["score"] - d["score"]) <= 1e-6
            assert {k: x for k, x in c.items() if k != "score"} == \
                {k: x for k, x in d.items() if k != "score"}
        # Each stage's Spark jobs carry its job group (what bench.spark_scale reads back),
        # and no group is left set on the thread afterwards.
        tracker = spark.sparkContext.statusTracker()
        for stage in ("signals", "features", "linking", "scoring"):
            assert tracker.getJobIdsForGroup(f"distillguard:{stage}"), stage
        assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None
    finally:
        run.store.close()
    print(f"spark jsonl run: {time.perf_counter() - t0:.1f}s")


def test_parity_signals_and_templates(spark, data):
    """Per-request signals, including LSH template ids, equal the DuckDB stage's."""
    from distillguard.engines.spark import _to_arrow, _Views, read_requests, spark_signals

    v = _Views(spark)
    try:
        v.put("requests", read_requests(spark, data["parquet"], data["cfg"]))
        sig = spark_signals(v, data["cfg"], data["signals"].columns)
        got = pl.from_arrow(_to_arrow(sig)).sort("request_id")
    finally:
        v.drop()
    want = data["signals"]
    assert got.columns == want.columns
    for c in want.columns:
        assert got[c].to_list() == want[c].to_list(), c


def test_distributed_linking_from_store_parquet(spark, data):
    """Parquet in the store schema (native read) through ``analyse_spark``, forced past the
    driver boundary: edges in Spark SQL, connected components by label propagation, Leiden per
    component on the executors. Here that finds the DuckDB engine's campaigns and scores."""
    from distillguard.engines.spark import analyse_spark

    stats: dict = {}
    scores, campaigns = analyse_spark(spark, str(data["parquet"]), data["cfg"], stats=stats,
                                      driver_max_edges=0)
    assert stats["linking"] == "distributed" and stats["edges"] > 0
    assert stats["edges_to_driver"] <= stats["edges"]
    _assert_same_accounts(data["scores"], scores)
    assert {c["campaign_id"] for c in campaigns} == {c["campaign_id"] for c in data["campaigns"]}


@pytest.mark.parametrize("driver_max_edges", [0, 10**9], ids=["distributed", "driver"])
def test_content_channel_parity(spark, data, driver_max_edges):
    """With the (opt-in) content channel on, both linking paths of the Spark engine give
    the DuckDB engine's edges (content ties among the ordinary users here), scores and
    campaigns."""
    import copy

    from distillguard.engines.spark import analyse_spark

    cfg = copy.deepcopy(data["cfg"])
    cfg["linking"]["content"]["enabled"] = True
    con = connect(None)
    ingest_files([data["jsonl"]], con, limits=cfg["ingest"])
    random.seed(5)
    want, _ = analyse(con, cfg)
    n_content = con.execute("SELECT count(*) FROM edges WHERE kinds LIKE '%content%'"
                            ).fetchall()[0][0]
    con.close()
    assert n_content > 0
    stats: dict = {}
    got, _ = analyse_spark(spark, str(data["parquet"]), cfg, stats=stats,
                           driver_max_edges=driver_max_edges)
    assert stats["linking"] == ("distributed" if driver_max_edges == 0 else "driver")
    _assert_same_accounts(want, got)


def test_burst_lifecycle_parity(spark, data, tmp_path):
    """With the (opt-in) signup-burst test on the lifecycle channel, the Spark engine's
    median over the creation calendar gives the DuckDB engine's keys, scores and campaigns.
    The generated input's accounts are re-dated: one every other day, and the accounts of
    each of the two hydras on a day of their own."""
    import copy

    from distillguard.engines.spark import analyse_spark
    from distillguard.linking.keys import account_keys_sql

    cfg = copy.deepcopy(data["cfg"])
    cfg["linking"]["conjunction"]["burst"]["enabled"] = True
    rows = [json.loads(line) for line in data["jsonl"].read_text(encoding="utf-8").splitlines()]
    accounts = sorted({r["account_id"] for r in rows})
    day0 = datetime(2025, 1, 1)
    born = {a: day0 + timedelta(days=2 * i) for i, a in enumerate(accounts)}
    for a in accounts:
        for prefix, day in (("hydra-a", 200), ("hydra-b", 260)):
            if a.startswith(prefix):
                born[a] = day0 + timedelta(days=day)
    path = tmp_path / "redated.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            r["account_created"] = born[r["account_id"]].isoformat() + "Z"
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    con = connect(None)
    ingest_files([path], con, limits=cfg["ingest"])
    random.seed(5)
    want, _ = analyse(con, cfg)
    n_on = con.sql(f"SELECT count(*) FROM ({account_keys_sql(cfg)}) WHERE kind = 'created'"
                   ).fetchall()[0][0]
    store = tmp_path / "store.parquet"
    con.execute(f"COPY requests TO '{store}' (FORMAT parquet)")
    con.close()
    assert 0 < n_on < len(accounts)         # some creation days are bursts, not all
    got, _ = analyse_spark(spark, str(store), cfg, driver_max_edges=0)
    _assert_same_accounts(want, got)


def test_connected_components(spark):
    from distillguard.engines.spark import connected_components

    edges = spark.createDataFrame(
        [("d", "e"), ("c", "d"), ("a", "b"), ("b", "c"), ("x", "y"), ("y", "z"), ("p", "q")],
        "a string, b string")
    got = {r["account_id"]: r["component"] for r in connected_components(spark, edges).collect()}
    assert got == {**dict.fromkeys("abcde", "a"), **dict.fromkeys("xyz", "x"), "p": "p", "q": "p"}


def test_sql_compile_rewrites():
    sql = to_spark("SELECT avg(CASE WHEN x THEN 1.0 ELSE 0.0 END), w[1:3], w[-2:], "
                   "epoch(ts), date_diff('day', a, b) FROM requests",
                   {"requests": "dgx_requests"})
    assert "AVG(CAST(" in sql and "AS DOUBLE)" in sql
    assert "SLICE(w, 1, 3)" in sql and "SLICE(w, GREATEST(SIZE(w) - 1, 1), 2)" in sql
    assert "UNIX_MICROS(CAST(ts AS TIMESTAMP)) / 1e6" in sql
    assert "DATEDIFF(CAST(b AS DATE), CAST(a AS DATE))" in sql
    assert "dgx_requests" in sql
    with pytest.raises(ValueError):
        to_spark("SELECT hash(x) FROM t")


def test_spark_sql_matches_duckdb_on_edge_values(spark):
    """Rewritten constructs give DuckDB's values on edge cases (short lists, day boundaries,
    fractional seconds, Unicode case folding)."""
    import duckdb

    q = ("SELECT array_to_string(words[-3:], ' ') AS t, array_to_string(words[1:2], ' ') AS h, "
         "date_diff('day', a, b) AS d, epoch(b) - epoch(a) AS g, "
         "regexp_matches(s, '(?i)évaluation') AS m FROM v")
    rows = [(["x"], "2026-01-01 23:59:59.5", "2026-01-02 00:00:00.25", "ÉVALUATION"),
            (["a", "b", "c", "d"], "2026-01-01 00:00:00", "2026-01-03 23:00:00", "no")]
    con = duckdb.connect()
    con.execute("CREATE TABLE v (words VARCHAR[], a TIMESTAMP, b TIMESTAMP, s VARCHAR)")
    con.executemany("INSERT INTO v VALUES (?, ?, ?, ?)", rows)
    want = con.sql(q).fetchall()
    tz = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    try:
        df = spark.createDataFrame(
            [(w, datetime.fromisoformat(a), datetime.fromisoformat(b), s) for w, a, b, s in rows],
            "words array<string>, a timestamp_ntz, b timestamp_ntz, s string")
        df.createOrReplaceTempView("v")
        got = [tuple(r) for r in spark.sql(to_spark(q)).collect()]
    finally:
        spark.conf.set("spark.sql.session.timeZone", tz)
    assert [(t, h, d, m) for t, h, d, _, m in got] == [(t, h, d, m) for t, h, d, _, m in want]
    for (*_, g1, _m1), (*_, g2, _m2) in zip(got, want, strict=True):
        assert abs(g1 - g2) < 1e-9


def test_rejected_rows_are_reported(spark, tmp_path):
    from distillguard.engines.spark import read_input

    p = tmp_path / "bad.jsonl"
    p.write_text('{"request_id": "x1", "ts": "2026-01-01T00:00:00Z", "account_id": "a", '
                 '"model": "m", "prompt": "hi"}\n{not json\n'
                 '{"request_id": "x2", "account_id": "a", "model": "m", "prompt": "no ts"}\n',
                 encoding="utf-8")
    inp = read_input(spark, p, fmt="canonical")
    assert inp.requests.count() == 1
    reasons = sorted(r["reason"] for r in inp.rejected.collect())
    assert len(reasons) == 2 and any("malformed JSON" in r for r in reasons)
    assert any("ts is missing" in r for r in reasons)


def test_generator_is_deterministic():
    assert generate(3) == generate(3)
