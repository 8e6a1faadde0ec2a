"""Online (gateway/replay) and batch verdicts on the same traffic agree.

The comparison a deployment relies on: after the same traffic, with the latest batch run's
context loaded into the online scorer (``replay --batch RESULTS``: its ``groups.parquet``
for group evidence, ``calibration.json`` for the threshold, ``campaigns.json`` for
membership), each account's END-of-stream online score and flag against the batch score
and flag. Every account's flag must agree, and scores within a stated tolerance:

- ``RAW_TOL`` on the raw evidence sums (own ``raw`` and ``final_raw`` with group items):
  the only approximation left that moves them on these scenarios is the median
  output/input ratio, read online from a histogram of log-ratios with 2 % bins (median
  within ~1 %): at most 0.01 x 8 x w / 6 on the long_outputs ramp (2 → 8; w = 0.62 fitted
  in config 2026.12.1: ≈ 0.008). Group items read the batch run's own group row, so they are
  exact. Measured: 0.0065 (tiny/3), 0.0044 (tiny/11).
- ``SCORE_TOL`` on the calibrated score: the logistic's slope is at most 1 / (4 x raw_scale)
  (≈ 0.25 with the fitted scale ≈ 1), so ≈ 0.002. Measured: 0.0012 (tiny/3), 0.0003 (tiny/11).

Mid-stream threshold crossings of accounts that end below it (transient alerts: the online
scorer decides on each account's traffic so far) are a separate metric, pinned below, not a
disagreement.

The comparison runs at ``scoring.online_margin`` 0: the shipped margin makes the online scorer
ask for more evidence than batch on purpose (it looks after every request), tested apart.
"""

from __future__ import annotations

import math
from datetime import datetime

import orjson
import polars as pl
import pytest

from distillguard import api
from distillguard.config import load_config
from distillguard.ingest import ingest_files
from distillguard.respond.online import (
    OnlineScorer,
    RequestView,
    compile_evidence,
    ip_prefix,
    replay,
    system_key,
)
from distillguard.scoring.fit import online_margin_for, with_overlay
from distillguard.signals import compute_signals, enable_incremental
from distillguard.sim import simulate
from distillguard.store import connect

RAW_TOL = 0.01
SCORE_TOL = 0.005
#: (scenario, seed) → accounts whose online score crossed the threshold mid-stream but ended
#: below it, as measured when written, by label (see the module docstring).
#: Config 2026.12.7: in each, one low-and-slow campaign account (aged accounts) alerted
#: online and ending just under the batch threshold. Config 2026.12.10 (the min-families
#: elicitation model): the tiny-11 one ends flagged (0.524, peak 0.718), none transient.
#: Config 2026.12.13 (elicit_soft): the tiny-3 one ends flagged too (0.696, peak 0.803), as
#: do the other three low-and-slow accounts of that world.
TRANSIENT: dict[tuple[str, int], list[str]] = {("tiny", 3): [],
                                               ("tiny", 11): []}


NO_MARGIN = with_overlay(load_config(), {"scoring": {"online_margin": 0.0}})


@pytest.fixture(scope="module", params=sorted(TRANSIENT), ids=lambda p: f"{p[0]}-{p[1]}")
def run(request, tmp_path_factory):
    scenario, seed = request.param
    tmp = tmp_path_factory.mktemp(f"{scenario}{seed}")
    sim = simulate(tmp / "traffic", scenario=scenario, seed=seed)
    batch = api.detect(sim.logs, tmp / "results", db=None)
    summary = replay(sim.logs, tmp / "replay", groups=tmp / "results", config=NO_MARGIN,
                     campaigns=tmp / "results" / "campaigns.json", excess_records=True)
    online = pl.read_csv(tmp / "replay" / "online_accounts.csv",
                         schema_overrides={"campaign_id": pl.Utf8})
    both = batch.accounts.join(
        online.select("account_id", pl.col("score").alias("o_score"),
                      pl.col("flagged").alias("o_flagged"), pl.col("raw").alias("o_raw"),
                      pl.col("final_raw").alias("o_final_raw"),
                      pl.col("campaign_id").alias("o_campaign"), "peak_score"),
        on="account_id", how="full", coalesce=True)
    labels = pl.read_csv(sim.labels, infer_schema_length=0)
    return request.param, both, summary, labels, tmp, sim


