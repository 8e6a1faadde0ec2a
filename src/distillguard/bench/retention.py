"""Retention figures: ``python -m distillguard.bench.retention WORK``.

1. Prune: simulate the tiny week, detect, prune every request's raw text (``older_than=0``),
   detect again on the same logs and store; report what was removed and how the verdicts
   moved (goal: not at all).
2. Audit rotation: 100,000 entries with 1 MB segments; verify the chain, delete the oldest
   half of the segments (a retention policy) and verify again.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["run_retention", "main"]


def run_retention(work: Path, entries: int = 100_000) -> dict[str, Any]:
    from distillguard import api
    from distillguard.respond.audit import AuditLog, segments, verify
    from distillguard.retention import prune
    from distillguard.sim import simulate
    from distillguard.store import connect

    sim = simulate(work / "traffic", scenario="tiny", seed=3)
    db = work / "store.duckdb"
    before = api.detect(sim.logs, work / "before", db=db)
    con = connect(db)
    t0 = time.perf_counter()
    rep = prune(con, older_than=timedelta(0), audit=AuditLog(work / "audit.jsonl"))
    prune_s = time.perf_counter() - t0
    left = con.execute("SELECT count(*) FROM requests WHERE prompt NOT LIKE 'pruned:%' "
                       "OR response IS NOT NULL").fetchone()[0]
    con.close()
    after = api.detect(sim.logs, work / "after", db=db)
    j = before.accounts.join(after.accounts, on="account_id", suffix="_a")

    p = work / "rotation" / "audit.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    for f in p.parent.iterdir():
        f.unlink()
    log = AuditLog(p, max_bytes=1 << 20)
    t0 = time.perf_counter()
    for i in range(entries):
        log.append("decision", account_id=f"acct-{i % 977}", action="allow", model="m")
    append_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = verify(p)
    verify_s = time.perf_counter() - t0
    segs = segments(p)
    for f in segs[: len(segs) // 2]:
        f.unlink()
    rest = verify(p)
    return {
        "prune": {"requests_pruned": rep.requests, "signals_kept": rep.kept_signals,
                  "seconds": round(prune_s, 2), "raw_text_left": left,
                  "accounts": j.height, "flagged_before": int(before.accounts["flagged"].sum()),
                  "flagged_after": int(after.accounts["flagged"].sum()),
                  "verdicts_changed": int((j["flagged"] != j["flagged_a"]).sum()),
                  "max_score_change": float((j["score"] - j["score_a"]).abs().max()),
                  "campaigns_equal": [c["accounts"] for c in before.campaigns]
                  == [c["accounts"] for c in after.campaigns],
                  "reingested_rows_quarantined": after.ingest.rows_bad,
                  "audit_ok": verify(work / "audit.jsonl").ok},
        "rotation": {"entries": entries, "segments": len(segs),
                     "appends_per_s": round(entries / append_s), "verify_ok": full.ok,
                     "verified": full.entries, "verify_s": round(verify_s, 2),
                     "oldest_half_deleted_verify_ok": rest.ok, "first_seq": rest.first_seq},
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__)
        return 2
    s = run_retention(Path(args[0]))
    print(json.dumps(s, indent=2))
    p, r = s["prune"], s["rotation"]
    ok = (p["raw_text_left"] == 0 and p["verdicts_changed"] == 0 and r["verify_ok"]
          and r["oldest_half_deleted_verify_ok"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
