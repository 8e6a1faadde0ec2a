"""What analysts do: verdicts, responses, exceptions, exports; each one audited.

Every action appends one entry to the hash-chained audit log
(:class:`distillguard.respond.audit.AuditLog`, event ``console_action``) naming who did it
(``actor``, ``role``), then one ``console_actions`` row per account it touched, carrying the
entry's ``seq`` and ``hash``.

Responses go through the gateway's own machinery: each one is written as the account's
standing-action record into the gateway's state store
(:class:`~distillguard.respond.state.RedisState` shared with the gateway through
``--redis-url``), which :func:`distillguard.respond.online.decide` reads on every request:
``suspend`` answers 403 ``distillguard_account_suspended`` from the account's next request
on, ``throttle``, ``require_verification`` and ``strip_reasoning`` are added to the policy's
decision with the parameters the policy gives that action; ``lift`` removes the record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import orjson

from distillguard.console._db import ConsoleDB
from distillguard.console.auth import Session
from distillguard.errors import DistillguardError
from distillguard.respond.audit import AuditLog
from distillguard.respond.policy import ERROR_CODES, Policy
from distillguard.respond.state import StateStore

__all__ = ["ActionError", "Actions", "EXCEPTION_KINDS", "RESPONSES"]

RESPONSES = ("suspend", "throttle", "require_verification", "strip_reasoning")
EXCEPTION_KINDS = ("account", "org", "api_key", "ip_prefix", "user_agent", "payment")
MAX_REASON = 1000
DEFAULT_REVIEW_DAYS = 90


class ActionError(DistillguardError):
    """An action was refused (missing reason, unknown target, bad parameter)."""


def _clean_reason(reason: str | None, required: bool) -> str:
    r = (reason or "").strip()
    if required and not r:
        raise ActionError("a reason is required")
    if len(r) > MAX_REASON:
        raise ActionError(f"reasons are at most {MAX_REASON} characters")
    return r


class Actions:
    """Applies analysts' actions to the store, the gateway state and the audit log.

    Parameters
    ----------
    db : ConsoleDB
    audit : AuditLog
        The console's hash-chained log (its own chain, like each gateway worker's).
    state : StateStore
        The gateway's state store (``RedisState`` shared with the gateway; ``MemoryState``
        when the console runs in the gateway's process or alone).
    policy : Policy
        The policy in force at the gateway; its version is stamped on every response and its
        parameters (e.g. a throttle's ``rpm``) are recorded with it.
    shared_state : bool
        Whether ``state`` is shared with a gateway (shown to analysts).
    """

    def __init__(self, db: ConsoleDB, audit: AuditLog, state: StateStore, policy: Policy,
                 shared_state: bool = False) -> None:
        self.db, self.audit, self.state, self.policy = db, audit, state, policy
        self.shared_state = shared_state

    # ------------------------------------------------------------------ core
    def _record(self, s: Session, action: str, accounts: Sequence[str], *,
                campaign_id: str | None = None, reason: str = "",
                params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        accounts = list(dict.fromkeys(accounts))
        fields: dict[str, Any] = {"actor": s.username, "role": s.role, "action": action,
                                  "campaign_id": campaign_id, "reason": reason,
                                  "params": params or {}, "n_accounts": len(accounts),
                                  "policy_version": self.policy.version, **extra}
        if len(accounts) == 1:
            fields["account_id"] = accounts[0]
        elif accounts:
            fields["account_ids"] = accounts
        entry = self.audit.append("console_action", **fields)
        ts = datetime.now()
        p = orjson.dumps(params or {}).decode()
        rows = [[ts, s.username, s.role, action, a, campaign_id, reason, p, entry["seq"],
                 entry["hash"]] for a in accounts] or [
            [ts, s.username, s.role, action, None, campaign_id, reason, p, entry["seq"],
             entry["hash"]]]
        with self.db.cursor() as c:
            c.executemany("""INSERT INTO console_actions (ts, actor, role, action, account_id,
                             campaign_id, reason, params, audit_seq, audit_hash)
                             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", rows)
        return entry

    def _known(self, accounts: Sequence[str]) -> list[str]:
        if not accounts:
            raise ActionError("no accounts selected")
        known = {r["account_id"] for r in self.db.rows(
            "SELECT account_id FROM console_account_index WHERE list_contains(?, account_id)",
            [list(accounts)])}
        missing = [a for a in accounts if a not in known]
        if missing:
            raise ActionError(f"{len(missing)} unknown account(s), e.g. {missing[0][:80]!r}")
        return list(accounts)

    # ------------------------------------------------------------------ verdicts
    def confirm(self, s: Session, accounts: Sequence[str], *, campaign_id: str | None = None,
                reason: str = "") -> dict[str, Any]:
        """Confirm as distillation: the accounts become ``distill`` labels."""
        return self._record(s, "confirm", self._known(accounts), campaign_id=campaign_id,
                            reason=_clean_reason(reason, False))

    def dismiss(self, s: Session, accounts: Sequence[str], reason: str, *,
                campaign_id: str | None = None, exception: tuple[str, str] | None = None,
                review_days: int = DEFAULT_REVIEW_DAYS) -> dict[str, Any]:
        """Dismiss as a false positive (reason required): ``benign`` labels, and with
        ``exception`` = (kind, value) a documented, reviewable exception for the pattern."""
        reason = _clean_reason(reason, True)
        accounts = self._known(accounts)
        entry = self._record(s, "dismiss", accounts, campaign_id=campaign_id, reason=reason,
                             params={"exception": list(exception) if exception else None})
        if exception is not None:
            self.add_exception(s, exception[0], exception[1], reason, review_days=review_days,
                               pattern=f"dismissed {len(accounts)} account(s)"
                               + (f" of campaign {campaign_id}" if campaign_id else ""),
                               source_seq=int(entry["seq"]))
        return entry

    def reopen(self, s: Session, accounts: Sequence[str], reason: str = "") -> dict[str, Any]:
        return self._record(s, "reopen", self._known(accounts),
                            reason=_clean_reason(reason, False))

    # ------------------------------------------------------------------ responses
    def respond(self, s: Session, accounts: Sequence[str], action: str, reason: str, *,
                campaign_id: str | None = None) -> dict[str, Any]:
        """Apply a response: it goes into the gateway's state store first, as the account's
        standing action (``respond.online.decide`` reads it on every request). A suspension
        already in force is not replaced by a lesser action."""
        if action not in RESPONSES:
            raise ActionError(f"response must be one of {', '.join(RESPONSES)}")
        reason = _clean_reason(reason, True)
        accounts = self._known(accounts)
        params = self.policy_params(action)
        info = {"rule": f"console:{s.username}", "ts": time.time(), "by": s.username,
                "reason": reason[:200], "policy_version": self.policy.version,
                "source": "console", "action": action, "params": params}
        for a in accounts:         # StateStoreError propagates: nothing is recorded as done
            cur = self.state.suspended(a)
            if cur is not None:
                if cur.get("action", "suspend") == "suspend":
                    continue
                self.state.unsuspend(a)
            self.state.suspend(a, info)
        status, code = ERROR_CODES.get(action, (None, None))
        return self._record(s, action, accounts, campaign_id=campaign_id, reason=reason,
                            params={**params, "gateway_error": code, "gateway_status": status},
                            enforced_at_gateway=self.shared_state)

    def lift(self, s: Session, accounts: Sequence[str], reason: str, *,
             campaign_id: str | None = None) -> dict[str, Any]:
        """End responses on the accounts (removes the gateway suspension record)."""
        reason = _clean_reason(reason, True)
        accounts = self._known(accounts)
        for a in accounts:
            self.state.unsuspend(a)
        return self._record(s, "lift", accounts, campaign_id=campaign_id, reason=reason)

    def policy_params(self, action: str) -> dict[str, Any]:
        """The parameters the policy in force gives ``action`` (its first such rule)."""
        for r in self.policy.rules:
            if r.action == action:
                return dict(r.params)
        return dict(self.policy.defaults.get(action) or {})

    def gateway_state(self, accounts: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Suspension records the gateway's state store holds for ``accounts``."""
        out = {}
        for a in accounts:
            rec = self.state.suspended(a)
            if rec is not None:
                out[a] = rec
        return out

    # ------------------------------------------------------------------ exceptions
    def add_exception(self, s: Session, kind: str, value: str, reason: str, *,
                      review_days: int = DEFAULT_REVIEW_DAYS, pattern: str = "",
                      source_seq: int | None = None) -> int:
        """A documented exception: what, why, who, until when it must be reviewed."""
        if kind not in EXCEPTION_KINDS:
            raise ActionError(f"exception kind must be one of {', '.join(EXCEPTION_KINDS)}")
        value = (value or "").strip()
        if not value or len(value) > 512:
            raise ActionError("an exception needs a value (at most 512 characters)")
        reason = _clean_reason(reason, True)
        if not 1 <= int(review_days) <= 365:
            raise ActionError("review within 1 to 365 days")
        review_by = date.today() + timedelta(days=int(review_days))
        entry = self.audit.append("console_action", actor=s.username, role=s.role,
                                  action="add_exception", exception_kind=kind,
                                  exception_value=value, reason=reason,
                                  review_by=review_by.isoformat(), source_seq=source_seq,
                                  policy_version=self.policy.version)
        eid = int(self.db.value("SELECT nextval('console_exception_id')"))
        self.db.execute("""INSERT INTO console_exceptions (id, kind, value, reason, pattern,
                           created_by, created_at, review_by, source_action)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        [eid, kind, value, reason, pattern or f"{kind} allow-listed",
                         s.username, datetime.now(), review_by, entry["seq"]])
        return eid

    def allowlist(self, s: Session, kind: str, value: str, reason: str,
                  review_days: int = DEFAULT_REVIEW_DAYS) -> int:
        """Allow-list an org or an API key (an exception of that kind)."""
        if kind not in ("org", "api_key"):
            raise ActionError("allow-list an org or an api_key")
        return self.add_exception(s, kind, value, reason, review_days=review_days,
                                  pattern=f"{kind} allow-listed")

    def revoke_exception(self, s: Session, eid: int, reason: str) -> None:
        reason = _clean_reason(reason, True)
        row = self.db.one("SELECT * FROM console_exceptions WHERE id = ?", [int(eid)])
        if row is None or row["status"] != "active":
            raise ActionError("no such active exception")
        self.audit.append("console_action", actor=s.username, role=s.role,
                          action="revoke_exception", exception_id=int(eid),
                          exception_kind=row["kind"], exception_value=row["value"],
                          reason=reason, policy_version=self.policy.version)
        self.db.execute("""UPDATE console_exceptions SET status = 'revoked', revoked_by = ?,
                           revoked_at = ? WHERE id = ?""", [s.username, datetime.now(), int(eid)])

    def exceptions(self, status: str | None = None) -> list[dict[str, Any]]:
        rows = self.db.rows("""
            SELECT e.*, e.review_by < current_date AS overdue FROM console_exceptions e
            WHERE ? IS NULL OR status = ? ORDER BY status, review_by, id""", [status, status])
        return rows

    # ------------------------------------------------------------------ other audited events
    def note(self, s: Session | None, action: str, **fields: Any) -> dict[str, Any]:
        """An audit entry without account rows (logins, exports, user management)."""
        who = {"actor": s.username, "role": s.role} if s else {}
        return self.audit.append("console_action", action=action, **who, **fields)
