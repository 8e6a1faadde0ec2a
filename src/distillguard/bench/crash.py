"""Crash consistency: SIGKILL ``distillguard detect`` and ``intel import`` at random moments.

``python -m distillguard.bench.crash WORK --kills 50 [--seed 0]`` simulates a small week of
traffic (plus a file with bad rows), runs ``distillguard detect`` once uninterrupted as the
reference, then for each kill: starts ``distillguard detect`` in a subprocess on a fresh
output folder, kills it with SIGKILL at a random moment, checks the state it left, reruns the
same command to completion and compares with the reference. Kills are spread over the
pipeline: kill ``i`` lands at a uniform random moment inside stage ``i mod 7`` (start-up,
ingest, signals, features, linking, scoring, outputs), located from a stage-stamped reference
run. The same is done for ``distillguard intel import`` of the reference's STIX bundle.

A kill is *survived* when, right after it, the store opens, holds each ``request_id`` at most
once and every output file present is whole (not a torn write); and after the rerun the store
holds exactly the reference's requests and quarantine rows, once each, and ``accounts.csv``
and ``campaigns.json`` equal the reference's byte for byte (``partner_indicators`` for the
import). Prints a JSON summary; exit code 0 when every kill was survived.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["run_crash", "main"]

STAGES = ("startup", "ingest", "signals", "features", "linking", "scoring", "outputs")
_CLI = [sys.executable, "-m", "distillguard.cli"]

# Child of the reference run: the same api.detect the CLI calls, stamping stage ends.
_STAMPED = """
import sys, time, json
from pathlib import Path
from distillguard import api
t0 = float(sys.argv[1]); stamps = {}
class P(api.Progress):
    def stage(self, name, total=None):
        stamps.setdefault(name + ".start", time.time() - t0)
        return lambda n: None
    def done(self, name, seconds, note=""):
        stamps[name] = time.time() - t0
api.detect([Path(p) for p in sys.argv[4:]], Path(sys.argv[2]), progress=P())
Path(sys.argv[3]).write_text(json.dumps(stamps))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DISTILLGUARD_THREADS", "2")
    return env


def _detect_cmd(logs: list[Path], out: Path) -> list[str]:
    return [*_CLI, "detect", *map(str, logs), "--out", str(out), "--quiet"]


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])}... failed: {r.stderr[-2000:]}")


def _store_state(db: Path) -> dict[str, Any]:
    """What the store holds: request ids (count, distinct, digest) and quarantine rows."""
    import duckdb

    con = duckdb.connect(str(db))
    try:
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
        ids = hashlib.sha256("\n".join(r[0] for r in con.execute(
            "SELECT request_id FROM requests ORDER BY request_id").fetchall()).encode()
        ).hexdigest()
        content = hashlib.sha256(repr(con.execute(
            "SELECT * EXCLUDE (source) FROM requests ORDER BY request_id").fetchall()
        ).encode()).hexdigest()
        q = con.execute("SELECT source, line, reason FROM quarantine ORDER BY ALL").fetchall()
    finally:
        con.close()
    return {"requests": n, "distinct": distinct, "ids": ids, "content": content,
            "quarantine": [(Path(s).name, li, r) for s, li, r in q]}


def _whole(out: Path) -> list[str]:
    """Output files present but torn (a kill mid-write); an absent file is fine."""
    torn = []
    for name in ("campaigns.json", "calibration.json"):
        p = out / name
        if p.exists():
            try:
                json.loads(p.read_text("utf-8"))
            except (ValueError, UnicodeDecodeError):
                torn.append(name)
    p = out / "accounts.csv"
    if p.exists():
        data = p.read_bytes()
        if not data.endswith(b"\n") or not data.startswith(b"account_id,"):
            torn.append("accounts.csv")
    p = out / "report.html"
    if p.exists() and not p.read_bytes().rstrip().endswith(b"</html>"):
        torn.append("report.html")
    return torn


def _results(out: Path) -> dict[str, str]:
    return {n: hashlib.sha256((out / n).read_bytes()).hexdigest()
            for n in ("accounts.csv", "campaigns.json")}


def _bad_rows_file(path: Path) -> None:
    """A few bad rows, so the quarantine is part of what must survive a kill."""
    rows = [b'{"request_id": "bad-1", "ts": ', b'{"request_id": "bad-2", "ts": "yesterday", '
            b'"account_id": "a", "model": "m", "prompt": "x"}', b"\xff\xfe"]
    path.write_bytes(b"\n".join(rows) + b"\n")


