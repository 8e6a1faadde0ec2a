"""``detect --engine spark`` writes the DuckDB engine's report.html and uses imported partner
indicators as the DuckDB engine does.

One run of each engine (``api.detect`` / ``api.detect_spark``) on the generated input of
test_spark_parity, with an attacker-chosen account id and prompt (HTML), an email in ``extra``,
and a partner bundle (account HMACs, an email, a payment fingerprint, an IP prefix, a prompt
template) imported into the DuckDB store both runs are given. PySpark in local mode; skipped
without pyspark or Java.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("pyspark")
pytest.importorskip("stix2")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("the Spark engine tests need Java", allow_module_level=True)

from test_spark_parity import generate  # noqa: E402

from distillguard import api  # noqa: E402
from distillguard.config import load_config  # noqa: E402
from distillguard.ingest import ingest_files  # noqa: E402
from distillguard.intel import export_bundle, import_bundle  # noqa: E402
from distillguard.signals import compute_signals  # noqa: E402
from distillguard.store import connect  # noqa: E402

KEY = b"test-sharing-group-key-0123456789"
EVIL = 'hydra-a-0"><script>alert(1)</script>'
EVIL_PROMPT = ("Solve the following problem step by step and show your complete chain of "
               "thought <script>alert(2)</script><img src=x onerror=alert(3)>")
EMAIL = "Victim.Shared@provider.example"
CONF = {"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "4",
        "spark.ui.enabled": "false", "spark.sql.session.timeZone": "America/New_York"}


def _records() -> list[dict]:
    recs = generate(frameworks=True)
    for r in recs:
        if r["account_id"] == "hydra-a-0":
            r["account_id"] = EVIL
        if r["account_id"] == "user-05":
            r["email"] = EMAIL             # unknown field: kept in ``extra``
    t = datetime(2026, 3, 3, 5, 0, 0)
    recs.append({"request_id": "evil-1", "ts": t.isoformat() + "Z", "account_id": EVIL,
                 "model": "m-next", "prompt": EVIL_PROMPT, "ip": "203.0.113.9",
                 "payment_fingerprint": "pm_card_7731"})
    recs.append({"request_id": "evil-2", "ts": (t + timedelta(minutes=3)).isoformat() + "Z",
                 "account_id": "user-07", "model": "<b>m</b>", "prompt": "hi <i>there</i>"})
    return recs


def _bundle(path: Path) -> str:
    """A partner's campaign whose indicators hit some local accounts."""
    cfg = load_config()
    con = connect(None)
    ingest_files([path], con, limits=cfg["ingest"])
    compute_signals(con, cfg)
    (skeleton,) = con.execute("SELECT skeleton FROM signals WHERE account_id = 'hydra-b-1' "
                              "AND skeleton IS NOT NULL ORDER BY request_id LIMIT 1").fetchone()
    con.close()
    camp = {
        "campaign_id": "p-1", "score": 0.8, "accounts": ["user-03", "user-11", "elsewhere-9"],
        "n_accounts": 3, "requests": 40, "first_seen": "2026-02-01T00:00:00Z",
        "last_seen": "2026-02-10T00:00:00Z", "capabilities": {"reasoning": 1.0},
        "indicators": {"ip_prefixes": ["203.0.113.0/24"], "user_agents": [],
                       "payment_fingerprints": ["pm_card_7731"], "emails": [EMAIL.lower()],
                       "orgs": [], "templates": [{"template_id": "t1", "skeleton": skeleton,
                                                  "requests": 40}]},
        "example_prompts": [], "reasons": [],
    }
    return export_bundle([camp], None, KEY, "Partner Labs").serialize()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("spark_report")
    path = d / "requests.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in _records():
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    db = d / "store.duckdb"
    con = connect(db)
    summary = import_bundle(_bundle(path), con, "Partner Labs", 80)
    con.close()
    cfg = load_config()     # once: both engines must score with the same config
    random.seed(5)
    duck = api.detect([path], d / "duck", db=db, intel_key=KEY, config=cfg)
    t0 = time.perf_counter()
    random.seed(5)
    spark = api.detect_spark([path], d / "spark", master="local[2]", conf=CONF, db=db,
                             intel_key=KEY, config=cfg)
    print(f"detect_spark: {time.perf_counter() - t0:.1f}s", spark.timings)
    return {"duck": duck, "spark": spark, "bundle": summary, "path": path, "db": db,
            "cfg": cfg}


def _html(res: api.DetectResult) -> str:
    return (res.out_dir / "report.html").read_text(encoding="utf-8")


def _figures(page: str) -> dict[str, str]:
    return dict(re.findall(r'<span class="k">([^<]*)</span><span class="v">([^<]*)</span>', page))


def _campaign_ids(page: str) -> list[str]:
    sec = page[page.index('<section id="campaigns">'):]
    sec = sec[:sec.index("</section>")]
    return re.findall(r'<a href="#c\d+">([^<]*)</a>', sec)


def test_partner_indicators_hit(runs):
    """The bundle matches accounts (so the parity below covers the partner features)."""
    assert set(runs["bundle"].by_kind) >= {"account_hmac", "ip_prefix", "payment_hmac",
                                           "template_minhash"}
    acc = runs["duck"].accounts
    hit = acc.filter(pl.col("reasons").str.contains("Partner Labs"))["account_id"].to_list()
    assert "user-03" in hit and "user-05" in hit and EVIL in hit
    assert any(a.startswith("hydra-b-") for a in hit)