def test_end_of_stream_flags_and_scores_agree(run):
    _, both, summary, _, tmp, _ = run
    assert both["o_score"].null_count() == 0 and both["score"].null_count() == 0
    differ = both.filter(pl.col("flagged") != pl.col("o_flagged"))
    assert differ.is_empty(), differ
    assert summary["flagged"] == int(both["flagged"].sum())
    assert summary["skipped_evidence"] == []
    d_raw = (both["o_raw"] - both["raw"]).abs()
    d_final = (both["o_final_raw"] - both["final_raw"]).abs()
    d_score = (both["o_score"] - both["score"]).abs()
    assert d_raw.max() <= RAW_TOL, both.with_columns(d=d_raw).sort("d").tail(3)
    assert d_final.max() <= RAW_TOL, both.with_columns(d=d_final).sort("d").tail(3)
    assert d_score.max() <= SCORE_TOL, both.with_columns(d=d_score).sort("d").tail(3)
    # Batch campaign membership is what the online scorer carries.
    assert (both["campaign_id"].fill_null("") == both["o_campaign"].fill_null("")).all()
    # The batch run's calibration is the one used online.
    cal = orjson.loads((tmp / "results" / "calibration.json").read_bytes())
    assert summary["calibration"]["raw_threshold"] == cal["raw_threshold"]


def test_group_context_is_what_online_needs_from_batch(run):
    """Group evidence moves scores; without the batch context only group evidence and the
    batch run's calibration are missing (own evidence is the same)."""
    _, both, summary, _, _, _ = run
    assert summary["group_accounts_loaded"] > 0
    grouped = both.filter(pl.col("final_raw") - pl.col("raw") > 0.05)
    assert grouped.height > 0
    bare = OnlineScorer()
    own = bare.calibrator.transform(both["o_raw"].to_numpy())
    # own evidence alone, shipped calibration: whatever differs has group evidence or sits
    # where the batch run's threshold moved
    differ = both.filter(pl.Series(own >= 0.5) != pl.col("flagged"))
    assert ((differ["final_raw"] - differ["raw"]).abs() > 1e-9).all() or \
        bare.calibrator.raw_threshold_ != float(both["final_raw"].max())


def test_transient_alerts_are_separate_and_pinned(run):
    key, both, summary, labels, tmp, _ = run
    transient = both.filter((pl.col("peak_score") >= 0.5) & ~pl.col("o_flagged"))
    assert transient.height == summary["transient"] == len(TRANSIENT[key]), transient
    kinds = transient.join(labels, on="account_id")["label"].to_list()
    assert sorted(kinds) == TRANSIENT[key], kinds
    # Every flagged account was alerted during the stream (first alert = time to detection).
    alerted = {orjson.loads(x)["account_id"]
               for x in (tmp / "replay" / "alerts.jsonl").read_bytes().splitlines()}
    assert set(both.filter(pl.col("o_flagged"))["account_id"]) <= alerted
    hydra = both.join(labels, on="account_id").filter(pl.col("kind") == "reasoning_hydra")
    assert hydra["o_flagged"].all() and hydra["flagged"].all()


def test_online_features_equal_batch_features(run):
    """Feature by feature at the end of the stream (exact ones exactly)."""
    _, _, _, _, _, sim = run
    cfg = load_config()
    con = connect(None)
    ingest_files(sim.logs, con, limits=cfg["ingest"])
    api.analyse(con, cfg)
    feats = con.sql("SELECT * FROM features").pl()
    sc = OnlineScorer(config=cfg)
    sc._trk_day = sc._trk_hr = sc._trk_ip = sc._trk_key = sc._trk_cap = True
    sc._untracked = {"ip_accounts_median"}
    from distillguard.respond.online import iter_store_rows
    from distillguard.respond.state import AccountUpdate

    for r in iter_store_rows(con, cfg=cfg, elicit=True):
        sc.observe(RequestView(r["account_id"], r["model"], r["t"], r["prompt"] or "",
                               r["system"] or "", r["n_user_turns"] or 0,
                               r["context_chars"] or 0, r["n_tools"] or 0,
                               r["reasoning_effort"], r["created"], r["signup_channel"],
                               r["ip"], r["payment_fingerprint"], r["api_key_id"]),
                   elicit_p=r["elicit_p"])
        sc.observe_response(r["account_id"], r["input_tokens"], r["output_tokens"], r["t"])
    con.close()
    exact = ("n_requests", "novelty", "rerun_share", "single_turn_share", "followup_share",
             "tools_share", "cot_rate", "rubric_rate", "censor_rate", "elicit_model_rate",
             "n_elicit", "n_elicit_model", "focus_rate", "high_effort_share", "hour_entropy",
             "pivot_share", "pivot_window_requests", "account_age_days", "created_day",
             "nonstandard_signup", "mean_output_tokens", "n_prefixes", "card_accounts",
             "system_accounts", "active_days", "req_per_active_hour", "n_ips", "n_api_keys",
             "capability_top_share")
    # (the optional ones, kept only when an item reads them, are all tracked above)
    for row in feats.iter_rows(named=True):
        st = sc.state.update(row["account_id"], AccountUpdate(ts=0, cross_max=("card", "sys")))
        f = sc.features(st, row["account_id"])
        for k in exact:
            b, o = row[k], f[k]
            assert (b is None) == (o is None), (row["account_id"], k, b, o)
            if b is not None:
                assert float(o) == pytest.approx(float(b), abs=1e-9), (row["account_id"], k)
        if row["out_in_ratio"] is not None:
            assert f["out_in_ratio"] == pytest.approx(row["out_in_ratio"], rel=0.011)
        # causal: an address's accounts as seen so far, never more than batch's
        assert f["shared_ip_share"] <= row["shared_ip_share"] + 1e-9


