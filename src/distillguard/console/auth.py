"""Users, roles, sessions and CSRF tokens for the console.

* Passwords are hashed with Argon2id (``argon2-cffi``'s :class:`PasswordHasher`, its
  RFC 9106 low-memory profile); hashes are re-computed on login when the parameters change.
* A session is a random 256-bit token in an ``HttpOnly``, ``SameSite=Strict`` cookie; the
  store keeps only its SHA-256, the user and the session's CSRF token, with an expiry.
* Every state-changing request carries the session's CSRF token in a form field
  (``csrf``) or the ``X-CSRF-Token`` header; the login form uses a double-submit cookie.

Roles are ordered: ``viewer`` reads; ``analyst`` also acts (verdicts, responses, exceptions,
exports, recalibration previews); ``admin`` also manages users and applies recalibrations.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from distillguard.console._db import ConsoleDB
from distillguard.errors import DistillguardError

__all__ = ["ROLES", "AuthError", "Session", "Users", "role_at_least"]

ROLES = ("viewer", "analyst", "admin")
SESSION_TTL = timedelta(hours=8)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12

_hasher = PasswordHasher()


class AuthError(DistillguardError):
    """A user or password operation was refused (bad name, role, short password)."""


def role_at_least(role: str, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Session:
    """A logged-in user."""

    username: str
    role: str
    csrf: str
    token_hash: str

    def can(self, needed: str) -> bool:
        return role_at_least(self.role, needed)


def _h(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now().replace(microsecond=0)


class Users:
    """User accounts and sessions in the store's ``console_users`` / ``console_sessions``."""

    def __init__(self, db: ConsoleDB) -> None:
        self.db = db

    def add(self, username: str, password: str, role: str) -> None:
        if not _NAME_RE.match(username or ""):
            raise AuthError("user names are 1-64 letters, digits and . _ @ -")
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}")
        if len(password or "") < MIN_PASSWORD:
            raise AuthError(f"passwords need at least {MIN_PASSWORD} characters")
        if self.db.value("SELECT count(*) FROM console_users WHERE username = ?", [username]):
            raise AuthError(f"user {username} exists")
        self.db.execute("INSERT INTO console_users (username, role, pw_hash) VALUES (?, ?, ?)",
                        [username, role, _hasher.hash(password)])

    def set_role(self, username: str, role: str) -> None:
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}")
        self.db.execute("UPDATE console_users SET role = ? WHERE username = ?", [role, username])
        self.db.execute("DELETE FROM console_sessions WHERE username = ?", [username])

    def set_password(self, username: str, password: str) -> None:
        if len(password or "") < MIN_PASSWORD:
            raise AuthError(f"passwords need at least {MIN_PASSWORD} characters")
        self.db.execute("UPDATE console_users SET pw_hash = ? WHERE username = ?",
                        [_hasher.hash(password), username])
        self.db.execute("DELETE FROM console_sessions WHERE username = ?", [username])

    def disable(self, username: str, disabled: bool = True) -> None:
        self.db.execute("UPDATE console_users SET disabled = ? WHERE username = ?",
                        [disabled, username])
        if disabled:
            self.db.execute("DELETE FROM console_sessions WHERE username = ?", [username])

    def list(self) -> list[dict]:
        return self.db.rows("SELECT username, role, created_at, disabled FROM console_users "
                            "ORDER BY username")

    def count(self) -> int:
        return int(self.db.value("SELECT count(*) FROM console_users"))

    def check(self, username: str, password: str) -> str | None:
        """The user's role when the password is right and the user enabled, else None."""
        row = self.db.one("SELECT role, pw_hash, disabled FROM console_users WHERE username = ?",
                          [username])
        if row is None:
            # Same work as a real check, so a timing probe cannot list user names.
            try:
                _hasher.verify(_DUMMY, password or "")
            except (VerificationError, InvalidHashError):
                pass
            return None
        try:
            _hasher.verify(row["pw_hash"], password or "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row["disabled"]:
            return None
        if _hasher.check_needs_rehash(row["pw_hash"]):
            self.db.execute("UPDATE console_users SET pw_hash = ? WHERE username = ?",
                            [_hasher.hash(password), username])
        return str(row["role"])

    # ---------------------------------------------------------------- sessions
    def login(self, username: str) -> tuple[str, Session]:
        """Start a session; returns the cookie token and the session."""
        role = self.db.value("SELECT role FROM console_users WHERE username = ?", [username])
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = _now()
        self.db.execute("DELETE FROM console_sessions WHERE expires_at < ?", [now])
        self.db.execute("INSERT INTO console_sessions VALUES (?, ?, ?, ?, ?)",
                        [_h(token), username, csrf, now, now + SESSION_TTL])
        return token, Session(username, str(role), csrf, _h(token))

    def session(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        row = self.db.one("""
            SELECT s.username, u.role, s.csrf, s.token_hash FROM console_sessions s
            JOIN console_users u USING (username)
            WHERE s.token_hash = ? AND s.expires_at > ? AND NOT u.disabled""",
                          [_h(token), _now()])
        return Session(row["username"], row["role"], row["csrf"], row["token_hash"]) \
            if row else None

    def logout(self, s: Session) -> None:
        self.db.execute("DELETE FROM console_sessions WHERE token_hash = ?", [s.token_hash])


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; an empty or missing token never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


_DUMMY = _hasher.hash(secrets.token_urlsafe(16))
