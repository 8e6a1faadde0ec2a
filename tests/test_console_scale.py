"""The queue stays fast on a large store: it reads the per-account index, never ``requests``.

The store is synthetic (built in SQL with the tables detection writes): 25,000 accounts,
5% flagged: 250 campaigns of 4 accounts and 250 accounts in none. CI builds it with 400,000 requests; set
``DISTILLGUARD_CONSOLE_SCALE_REQUESTS=16000000`` for the figure in docs/console.md.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("argon2")
from fastapi.testclient import TestClient  # noqa: E402
from test_console import login, make_app  # noqa: E402

ACCOUNTS = 25_000
REQUESTS = int(os.environ.get("DISTILLGUARD_CONSOLE_SCALE_REQUESTS", "400000"))


def build_synthetic_store(path: Path, n_accounts: int, n_requests: int) -> None:
    """requests, signals, scores, edges like a detection run's (values are synthetic)."""
    from distillguard.store import connect

    con = connect(path)
    try:
        con.execute(f"""
            INSERT INTO requests (request_id, ts, account_id, model, prompt, org_id,
                                  api_key_id, ip, user_agent, payment_fingerprint, country,
                                  input_tokens, output_tokens)
            SELECT 'req_' || i, TIMESTAMP '2026-03-02' + to_microseconds(
                     CAST(i * (7 * 86400e6 / {n_requests}) AS BIGINT)),
                   printf('acct_%06d', a), 'model-' || (i % 3),
                   'prompt number ' || i || ' for account ' || a,
                   'org-' || (a % 5000), 'key_' || a,
                   (a % 200) || '.' || (a % 97) || '.' || (i % 13) || '.' || (i % 250),
                   CASE WHEN a % 7 = 0 THEN 'python-httpx/0.27' ELSE 'OpenAI/Python 1.45' END,
                   'pf' || (a % 9000), ['US', 'DE', 'FR', 'JP', 'BR'][1 + a % 5],
                   100 + i % 50, 400 + i % 300
            FROM (SELECT i, CAST(hash(i) % {n_accounts} AS BIGINT) AS a
                  FROM range({n_requests}) t(i))""")
        con.execute("""
            CREATE TABLE signals AS SELECT request_id, account_id, ts, model,
                   ['coding', 'math', 'reasoning', 'chat'][1 + CAST(hash(request_id) % 4 AS BIGINT)]
                     AS capability, hash(request_id) % 5 = 0 AS cot_elicit,
                   false AS rubric_grading, false AS censorship_safe, NULL::VARCHAR AS skeleton,
                   NULL::VARCHAR AS template_id, 0::BIGINT AS template_size,
                   0.1::DOUBLE AS elicit_p
            FROM requests""")
        con.execute(f"""
            CREATE TABLE scores AS
            SELECT printf('acct_%06d', a) AS account_id,
                   CASE WHEN a < {n_accounts // 20} THEN 0.6 + (a % 40) / 100.0
                        ELSE (a % 1000) / 2500.0 END AS score,
                   a < {n_accounts // 20} AS flagged,
                   CASE WHEN a < {n_accounts // 20} - 250
                        THEN printf('cmp-%04d', a // 4) END AS campaign_id,
                   0.0 AS raw, (a % 1000) / 100.0 AS final_raw,
                   'synthetic reason' AS reasons
            FROM range({n_accounts}) t(a)""")
        con.execute("""
            CREATE TABLE edges AS
            SELECT s1.account_id AS a, s2.account_id AS b, 1.5 AS weight,
                   'ip_prefix,payment' AS kinds, 'shared /24' AS evidence, 2 AS channels
            FROM scores s1 JOIN scores s2 ON s1.campaign_id = s2.campaign_id
             AND s1.account_id < s2.account_id""")
    finally:
        con.close()


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("console-scale") / "big.duckdb"
    t0 = time.perf_counter()
    build_synthetic_store(p, ACCOUNTS, REQUESTS)
    print(f"\nsynthetic store: {ACCOUNTS:,} accounts, {REQUESTS:,} requests, "
          f"built in {time.perf_counter() - t0:.1f} s")
    return p


def _timed(c: TestClient, url: str, **params: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = c.get(url, params=params)
    dt = time.perf_counter() - t0
    assert r.status_code == 200, r.text[:300]
    return r.text, dt


def test_queue_pages_stay_fast_on_a_large_store(big_store: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    app = make_app(big_store, tmp_path)      # builds the per-account index once
    t_index = time.perf_counter() - t0
    with TestClient(app) as c:
        login(c, "vic")
        times = {}
        text, times["queue p1"] = _timed(c, "/")
        # 250 campaigns + 250 flagged accounts in none: 500 items, 20 pages of 25
        assert "500 item(s)" in text and "page 1 of 20" in text
        _, times["queue p20"] = _timed(c, "/", page="20")
        text, times["queue search ip"] = _timed(c, "/", q="17.17.")
        assert re.search(r"\d+ item\(s\)", text)
        _, times["queue filter"] = _timed(c, "/", model="model-1", country="DE", state="open")
        cid = re.search(r'href="/campaign\?id=([^"]+)"', c.get("/").text).group(1)
        _, times["campaign page"] = _timed(c, "/campaign", id=cid)
        _, times["account page"] = _timed(c, "/account", id="acct_000001")
    print(f"index build {t_index:.2f} s; " + "; ".join(f"{k} {v * 1000:.0f} ms"
                                                         for k, v in times.items()))
    for k in ("queue p1", "queue p20", "queue search ip", "queue filter"):
        assert times[k] < 2.0, (k, times[k])
