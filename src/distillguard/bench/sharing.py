"""Two providers, one campaign: does sharing indicators help? (STIX bundles both ways)

A campaign's accounts and infrastructure are split over providers A and B; each sees part of
it (and its own half of the legitimate population). Each detects alone, then each imports the
other's STIX bundle (HMAC'd identifiers, IP prefixes, template MinHashes; never raw prompts,
account ids or payment fingerprints) and detects again. Every byte that crosses is checked
for raw identifiers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from distillguard.api import analyse
from distillguard.bench.metrics import evaluate
from distillguard.bench.run import calibrate_ours, simulate_pair
from distillguard.config import Config, load_config
from distillguard.ingest import ingest_files
from distillguard.store import connect, scalar

GROUP_KEY = hashlib.sha256(b"distillguard two-provider benchmark sharing group").digest()


def _side(account_id: str) -> str:
    return "A" if hashlib.sha256(account_id.encode()).digest()[0] % 2 == 0 else "B"


def _provider_store(full_db: Path, accounts: list[str]):
    con = connect(None)
    con.execute(f"ATTACH '{full_db}' AS full_store (READ_ONLY)")
    con.register("_mine", pl.DataFrame({"account_id": accounts}).to_arrow())
    con.execute("INSERT INTO requests SELECT r.* FROM full_store.requests r "
                "JOIN _mine USING (account_id)")
    con.unregister("_mine")
    con.execute("DETACH full_store")
    return con


def _leaks(payload: bytes, con) -> dict[str, int]:
    """Raw prompts, account ids and payment fingerprints found in what is sent."""
    text = payload.decode("utf-8", errors="replace")
    found = {}
    for col, min_len in (("account_id", 6), ("payment_fingerprint", 6), ("prompt", 40)):
        vals = [r[0] for r in con.execute(
            f"SELECT DISTINCT {col} FROM requests WHERE {col} IS NOT NULL "
            f"AND length({col}) >= {min_len}").fetchall()]
        found[col] = sum(1 for v in vals if v in text)
    return found


def _exchange(cons: dict, campaigns: dict, confidence: int, out: Path | None = None
              ) -> dict[str, Any]:
    """Each provider exports its campaigns as STIX and the other imports them."""
    from distillguard.intel import export_bundle, import_bundle

    sent = {}
    for p, q in (("A", "B"), ("B", "A")):
        if not campaigns[p]:
            sent[p] = {"bytes": 0, "campaigns": 0,
                       "raw_identifiers_found": {"account_id": 0, "payment_fingerprint": 0,
                                                 "prompt": 0}}
            continue
        bundle = export_bundle(campaigns[p], cons[p], GROUP_KEY, producer=f"provider-{p}")
        payload = bundle.serialize(pretty=False).encode()
        if out is not None:
            (out / f"bundle-{p}.json").write_bytes(payload)
        sent[p] = {"bytes": len(payload), "campaigns": len(campaigns[p]),
                   "raw_identifiers_found": _leaks(payload, cons[p])}
        import_bundle(payload, cons[q], source=f"provider-{p}", confidence=confidence)
    return sent


def _daily(cons: dict, labels: pl.DataFrame, cfg: Config, cal: Any, confidence: int,
           days: int) -> dict[str, Any]:
    """Detection re-run at the end of each day on the traffic so far, alone and sharing.

    Time to detect = first day after which at least half of a campaign's accounts at that
    provider are flagged. Partners exchange bundles built from their own end-of-day view.
    """
    for con in cons.values():
        con.execute("CREATE OR REPLACE TABLE requests_full AS SELECT * FROM requests")
    t0 = scalar(cons["A"], "SELECT min(ts) FROM requests_full")
    first: dict[str, dict[str, dict[str, int]]] = {p: {"alone": {}, "shared": {}}
                                                   for p in cons}
    camp = labels.filter(pl.col("label") == "distill")
    for d in range(1, days + 1):
        campaigns, scores = {}, {}
        for p, con in cons.items():
            con.execute("DROP TABLE IF EXISTS partner_indicators")
            con.execute("CREATE OR REPLACE TABLE requests AS SELECT * FROM requests_full "
                        f"WHERE ts < TIMESTAMP '{t0}' + INTERVAL {d} DAY")
            scores[(p, "alone")], campaigns[p] = analyse(con, cfg, calibrator=cal)
        _exchange(cons, campaigns, confidence)
        for p, con in cons.items():
            scores[(p, "shared")], _ = analyse(con, cfg, calibrator=cal, intel_key=GROUP_KEY)
        for (p, mode), sc in scores.items():
            mine = camp.filter(pl.col("provider") == p).join(
                sc.select("account_id", "flagged"), on="account_id", how="left")
            for cid, grp in mine.group_by("campaign_id"):
                share = grp["flagged"].fill_null(False).mean()
                if share >= 0.5 and cid[0] not in first[p][mode]:
                    first[p][mode][cid[0]] = d
    for con in cons.values():
        con.execute("CREATE OR REPLACE TABLE requests AS SELECT * FROM requests_full")
        con.execute("DROP TABLE IF EXISTS partner_indicators")
    cids = sorted(camp["campaign_id"].unique().to_list())
    return {p: {cid: {m: first[p][m].get(cid) for m in ("alone", "shared")} for cid in cids
                if camp.filter((pl.col("provider") == p) & (pl.col("campaign_id") == cid)).height}
            for p in cons}


def _n_days(con) -> int:
    span = scalar(con, "SELECT epoch(max(ts)) - epoch(min(ts)) FROM requests")
    return max(1, int(-(-float(span) // 86400)))


def two_providers(out_dir: str | Path, *, scenario: str = "default", seed: int = 7,
                  legit: Any = None, distill: Any = None, timing: Any = None,
                  knobs: dict[str, Any] | None = None, config: Config | None = None,
                  confidence: int = 80, daily: bool = False) -> dict[str, Any]:
    cfg = config or load_config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tune, rep = simulate_pair(out / "traffic", scenario, seed, legit, distill, timing,
                              knobs or {})
    tune_con = connect(None)
    ingest_files(tune.logs, tune_con, limits=cfg["ingest"])
    cal = calibrate_ours(tune_con, cfg, tune.labels)
    tune_con.close()

    full_db = out / "full.duckdb"
    full_db.unlink(missing_ok=True)
    full = connect(full_db)
    ingest_files(rep.logs, full, limits=cfg["ingest"])
    full.close()
    labels = rep.labels.with_columns(
        pl.col("account_id").map_elements(_side, return_dtype=pl.Utf8).alias("provider"))
    cons, results, campaigns = {}, {}, {}
    for p in ("A", "B"):
        accts = labels.filter(pl.col("provider") == p)["account_id"].to_list()
        cons[p] = _provider_store(full_db, accts)
        scores, campaigns[p] = analyse(cons[p], cfg, calibrator=cal)
        results[p] = {"alone": evaluate(labels.filter(pl.col("provider") == p).drop("provider"),
                                        scores.select("account_id", "score", "flagged"))}
    ttd = _daily(cons, labels, cfg, cal, confidence, _n_days(cons["A"])) if daily else None
    bundles = _exchange(cons, campaigns, confidence, out)
    for p in ("A", "B"):
        scores, _ = analyse(cons[p], cfg, calibrator=cal, intel_key=GROUP_KEY)
        results[p]["shared"] = evaluate(
            labels.filter(pl.col("provider") == p).drop("provider"),
            scores.select("account_id", "score", "flagged"))
        results[p]["n_requests"] = scalar(cons[p], "SELECT count(*) FROM requests")
        cons[p].close()
    full_db.unlink(missing_ok=True)

    def brief(m: dict[str, Any]) -> dict[str, Any]:
        return {"recall@0.1%fpr": m["recall_at_fpr"]["0.001"]["recall"],
                "recall@1%fpr": m["recall_at_fpr"]["0.01"]["recall"],
                "flag_recall": m["flagged"]["recall"], "flag_fpr": m["flagged"]["fpr"],
                "pr_auc": m["pr_auc"]}

    table = {p: {"alone": brief(results[p]["alone"]), "shared": brief(results[p]["shared"]),
                 "n_requests": results[p]["n_requests"]} for p in ("A", "B")}
    result = {"scenario": scenario, "seed": seed, "knobs": knobs or {}, "providers": table,
              "bundles": bundles, "days_to_detect": ttd}
    (out / "two_providers.json").write_text(json.dumps(result, indent=2, default=str))
    return result


__all__ = ["GROUP_KEY", "two_providers"]