def _kill_at(cmd: list[str], delay: float) -> tuple[bool, float]:
    """Start cmd, SIGKILL it after ``delay`` s; (killed before it exited, elapsed)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False, time.time() - t0
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True, time.time() - t0


def _partner_rows(db: Path) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db))
    try:
        return con.execute("SELECT kind, value, source, confidence, campaign_ref "
                           "FROM partner_indicators ORDER BY ALL").fetchall()
    finally:
        con.close()


def run_crash(work: Path, kills: int, import_kills: int | None = None, seed: int = 0,
              scenario: str = "tiny") -> dict[str, Any]:
    """Run the harness in ``work``; returns the summary (see the module docstring)."""
    from distillguard.sim import simulate

    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    sim = simulate(work / "traffic", scenario=scenario, seed=3)
    bad = work / "traffic" / "bad-rows.jsonl"
    _bad_rows_file(bad)
    logs = [*sim.logs, bad]

    # Reference: the CLI uninterrupted, and a stage-stamped run to place the kills.
    ref = work / "ref"
    _run(_detect_cmd(logs, work / "ref-cold"))          # warms the file cache
    t0 = time.time()
    _run(_detect_cmd(logs, ref))
    ref_seconds = time.time() - t0
    ref_state, ref_results = _store_state(ref / "store.duckdb"), _results(ref)
    if _results(work / "ref-cold") != ref_results:
        raise RuntimeError("two uninterrupted runs differ: detect is not deterministic")
    stamps_file = work / "stamps.json"
    t0 = time.time()
    _run([sys.executable, "-c", _STAMPED, str(t0), str(work / "stamped"), str(stamps_file),
          *map(str, logs)])
    st = json.loads(stamps_file.read_text())
    if _results(work / "stamped") != ref_results:
        raise RuntimeError("the stage-stamped run differs from the CLI's")
    # The CLI imports more than the stamped child: shift the stage ends by the difference.
    shift = max(ref_seconds - st["outputs"], 0.0)
    bounds = [0.0] + [st[s] + shift for s in ("ingest.start", *STAGES[1:])]
    windows = {s: (bounds[i], bounds[i + 1]) for i, s in enumerate(STAGES)}

    records = []
    # Runs speed up or slow down with the machine's load: a run that ends before its kill
    # rescales the phase windows by its duration and is tried again (up to 3 times).
    speed = 1.0
    for k in range(kills):
        stage = STAGES[k % len(STAGES)]
        lo, hi = windows[stage]
        frac = rng.random()
        out = work / f"kill-{k}"
        for _ in range(3):
            if out.exists():
                shutil.rmtree(out)
            delay = (lo + frac * (hi - lo)) * speed
            killed, elapsed = _kill_at(_detect_cmd(logs, out), delay)
            if killed:
                break
            speed = min(speed, elapsed / ref_seconds)
        rec: dict[str, Any] = {"kill": k, "stage": stage, "at_s": round(delay, 3),
                               "killed": killed, "problems": []}
        db = out / "store.duckdb"
        if db.exists():
            try:
                mid = _store_state(db)
                if mid["requests"] != mid["distinct"]:
                    rec["problems"].append("duplicate request_id after the kill")
            except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
                rec["problems"].append(f"store does not open after the kill: {exc}")
        if out.exists():
            rec["problems"] += [f"torn {n}" for n in _whole(out)]
        try:
            _run(_detect_cmd(logs, out))
            after = _store_state(db)
            for key in ("requests", "distinct", "ids", "content", "quarantine"):
                if after[key] != ref_state[key]:
                    rec["problems"].append(f"store {key} differs from the reference")
            if _results(out) != ref_results:
                rec["problems"].append("results differ from the reference")
        except Exception as exc:  # noqa: BLE001
            rec["problems"].append(f"rerun failed: {exc}")
        records.append(rec)

    # intel import: the reference's bundle into a fresh store, killed and rerun.
    key = work / "group.key"
    key.write_text("k" * 32)
    bundle = work / "bundle.json"
    _run([*_CLI, "intel", "export", "--results", str(ref), "--all", "--out", str(bundle),
          "--key-file", str(key), "--db", str(ref / "store.duckdb")])
    imp = [*_CLI, "intel", "import", str(bundle), "--source", "partner-a"]
    t0 = time.time()
    _run([*imp, "--db", str(work / "import-ref.duckdb")])
    imp_seconds = time.time() - t0
    ref_rows = _partner_rows(work / "import-ref.duckdb")
    imp_records = []
    for k in range(kills if import_kills is None else import_kills):
        db = work / f"import-{k}.duckdb"
        delay = rng.uniform(0.0, imp_seconds)
        killed, _ = _kill_at([*imp, "--db", str(db)], delay)
        rec = {"kill": k, "at_s": round(delay, 3), "killed": killed, "problems": []}
        try:
            if db.exists():
                mid = _partner_rows(db) if _has_table(db, "partner_indicators") else []
                if len(mid) != len(set(mid)):
                    rec["problems"].append("duplicate indicators after the kill")
            _run([*imp, "--db", str(db)])
            if _partner_rows(db) != ref_rows:
                rec["problems"].append("partner_indicators differ from the reference")
        except Exception as exc:  # noqa: BLE001
            rec["problems"].append(f"{exc}")
        imp_records.append(rec)

    def tally(recs: list[dict]) -> dict[str, Any]:
        return {"kills": len(recs), "killed_mid_run": sum(r["killed"] for r in recs),
                "survived": sum(not r["problems"] for r in recs),
                "failures": [r for r in recs if r["problems"]]}

    by_stage = {s: sum(1 for r in records if r["stage"] == s and r["killed"]) for s in STAGES}
    return {"requests": ref_state["requests"], "quarantined": len(ref_state["quarantine"]),
            "reference_seconds": round(ref_seconds, 1),
            "stage_windows_s": {s: [round(a, 2), round(b, 2)] for s, (a, b) in windows.items()},
            "detect": tally(records) | {"killed_by_stage": by_stage},
            "intel_import": tally(imp_records) | {"reference_seconds": round(imp_seconds, 2),
                                                  "indicators": len(ref_rows)}}


def _has_table(db: Path, name: str) -> bool:
    import duckdb

    con = duckdb.connect(str(db))
    try:
        return bool(con.execute("SELECT count(*) FROM information_schema.tables "
                                "WHERE table_name = ?", [name]).fetchone()[0])
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distillguard.bench.crash",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="scratch folder (logs, stores, outputs)")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--import-kills", type=int, default=None,
                    help="kills of intel import (default: --kills)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    s = run_crash(args.work, args.kills, args.import_kills, args.seed)
    print(json.dumps(s, indent=2, default=str))
    ok = (s["detect"]["survived"] == s["detect"]["kills"]
          and s["intel_import"]["survived"] == s["intel_import"]["kills"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