def test_incremental_signals_equal_full(run):
    """Signals computed in three growing runs (only new requests each time) equal one full
    run, template ids included."""
    _, _, _, _, _, sim = run
    cfg = load_config()
    full = connect(None)
    ingest_files(sim.logs, full, limits=cfg["ingest"])
    compute_signals(full, cfg)
    want = full.sql("SELECT * FROM signals ORDER BY request_id").pl()
    rows = full.sql("SELECT * FROM requests ORDER BY ts, request_id").to_arrow_table()
    inc = connect(None)
    enable_incremental(inc)
    cuts = [0, rows.num_rows // 3, 2 * rows.num_rows // 3, rows.num_rows]
    hints = want.select("request_id", "elicit_p")
    for j, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        inc.register("_part", rows.slice(a, b - a))
        inc.execute("INSERT INTO requests SELECT * FROM _part")
        inc.unregister("_part")
        if j == 1:      # elicit_p already known for half the new requests (replay's hints)
            part = rows.slice(a, b - a).column("request_id").to_pylist()[::2]
            inc.register("_h", hints.filter(pl.col("request_id").is_in(part)).to_arrow())
            inc.execute("CREATE TABLE _signals_elicit_hint AS SELECT * FROM _h")
            inc.unregister("_h")
        assert compute_signals(inc, cfg) == b - a          # only the new requests
    assert inc.execute("SELECT count(*) FROM _signals_elicit_hint").fetchall() == [(0,)]
    got = inc.sql("SELECT * FROM signals ORDER BY request_id").pl()
    assert got.columns == want.columns
    assert got.equals(want)
    full.close()
    inc.close()


def test_replay_with_batch_refresh(run, tmp_path):
    """Every 24 h of stream time the batch pipeline re-runs on the traffic so far and the
    scorer loads its groups, calibration and campaigns."""
    _, _, _, _, _, sim = run
    summary = replay(sim.logs, tmp_path / "r", refresh_hours=24)
    ref = summary["refresh"]
    assert ref["runs"] >= 2 and ref["hours"] == 24
    runs = ref["each"]
    assert [r["requests"] for r in runs] == sorted(r["requests"] for r in runs)
    assert runs[-1]["requests"] < summary["requests"]
    assert sum(r["new_requests"] for r in runs) == runs[-1]["requests"]
    assert summary["group_accounts_loaded"] > 0 and summary["calibration"] is not None


def test_peak_excess_is_what_the_margin_is_fitted_on(run):
    """``peak_excess`` is the largest raw evidence over the threshold an account showed at
    any request: an account's peak score reaches the threshold iff its excess is >= 0, and
    a margin just above the excess silences it."""
    _, both, _, labels, tmp, _ = run
    acc = pl.read_csv(tmp / "replay" / "online_accounts.csv")
    crossed = acc["peak_score"] >= 0.5
    assert ((acc["peak_excess"] >= -1e-6) == crossed).all()
    cal = orjson.loads((tmp / "results" / "calibration.json").read_bytes())
    assert (acc["peak_excess"] >= acc["final_raw"] - cal["raw_threshold"] - 1e-6).all()
    legit = acc.join(labels.filter(pl.col("label") != "distill").select("account_id"),
                     on="account_id")["peak_excess"]
    m = online_margin_for(legit.to_numpy(), 0.0)
    assert (legit < m).all() and m >= 0.0


def test_excess_records_say_when_each_margin_would_alert(run):
    """``excess_records``: an account's rows are its new highs of raw evidence over the
    threshold, in time order; the last is its peak excess during the stream, and the first
    at or above 0 is the request at which it first reached the threshold (the first alert
    at a score of 0.5 or more in ``alerts.jsonl``): at margin m, the first row >= m."""
    _, _, _, _, tmp, _ = run
    rec = pl.read_parquet(tmp / "replay" / "excess_records.parquet")
    acc = pl.read_csv(tmp / "replay" / "online_accounts.csv")
    assert set(rec["account_id"]) == set(acc["account_id"])
    steps = rec.group_by("account_id", maintain_order=True).agg(
        (pl.col("ts").diff() >= 0).all().alias("ts_up"),
        (pl.col("excess").diff() > 0).all().alias("ex_up"), pl.col("excess").max())
    assert steps["ts_up"].all() and steps["ex_up"].all()
    peak = steps.join(acc.select("account_id", "peak_excess"), on="account_id")
    assert (peak["excess"] <= peak["peak_excess"] + 1e-6).all()
    first = {}
    for line in (tmp / "replay" / "alerts.jsonl").read_bytes().splitlines():
        a = orjson.loads(line)
        if a["score"] >= 0.5 and a["account_id"] not in first:
            first[a["account_id"]] = a["ts"]
    crossed = (rec.filter(pl.col("excess") >= 0).group_by("account_id").agg(pl.col("ts").min()))
    assert crossed.height == len(first) > 0
    for acct, ts in crossed.iter_rows():
        got = first[acct].replace("Z", "+00:00")
        assert abs(datetime.fromisoformat(got).timestamp() - ts) < 1e-3, acct


def test_online_margin_asks_for_more_evidence() -> None:
    base, marg = OnlineScorer(config=NO_MARGIN), OnlineScorer(config=with_overlay(
        load_config(), {"scoring": {"online_margin": 1.5}}))
    for sc in (base, marg):
        for i in range(30):
            sc.observe(RequestView("a", "m1", 1.7e9 + 60 * i,
                                   f"Solve {i} + {i}. Think step by step and show your "
                                   "full reasoning before the answer."), elicit_p=0.0)
    a, b = base.account_score("a", 1.7e9 + 3600), marg.account_score("a", 1.7e9 + 3600)
    assert a.final_raw == b.final_raw
    cal = base.calibrator
    assert a.score == pytest.approx(cal.transform([a.final_raw])[0])
    assert b.score == pytest.approx(cal.transform([a.final_raw - 1.5])[0]) and b.score < a.score


def test_online_margin_for() -> None:
    assert online_margin_for([-2.0, -1.0, 0.3, 0.8], 0.25) == 0.31   # one of four may alert
    assert online_margin_for([-2.0, -1.0, 0.3, 0.8], 0.0) == 0.81
    assert online_margin_for([-2.0, -1.0], 0.0) == 0.0                 # never below 0
    assert online_margin_for([], 0.01) == 0.0


def test_group_item_contributes_after_load_groups() -> None:
    sc = OnlineScorer()
    for i in range(40):
        sc.observe(RequestView("a", "m1", 1.7e9 + 60 * i, f"Summarise note {i}"),
                   elicit_p=0.0)
        sc.observe(RequestView("b", "m1", 1.7e9 + 60 * i, f"Summarise note {i}"),
                   elicit_p=0.0)
    before = sc.account_score("a", 1.7e9 + 3600)
    assert before.evidence["g_coordination"] == 0.0 and before.final_raw == before.raw
    row = {"community": 3, "g_attach": 1.0, "g_ties": 12, "g_size": 40.0, "g_requests": 4000.0,
           "g_coordination": 1.5, "g_coord_own": 1.5, "g_single_turn_share": 1.0,
           "g_novelty": 1.0,
           "g_focus_rate": 0.9, "g_cot_rate": 0.3, "g_rubric_rate": 0.0,
           "g_censor_rate": 0.0, "g_elicit_model_rate": 0.2, "g_age_days": 2.0,
           "g_signup": 1.0, "g_pivot_share": 0.0, "g_cover_org": 0.0}
    assert sc.load_groups(pl.DataFrame([{"account_id": "a", **row}])) == 1
    after = sc.account_score("a", 1.7e9 + 3600)
    from distillguard.scoring.evidence import item_weight

    items = {it["name"]: it for it in sc.cfg["scoring"]["evidence"]}
    w = item_weight(sc.cfg, items["g_coordination"])
    assert after.evidence["g_coordination"] == pytest.approx(w)          # ramp 1, damp 1
    assert after.final_raw == pytest.approx(after.raw + sum(
        v for k, v in after.evidence.items() if items[k].get("group")))
    assert after.final_raw > after.raw + 1.0
    # own items read the group too: the human-rhythm discount fades inside a coordinated group
    assert after.raw >= before.raw
    assert after.score > before.score
    assert any("group of 40 accounts" in r for r in after.reasons)
    other = sc.account_score("b", 1.7e9 + 3600)                       # not in the context
    assert other.final_raw == other.raw


def test_expressions_follow_sql_null_semantics() -> None:
    items = [{"name": n, "expr": e, "lo": 0.0, "hi": 1.0, "weight": 1.0, "show": "n_requests",
              "reason": "{}"} for n, e in [
        ("c", "coalesce(g_coordination, 0.5)"),
        ("l", "least(g_coordination, 0.25)"),        # NULLs skipped, as in DuckDB
        ("n", "g_coordination * 2"),                 # NULL operand: NULL → contributes 0
        ("m", "mean_output_tokens / 100.0"),         # NULL before any response
        ("z", "n_requests / (n_requests - n_requests)"),   # x / 0 = inf (DuckDB doubles)
        ("q", "abs(-0.5) + ln(1) + nullif(n_requests, n_requests)"),
    ]]
    ev = compile_evidence(items, [1.0] * len(items), 20, 5)
    st = {"n": 40, "distinct": 40}
    contrib, raw, final = ev.fn(st, None)
    assert contrib == (0.5, 0.25, 0.0, 0.0, 1.0, 0.0)
    contrib, _, _ = ev.fn({**st, "lr_n": 2, "out_sum": 100}, None)
    assert contrib[3] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        compile_evidence([{**items[0], "expr": "__import__('os')"}], [1.0], 20, 5)


def test_request_keys_follow_the_batch_sql() -> None:
    assert ip_prefix("10.1.2.3") == "10.1.2.0/24"
    assert ip_prefix("10.1.2.3", 16) == "10.1.2.3/32"
    assert ip_prefix("2001:DB8:AB:1::5") == "2001:db8:ab::/48"
    assert ip_prefix("proxy-7") == "proxy-7" and ip_prefix(None) is None
    import duckdb

    from distillguard.features.defs import SYSTEM_KEY_SQL, ip_prefix_sql

    cfg = load_config()
    con = duckdb.connect()
    for ip in ("10.1.2.3", "2001:DB8:AB:1::5", "proxy-7", "1.2.3.4\n"):
        assert con.execute(f"SELECT {ip_prefix_sql(cfg, 'ip')} FROM (SELECT ? AS ip)",
                           [ip]).fetchone()[0] == ip_prefix(ip)
    for text in ("You are  a\thelpful\n\nassistant.", "X" * 2500 + " tail"):
        assert con.execute(f"SELECT {SYSTEM_KEY_SQL} FROM (SELECT ? AS system)",
                           [text]).fetchone()[0] == system_key(text)
    assert system_key("") is None
    assert math.isfinite(OnlineScorer().account_score("nobody", 1.0).score)


def test_replay_cli_loads_batch_context(tmp_path):
    """``replay --batch RESULTS``: groups, calibration and campaigns of a detect run."""
    from typer.testing import CliRunner

    from distillguard.respond.cli import app

    recs = []
    for i in range(6):
        recs.append({"request_id": f"q{i}", "ts": f"2026-01-01T0{i}:00:00Z",
                     "account_id": "quiet", "model": "m1", "prompt": f"note {i}",
                     "input_tokens": 10, "output_tokens": 400, "ip": "10.0.0.1"})
        recs.append({"request_id": f"c{i}", "ts": f"2026-01-01T0{i}:30:00Z",
                     "account_id": "chatty", "model": "m1", "ip": "10.0.0.1",
                     "messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": f"card ideas {i}"}],
                     "input_tokens": 30, "output_tokens": 60})
    logs = tmp_path / "logs.jsonl"
    logs.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    res = tmp_path / "results"
    res.mkdir()
    (res / "campaigns.json").write_bytes(orjson.dumps([{"campaign_id": "cmp-x", "score": 0.93,
                                                        "accounts": ["quiet", "chatty"]}]))
    pl.DataFrame([{"account_id": "quiet", "community": 0, "g_attach": 1.0, "g_ties": 8,
                   "g_size": 30.0,
                   "g_requests": 3000.0, "g_coordination": 2.0,
                   "g_coord_own": 2.0}]).write_parquet(
        res / "groups.parquet")
    (res / "calibration.json").write_bytes(orjson.dumps(
        {"method": "self", "raw_threshold": 1.5, "raw_scale": 0.5, "promised_fpr": 0.001}))
    r = CliRunner().invoke(app, ["replay", str(logs), "--out", str(tmp_path / "o"),
                                 "--batch", str(res)])
    assert r.exit_code == 0, r.output
    out = orjson.loads(r.output)
    assert out["campaigns_loaded"] == 1 and out["group_accounts_loaded"] == 1
    assert out["calibration"]["raw_threshold"] == 1.5
    rows = {x["account_id"]: x for x in pl.read_csv(tmp_path / "o" / "online_accounts.csv")
            .iter_rows(named=True)}
    q, c = rows["quiet"], rows["chatty"]
    assert q["final_raw"] > q["raw"]                       # group evidence
    assert q["reasons"].startswith("member of campaign cmp-x")
    assert c["final_raw"] == c["raw"] and c["campaign_id"] == "cmp-x"
    bad = tmp_path / "bad"
    bad.mkdir()
    r = CliRunner().invoke(app, ["replay", str(logs), "--out", str(tmp_path / "o2"),
                                 "--batch", str(bad)])
    assert r.exit_code == 2 and "groups.parquet" in r.output
    r = CliRunner().invoke(app, ["replay", str(logs), "--out", str(tmp_path / "o3"),
                                 "--refresh-hours", "2"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.output)["refresh"]["runs"] == 2


def test_support_damps_by_matches_in_batch_and_online() -> None:
    """An item with ``support`` is damped by that count (matched distinct prompts over
    ``min_support``), not by the account's requests, and online compiles the same."""
    import duckdb

    from distillguard.scoring.evidence import evidence_frame

    items = [{"name": "cot", "expr": "cot_rate", "lo": 0.0, "hi": 0.5, "weight": 2.0,
              "support": "cot_rate * novelty * n_requests", "min_support": 3,
              "show": "cot_rate", "reason": "{}"},
             {"name": "plain", "expr": "cot_rate", "lo": 0.0, "hi": 0.5, "weight": 2.0,
              "show": "cot_rate", "reason": "{}"}]
    cfg = with_overlay(load_config(), {"scoring": {"evidence": items, "min_requests": 20}})
    # (requests, distinct prompts, distinct cot prompts)
    accounts = {"ten_of_ten": (10, 10, 8), "two": (10, 10, 2), "none": (5, 5, 0)}
    con = duckdb.connect()
    con.execute("CREATE TABLE f (account_id VARCHAR, n_requests DOUBLE, novelty DOUBLE, "
                "cot_rate DOUBLE)")
    for a, (n, nd, k) in accounts.items():
        con.execute("INSERT INTO f VALUES (?, ?, ?, ?)", [a, n, nd / n, k / nd])
    ev = {r["account_id"]: r for r in evidence_frame(con, cfg, "f", weights={"cot": 2.0, "plain": 2.0}).to_dicts()}
    assert ev["ten_of_ten"]["ev_cot"] == pytest.approx(2.0)      # 8 matches >= 3: in full
    assert ev["ten_of_ten"]["ev_plain"] == pytest.approx(1.0)    # 10 / 20 requests
    assert ev["two"]["ev_cot"] == pytest.approx(2.0 * 0.4 * 2 / 3)
    assert ev["none"]["ev_cot"] == 0.0
    comp = compile_evidence(items, [2.0, 2.0], 20, 3)
    for a, (n, nd, k) in accounts.items():
        contrib, _, _ = comp.fn({"n": n, "distinct": nd, "d:cot_elicit": k}, None)
        assert contrib == pytest.approx((ev[a]["ev_cot"], ev[a]["ev_plain"])), a
