"""Retention and erasure in the store: drop raw text, keep the evidence, record the deletion.

``prune(con, older_than=timedelta(days=90))`` and ``prune(con, account="acct-1")`` remove the
raw text of the matching requests, what a retention policy or an erasure request is about:

* ``prompt`` and ``system`` become ``pruned:<sha256 prefix>``: the text is gone, but two
  requests with the same prompt still share one value, so the counting features
  (``novelty``, ``rerun_share``, the shares of distinct prompts that elicit) keep their values;
* ``response`` and ``extra`` (unknown fields, which may hold text) become NULL, and
  ``output_tokens`` keeps the estimate the features would have made from the response;
* each pruned request's row of ``signals`` (elicitation flags, capability, template id,
  ``elicit_p``; the skeleton text dropped) is kept in ``retained_signals`` and laid over the
  recomputed ``signals`` by every later run, so a request's evidence survives its text;
* the raw text kept in ``quarantine`` for the same scope is dropped.

Timestamps, accounts, models, token counts and linking keys (address, user agent, card
fingerprint, org, key id) stay: they are the evidence a campaign is linked on. Each prune is
one transaction, logged in the store's ``retention_log`` and, given an
:class:`~distillguard.respond.audit.AuditLog`, as an ``store.pruned`` entry whose account is
a SHA-256 digest, not the id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from distillguard.errors import StoreError
from distillguard.store import scalar, table_columns, table_exists

__all__ = ["PRUNED", "PruneReport", "overlay_retained_signals", "parse_age", "prune"]

PRUNED = "pruned:"

_LOG_DDL = ("CREATE TABLE IF NOT EXISTS retention_log (pruned_at TIMESTAMP, action VARCHAR, "
            "scope VARCHAR, requests BIGINT, quarantine_rows BIGINT)")


@dataclass
class PruneReport:
    action: str                 # prune | erase
    scope: str                  # "ts < <cutoff>" or "account sha256:<digest>"
    requests: int               # requests whose text was removed now
    kept_signals: int           # of those, how many had signals kept in retained_signals
    quarantine_rows: int        # quarantine rows whose raw text was dropped

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w`` → timedelta."""
    m = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", text)
    if not m:
        raise StoreError(f"age {text!r}: expected a number and h, d or w, e.g. 90d")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(hours=n) if unit == "h" else timedelta(days=n * (7 if unit == "w" else 1))


def _account_digest(account: str) -> str:
    return "sha256:" + hashlib.sha256(account.encode()).hexdigest()[:16]


def prune(con: duckdb.DuckDBPyConnection, *, older_than: timedelta | None = None,
          account: str | None = None, now: datetime | None = None,
          audit: Any | None = None) -> PruneReport:
    """Remove raw text of requests older than ``older_than`` (by ``ts``) or of ``account``."""
    if (older_than is None) == (account is None):
        raise StoreError("prune needs exactly one of older_than or account")
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    if older_than is not None:
        cutoff = now - older_than
        where, params = "ts < ?", [cutoff]
        action, scope = "prune", f"ts < {cutoff.isoformat()}Z"
        q_where, q_params = "added_at < ?", [cutoff]
    else:
        where, params = "account_id = ?", [account]
        action, scope = "erase", f"account {_account_digest(account)}"
        needle = f'%"account_id":"{account}"%'
        q_where, q_params = "raw LIKE ? OR raw LIKE ?", [needle, needle.replace('":"', '": "')]
    digest = "'" + PRUNED + "' || left(sha256({c}), 32)"
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(_LOG_DDL)
        con.execute("CREATE OR REPLACE TEMP TABLE _prune_ids AS SELECT request_id FROM "
                    f"requests WHERE {where} AND (prompt IS NULL OR prompt NOT LIKE "
                    f"'{PRUNED}%')", params)
        n = scalar(con, "SELECT count(*) FROM _prune_ids")
        if table_exists(con, "_incremental_changed"):
            # Their text changes here: an incremental run must redo them as new requests.
            con.execute("INSERT INTO _incremental_changed SELECT request_id FROM _prune_ids")
        kept = 0
        if table_exists(con, "signals"):
            if not table_exists(con, "retained_signals"):
                con.execute("CREATE TABLE retained_signals AS SELECT * FROM signals LIMIT 0")
            cols = [c for c in _ordered_columns(con, "retained_signals")
                    if c in table_columns(con, "signals")]
            sel = ", ".join("NULL AS skeleton" if c == "skeleton" else c for c in cols)
            kept = scalar(con, f"""
                INSERT INTO retained_signals ({", ".join(cols)})
                SELECT {sel} FROM signals SEMI JOIN _prune_ids USING (request_id)
                WHERE request_id NOT IN (SELECT request_id FROM retained_signals)""") or 0
        con.execute(f"""
            UPDATE requests SET
              prompt = CASE WHEN prompt IS NULL THEN NULL ELSE {digest.format(c="prompt")} END,
              system = CASE WHEN system IS NULL THEN NULL ELSE {digest.format(c="system")} END,
              output_tokens = coalesce(output_tokens, CASE WHEN response IS NOT NULL
                  THEN CAST(ceil(length(response) / 4.0) AS BIGINT) END),
              response = NULL, extra = NULL
            WHERE request_id IN (SELECT request_id FROM _prune_ids)""")
        nq = scalar(con, f"SELECT count(*) FROM quarantine WHERE raw IS NOT NULL AND "
                         f"({q_where})", q_params)
        con.execute(f"UPDATE quarantine SET raw = NULL WHERE raw IS NOT NULL AND ({q_where})",
                    q_params)
        con.execute("INSERT INTO retention_log VALUES (?, ?, ?, ?, ?)",
                    [now, action, scope, n, nq])
        con.execute("DROP TABLE _prune_ids")
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise StoreError(f"prune failed, nothing changed: {exc}") from exc
    report = PruneReport(action, scope, int(n), int(kept), int(nq))
    if audit is not None:
        audit.append(f"store.{action}d" if action == "erase" else "store.pruned",
                     **report.to_dict())
    return report


def _ordered_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position", [table]).fetchall()]


def overlay_retained_signals(con: duckdb.DuckDBPyConnection) -> int:
    """Put kept signals back over ``signals`` for pruned requests; returns rows updated."""
    if not table_exists(con, "retained_signals") or not table_exists(con, "signals"):
        return 0
    cols = [c for c in _ordered_columns(con, "retained_signals")
            if c in table_columns(con, "signals") and c not in ("request_id", "skeleton")]
    if not cols:
        return 0
    sets = ", ".join(f"{c} = r.{c}" for c in cols)
    return int(scalar(con, f"UPDATE signals SET {sets} FROM retained_signals r "
                           "WHERE signals.request_id = r.request_id") or 0)
