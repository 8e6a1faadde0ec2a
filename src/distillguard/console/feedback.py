"""Analysts' verdicts as labels, and a recalibration from them that must be applied by hand.

Labels: an account's latest verdict, ``confirm`` → ``distill`` (with its campaign),
``dismiss`` → ``benign``; written as the ``labels.csv`` that ``distillguard fit --labels``
reads.

Recalibration: the known-legitimate accounts are the dismissed ones plus every account the
detector did not flag and nobody confirmed. A :class:`~distillguard.scoring.Calibrator` is
fitted on their final raw scores at the configured false-positive budget (what
``distillguard calibrate`` does with a list of known-good accounts, on the scores the store
already holds). The preview shows, before and after: the false-positive rate on the
known-legitimate accounts, the detector's own estimate (the self-calibration's legitimate
component, :func:`~distillguard.scoring.selfcal.self_calibrate`), how many confirmed accounts
stay flagged and how many accounts are flagged in all. Nothing changes until an admin applies
it; applying writes a config overlay for the next ``distillguard detect --config``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from distillguard.config import Config
from distillguard.console._db import ConsoleDB
from distillguard.errors import DistillguardError
from distillguard.scoring import Calibrator, calibrator_from_config
from distillguard.scoring.selfcal import benign_sketch, self_calibrate

__all__ = ["FeedbackError", "apply_calibration", "labels", "labels_csv", "preview"]


class FeedbackError(DistillguardError):
    """A recalibration cannot be computed or applied."""


def labels(db: ConsoleDB) -> list[dict[str, Any]]:
    return db.rows("""
        WITH v AS (SELECT account_id, arg_max(action, id) AS verdict FROM console_actions
                   WHERE action IN ('confirm', 'dismiss', 'reopen') AND account_id IS NOT NULL
                   GROUP BY 1)
        SELECT v.account_id, CASE v.verdict WHEN 'confirm' THEN 'distill' ELSE 'benign' END
                 AS label,
               CASE WHEN v.verdict = 'confirm' THEN coalesce(i.campaign_id, '') ELSE '' END
                 AS campaign_id,
               'analyst_' || v.verdict AS kind
        FROM v LEFT JOIN console_account_index i USING (account_id)
        WHERE v.verdict <> 'reopen' ORDER BY 1""")


def labels_csv(db: ConsoleDB) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["account_id", "label", "campaign_id", "kind"])
    for r in labels(db):
        w.writerow([r["account_id"], r["label"], r["campaign_id"], r["kind"]])
    return buf.getvalue()


def _current(db: ConsoleDB, cfg: Config) -> dict[str, Any]:
    if db.has["calibration"]:
        j = db.value("SELECT j FROM calibration")
        if j:
            return json.loads(j)
    c = calibrator_from_config(cfg)
    return {"method": "config", "raw_threshold": c.raw_threshold_, "raw_scale": c.raw_scale_,
            "promised_fpr": c.target_fpr, "estimated_fpr": None}


def preview(db: ConsoleDB, cfg: Config) -> dict[str, Any]:
    """Before/after figures of a recalibration on the analysts' labels (changes nothing)."""
    rows = db.rows("""
        WITH v AS (SELECT account_id, arg_max(action, id) AS verdict FROM console_actions
                   WHERE action IN ('confirm', 'dismiss', 'reopen') AND account_id IS NOT NULL
                   GROUP BY 1)
        SELECT s.account_id, s.final_raw, s.flagged, v.verdict FROM scores s
        LEFT JOIN v USING (account_id)""")
    raw = np.array([float(r["final_raw"]) for r in rows])
    verdict = np.array([r["verdict"] or "" for r in rows])
    flagged = np.array([bool(r["flagged"]) for r in rows])
    confirmed, dismissed = verdict == "confirm", verdict == "dismiss"
    legit = dismissed | (~flagged & ~confirmed)
    if not (confirmed.any() or dismissed.any()):
        raise FeedbackError("no verdicts yet: confirm or dismiss accounts first")
    if legit.sum() < 20:
        raise FeedbackError(f"only {int(legit.sum())} known-legitimate accounts: too few")
    cur = _current(db, cfg)
    target = float(cfg["scoring"]["target_fpr"])
    new = Calibrator(target).fit(raw[legit])
    prior = calibrator_from_config(cfg)
    sketch = cfg["scoring"]["calibration"].get("benign_sketch")
    # Rounded *up* to the 6 decimals written to YAML: rounding to nearest could put the
    # threshold back under the highest known-legitimate score it was fitted to clear.
    t_old = float(cur["raw_threshold"])
    t_new = math.ceil(float(new.raw_threshold_) * 1e6) / 1e6
    new.raw_threshold_ = t_new
    est_new = self_calibrate(raw, prior, sketch, use=new).estimated_fpr

    def side(t: float, est: float | None) -> dict[str, Any]:
        fl = raw >= t
        return {"raw_threshold": round(t, 4),
                "fpr_known_legit": float(fl[legit].mean()),
                "dismissed_flagged": int(fl[dismissed].sum()),
                "confirmed_flagged": int(fl[confirmed].sum()),
                "flagged": int(fl.sum()),
                "estimated_fpr": None if est is None or est != est else float(est)}

    return {
        "n_accounts": len(rows), "n_confirmed": int(confirmed.sum()),
        "n_dismissed": int(dismissed.sum()), "n_known_legit": int(legit.sum()),
        "target_fpr": target, "current_method": cur.get("method"),
        "before": side(t_old, cur.get("estimated_fpr")),
        "after": side(t_new, est_new),
        "calibration": {"raw_threshold": t_new, "raw_scale": round(new.raw_scale_, 6),
                        "n_benign": new.n_benign_, "target_fpr": target,
                        "fitted_on": f"{new.n_benign_} known-legitimate accounts "
                                     f"({int(dismissed.sum())} dismissed by analysts), "
                                     f"config {cfg.version}",
                        "benign_sketch": benign_sketch(new.benign_sorted_)},
    }


def save_proposal(db: ConsoleDB, user: str, body: dict[str, Any]) -> int:
    pid = int(db.value("SELECT nextval('console_calibration_id')"))
    db.execute("INSERT INTO console_calibrations (id, created_at, created_by, body) "
               "VALUES (?, ?, ?, ?)", [pid, datetime.now(), user, json.dumps(body)])
    return pid


def apply_calibration(db: ConsoleDB, pid: int, user: str, out_dir: Path) -> Path:
    """Write proposal ``pid`` as a config overlay (``--config`` for the next detect)."""
    row = db.one("SELECT * FROM console_calibrations WHERE id = ?", [int(pid)])
    if row is None:
        raise FeedbackError(f"no recalibration proposal {pid}")
    if row["applied_at"] is not None:
        raise FeedbackError(f"proposal {pid} was applied already ({row['path']})")
    body = json.loads(row["body"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"calibration-{int(pid)}.yaml"
    doc = {"scoring": {"self_calibrate": False, "calibration": body["calibration"]}}
    path.write_text("# Written by the distillguard console from analysts' verdicts "
                    f"(proposal {int(pid)}, applied by {user}).\n"
                    + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    db.execute("UPDATE console_calibrations SET applied_at = ?, applied_by = ?, path = ? "
               "WHERE id = ?", [datetime.now(), user, str(path), int(pid)])
    return path


def proposals(db: ConsoleDB) -> list[dict[str, Any]]:
    out = db.rows("SELECT * FROM console_calibrations ORDER BY id DESC LIMIT 20")
    for r in out:
        r["body"] = json.loads(r["body"])
    return out