def test_partner_accounts_parity(runs):
    """Same input + same imported indicators -> same accounts.csv; scores to 1e-9."""
    a = runs["duck"].accounts.sort("account_id")
    b = runs["spark"].accounts.sort("account_id")
    assert a["account_id"].to_list() == b["account_id"].to_list()
    for col in ("score", "raw", "final_raw"):
        assert (a[col] - b[col]).abs().max() <= 1e-9, col
    for col in ("flagged", "reasons"):
        assert a[col].to_list() == b[col].to_list(), col
    # The same rows; both files are sorted by score, and accounts with equal scores come in
    # no defined order (scoring's sort is not stable, on either engine).
    csv_a = (runs["duck"].out_dir / "accounts.csv").read_text(encoding="utf-8").splitlines()
    csv_b = (runs["spark"].out_dir / "accounts.csv").read_text(encoding="utf-8").splitlines()
    assert csv_a[0] == csv_b[0] and sorted(csv_a) == sorted(csv_b)
    for lines in (csv_a, csv_b):
        col = [float(x.split(",")[1]) for x in lines[1:]]
        assert col == sorted(col, reverse=True)


def test_report_key_figures(runs):
    duck, spark = _html(runs["duck"]), _html(runs["spark"])
    fd, fs = _figures(duck), _figures(spark)
    for k in ("Requests analysed", "Accounts", "Accounts flagged", "Campaigns"):
        assert fs[k] == fd[k], k
    assert fd["Requests analysed"] == f"{len(_records()) - 1:,}"  # one duplicate request id
    assert _campaign_ids(spark) == _campaign_ids(duck) and _campaign_ids(duck)


def test_report_sections_equal(runs):
    """Everything below the summary (campaign table, timeline, capability mix, link graph,
    score histogram, top accounts with request counts and first/last seen, campaign cards)
    is the same page. Except the skeleton shown per shared template: campaigns.json takes
    any one of the template's skeletons (``any_value`` in scoring.campaigns), on both
    engines, so which one depends on row order."""
    assert _sections(_html(runs["spark"])) == _sections(_html(runs["duck"]))


def _sections(page: str) -> str:
    skel = re.compile(r'(<td class="mono">t[0-9a-f]+</td><td class="mono">)[^<]*(</td>)')
    return skel.sub(r"\1\2", page[page.index('<section id="campaigns">'):])


def test_report_with_distributed_linking(runs, tmp_path):
    """Past the driver boundary the driver store has only the edges inside communities; the
    report's link graph gets the edges around campaign accounts from Spark instead."""
    from distillguard.engines.spark import run_spark, spark_session
    from distillguard.report import write_report

    spark = spark_session("local[2]", CONF)
    try:
        random.seed(5)
        cfg = runs["cfg"]
        run = run_spark(spark, str(runs["path"]), cfg, intel_key=KEY,
                        partner_indicators=runs["db"], report=True, driver_max_edges=0)
    finally:
        spark.stop()
    try:
        assert run.linking == "distributed" and run.report.edges != "edges"
        write_report(tmp_path / "report.html", run.store, run.campaigns,
                     {"threshold": float(cfg["scoring"]["threshold"])}, aggregates=run.report)
    finally:
        run.store.close()
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert _sections(page) == _sections(_html(runs["duck"]))


def test_report_escapes_attacker_text(runs):
    for page in (_html(runs["duck"]), _html(runs["spark"])):
        low = page.lower()
        assert "<script" not in low and "<img src=x" not in low and "<i>there" not in low
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_console_opens_the_spark_runs_store(runs, tmp_path):
    """detect --engine spark writes the driver's store beside its outputs; the analyst
    console opens it: the queue lists the same campaigns, a campaign page shows its
    members' requests."""
    pytest.importorskip("argon2")
    from fastapi.testclient import TestClient
    from test_console import login, make_app

    store = runs["spark"].out_dir / "store.duckdb"
    assert store.exists()
    db = tmp_path / "spark-store.duckdb"
    shutil.copy(store, db)           # the console adds its own tables; keep the run's file
    with TestClient(make_app(db, tmp_path)) as c:
        login(c, "ana")
        queue = c.get("/").text
        ids = set(re.findall(r'href="/campaign\?id=([^"&]+)"', queue))
        assert ids and ids <= {x["campaign_id"] for x in runs["spark"].campaigns}
        cid = sorted(ids)[0]
        page = c.get("/campaign", params={"id": cid})
        assert page.status_code == 200
        members = [m for m, v in zip(runs["spark"].accounts["account_id"],
                                     runs["spark"].accounts["campaign_id"], strict=True)
                   if v == cid]
        con = connect(store)
        (prompt,) = con.execute("SELECT prompt FROM requests WHERE account_id = ? "
                                "ORDER BY ts LIMIT 1", [members[0]]).fetchone()
        con.close()
        acc = c.get("/account", params={"id": members[0]})
        assert acc.status_code == 200 and "<script>alert" not in acc.text
        assert html.escape(prompt[:40], quote=False) in acc.text
