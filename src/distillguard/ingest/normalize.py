"""Canonical record (dict) → flat, bounded store row, or a reason why not.

This is the one place that decides what a valid request is, so every input format (canonical
or adapted) is held to the same rules and quarantined with the same reasons.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from distillguard.schema import KNOWN_FIELDS

_EPOCH = datetime(1970, 1, 1)
_MIN_TS = datetime(2000, 1, 1)
_MAX_TS = datetime(2100, 1, 1)
_MAX_INT64 = 2 ** 63 - 1


class RowError(ValueError):
    """A record cannot become a store row; the message is the reason shown to the user."""


def parse_ts(value: Any, field: str = "ts") -> datetime:
    """RFC 3339 string or epoch seconds / milliseconds / microseconds → naive UTC datetime."""
    if isinstance(value, str):
        return _parse_ts_str(value, field)
    if isinstance(value, bool) or value is None:
        raise RowError(f"{field} is missing")
    if isinstance(value, int | float):
        return _parse_epoch(value, field)
    if isinstance(value, datetime):         # a Parquet TIMESTAMP column; naive means UTC
        if value.tzinfo is not None:
            try:
                value = value.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:
                raise RowError(f"{field} {str(value)[:40]!r} is out of range") from None
        return _check_range(value, field, value)
    raise RowError(f"{field} has type {type(value).__name__}, expected string or number")


@lru_cache(maxsize=65536)
def _parse_ts_str(value: str, field: str) -> datetime:
    # Cached: account_created repeats on every request of an account.
    s = value.strip()
    try:
        dt = datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        try:
            return _parse_epoch(float(s), field)
        except ValueError:
            raise RowError(f"{field} {value[:40]!r} is not RFC 3339 or epoch") from None
    if dt.tzinfo is not None:
        try:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:   # year 1 or 9999 shifted past the calendar by its offset
            raise RowError(f"{field} {value[:40]!r} is outside 2000..2100") from None
    return _check_range(dt, field, value)


def _parse_epoch(value: float, field: str) -> datetime:
    if not math.isfinite(value):
        raise RowError(f"{field} {value!r} is not a finite number")
    v = float(value)
    # Magnitude tells the unit: seconds until 5138, then milliseconds, then microseconds.
    if abs(v) >= 1e14:
        v /= 1e6
    elif abs(v) >= 1e11:
        v /= 1e3
    try:
        dt = datetime.fromtimestamp(v, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        raise RowError(f"{field} {value!r} is out of range") from None
    return _check_range(dt, field, value)


def _check_range(dt: datetime, field: str, raw: Any) -> datetime:
    if not (_MIN_TS <= dt < _MAX_TS):
        raise RowError(f"{field} {str(raw)[:40]!r} is outside 2000..2100")
    return dt


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of an OpenAI content-part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict):
                t = p.get("text", p.get("content"))
                if isinstance(t, str):
                    parts.append(t)
        return "\n".join(parts)
    if isinstance(content, dict):
        t = content.get("text", content.get("content"))
        return t if isinstance(t, str) else ""
    raise RowError(f"message content has type {type(content).__name__}")


def _opt_str(rec: dict[str, Any], key: str, limit: int) -> str | None:
    v = rec.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        return v[:limit]
    if isinstance(v, int | float | bool):
        return str(v)
    raise RowError(f"{key} has type {type(v).__name__}, expected string")


def _opt_int(rec: dict[str, Any], key: str) -> int | None:
    v = rec.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise RowError(f"{key} has type {type(v).__name__}, expected integer")
    try:
        n = int(float(v))
    except (ValueError, OverflowError):     # "NaN", "Infinity", 1e400
        raise RowError(f"{key} {str(v)[:20]!r} is not an integer") from None
    if n < 0:
        raise RowError(f"{key} is negative ({n})")
    if n > _MAX_INT64:      # one such row would fail its whole batch's insert
        raise RowError(f"{key} {str(v)[:20]!r} is larger than a 64-bit integer")
    return n


def _dumps(value: Any, what: str) -> str:
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:   # nesting deeper than orjson writes, huge ints
        raise RowError(f"{what} cannot be stored as JSON: {exc}") from None


def normalize(rec: Any, source: str, limits: dict[str, int]) -> dict[str, Any]:
    """Validate one canonical record and flatten it into a store row (see STORE_SCHEMA)."""
    if not isinstance(rec, dict):
        raise RowError(f"record is a JSON {type(rec).__name__}, expected an object")
    for key in ("request_id", "account_id", "model"):
        v = rec.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise RowError(f"required field {key} is missing")
        if not isinstance(v, str | int):
            raise RowError(f"{key} has type {type(v).__name__}, expected string")
        if len(str(v)) > limits["max_id_chars"]:
            raise RowError(f"{key} is longer than {limits['max_id_chars']} characters")
    if "ts" not in rec:
        raise RowError("required field ts is missing")
    ts = parse_ts(rec["ts"])

    messages = rec.get("messages")
    prompt_field = rec.get("prompt")
    system = rec.get("system")
    n_messages = n_user = 0
    context_chars = 0
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise RowError("messages must be a non-empty list of {role, content}")
        texts = []
        last_user = None
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise RowError(f"messages[{i}] is not an object with a string role")
            t = _text(m.get("content"))
            texts.append(t)
            if m["role"] == "user":
                n_user += 1
                last_user = i
            elif m["role"] in ("system", "developer") and system is None:
                system = t
        n_messages = len(messages)
        if last_user is None:
            # Agent loops can end on a tool result; the newest non-system turn is the prompt.
            last_user = len(messages) - 1
        prompt = texts[last_user]
        context_chars = sum(len(t) for j, t in enumerate(texts) if j != last_user)
    elif prompt_field is not None:
        if not isinstance(prompt_field, str):
            raise RowError(f"prompt has type {type(prompt_field).__name__}, expected string")
        prompt, n_messages, n_user = prompt_field, 1, 1
    else:
        raise RowError("neither messages nor prompt is present")

    if len(prompt) > limits["max_prompt_chars_reject"]:
        raise RowError(
            f"prompt of {len(prompt):,} characters exceeds the limit of "
            f"{limits['max_prompt_chars_reject']:,}")
    extra: dict[str, Any] = {k: v for k, v in rec.items() if k not in KNOWN_FIELDS}
    max_prompt = limits["max_prompt_chars"]
    if len(prompt) > max_prompt:
        extra["_prompt_chars"] = len(prompt)
        prompt = prompt[:max_prompt]

    tools = rec.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RowError("tools must be a list of tool definitions")
    account_created = None
    if rec.get("account_created") is not None:
        account_created = parse_ts(rec["account_created"], "account_created")
    response = rec.get("response")
    if response is not None and not isinstance(response, str):
        response = _dumps(response, "response")
    short = limits["max_field_chars"]
    return {
        "request_id": str(rec["request_id"]),
        "ts": ts,
        "account_id": str(rec["account_id"]),
        "model": str(rec["model"])[:short],
        "prompt": prompt,
        "system": _text(system)[:max_prompt] if system is not None else None,
        "n_messages": n_messages,
        "n_user_turns": n_user,
        "context_chars": context_chars,
        "n_tools": len(tools) if tools else 0,
        "org_id": _opt_str(rec, "org_id", short),
        "api_key_id": _opt_str(rec, "api_key_id", short),
        "ip": _opt_str(rec, "ip", 64),
        "user_agent": _opt_str(rec, "user_agent", short),
        "payment_fingerprint": _opt_str(rec, "payment_fingerprint", short),
        "signup_channel": _opt_str(rec, "signup_channel", short),
        "account_created": account_created,
        "country": _opt_str(rec, "country", 16),
        "reasoning_effort": _opt_str(rec, "reasoning_effort", 32),
        "input_tokens": _opt_int(rec, "input_tokens"),
        "output_tokens": _opt_int(rec, "output_tokens"),
        "response": response[:max_prompt] if response else None,
        "status": _opt_str(rec, "status", 64),
        "extra": _dumps(extra, "unknown fields")[:short * 16] if extra else None,
        "source": source,
    }
