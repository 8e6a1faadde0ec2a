"""Caller authentication: API key → account and its attributes.

Keys file (YAML or JSON)::

    keys:
      "sk-live-abc": {account_id: acct-1, org: org-9, country: US, nationality: US,
                      signup_channel: standard, employee: false,
                      account_created: 2025-03-01T00:00:00Z,
                      payment_fingerprint: card-7f3a}   # optional: card-sharing evidence
      "sha256:9f86d0...": {account_id: acct-2}      # store a key's SHA-256, not the key

The key is read from ``Authorization: Bearer <key>`` or ``X-Api-Key``. For tests and local
evaluation only, ``allow_account_header=True`` accepts ``X-Account-Id: <account>`` instead
(attributes from an optional ``accounts:`` section of the same file). Never enable it on a
gateway reachable by customers: anyone could claim any account.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from distillguard.respond._errors import RespondError
from distillguard.respond.directives import UserAttrs

__all__ = ["Caller", "KeyStore"]


@dataclass(frozen=True)
class Caller:
    """An authenticated caller."""

    account_id: str
    api_key_id: str | None
    attrs: UserAttrs
    account_created: float | None = None
    payment_fingerprint: str | None = None


def _epoch(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=UTC).timestamp()
    if isinstance(v, int | float):
        return float(v)
    dt = datetime.fromisoformat(str(v).replace("z", "Z"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _key_id(key: str) -> str:
    """Stable, non-secret id of a key for logs (the key itself is never written)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyStore:
    """Maps API keys (plain or ``sha256:<hex>``) to accounts; only key hashes are kept in memory."""

    def __init__(self, keys: Mapping[str, Mapping[str, Any]] | None = None,
                 accounts: Mapping[str, Mapping[str, Any]] | None = None,
                 allow_account_header: bool = False) -> None:
        self.allow_account_header = allow_account_header
        self._by_hash: dict[str, Mapping[str, Any]] = {}
        for k, v in (keys or {}).items():
            if not isinstance(v, Mapping) or not v.get("account_id"):
                raise RespondError(f"keys file: entry for key {k[:12]}… needs account_id")
            h = k[7:].lower() if k.startswith("sha256:") else hashlib.sha256(k.encode()).hexdigest()
            self._by_hash[h] = v
        self._accounts = {str(a): v for a, v in (accounts or {}).items()}
        for v in self._by_hash.values():
            self._accounts.setdefault(str(v["account_id"]), v)

    @classmethod
    def from_file(cls, path: str | Path | None, allow_account_header: bool = False) -> KeyStore:
        if path is None:
            return cls(allow_account_header=allow_account_header)
        try:
            doc = yaml.safe_load(Path(path).read_text("utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RespondError(f"cannot read keys file {path}: {exc}") from exc
        return cls(doc.get("keys"), doc.get("accounts"), allow_account_header)

    def _caller(self, account_id: str, info: Mapping[str, Any] | None,
                key_id: str | None) -> Caller:
        info = info or {}
        pf = info.get("payment_fingerprint")
        return Caller(account_id, key_id, UserAttrs.from_mapping(info),
                      _epoch(info.get("account_created")), str(pf) if pf else None)

    def authenticate(self, headers: Mapping[str, str]) -> Caller | None:
        """The caller for these request headers, or None (→ 401)."""
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else \
            headers.get("x-api-key", "").strip()
        if key:
            h = hashlib.sha256(key.encode()).hexdigest()
            info = self._by_hash.get(h)
            if info is not None:  # lookup by hash: timing reveals nothing about the key
                return self._caller(str(info["account_id"]), info, _key_id(key))
        if self.allow_account_header:
            acct = headers.get("x-account-id", "").strip()
            if acct and len(acct) <= 256:
                return self._caller(acct, self._accounts.get(acct), None)
        return None
