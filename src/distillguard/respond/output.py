"""Output actions on OpenAI-compatible responses: strip reasoning, in whole bodies and streams.

Reasoning reaches callers in three shapes, all removed: dedicated fields (``reasoning_content``
as in DeepSeek/vLLM, ``reasoning``, ``reasoning_details``), ``<think>…</think>`` blocks inside
``content``, and typed content parts (``thinking``/``reasoning``). In streams a tag can be
split across chunks, so :class:`ThinkStripper` keeps a small per-choice buffer.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REASONING_FIELDS", "StreamStripper", "ThinkStripper", "cap_max_tokens",
           "strip_reasoning_body"]

REASONING_FIELDS = ("reasoning_content", "reasoning", "reasoning_details", "thinking")
_PART_TYPES = ("thinking", "reasoning", "redacted_thinking")
_OPEN, _CLOSE = "<think>", "</think>"
_THINK_RE = re.compile(r"<think>.*?(</think>|\Z)", re.S)


def _strip_text(s: str) -> str:
    return _THINK_RE.sub("", s)


def _strip_message(msg: dict[str, Any]) -> bool:
    changed = False
    for f in REASONING_FIELDS:
        if f in msg:
            msg.pop(f)
            changed = True
    c = msg.get("content")
    if isinstance(c, str) and "<think>" in c:
        msg["content"] = _strip_text(c).lstrip("\n")
        changed = True
    elif isinstance(c, list):
        kept = [p for p in c if not (isinstance(p, dict) and p.get("type") in _PART_TYPES)]
        if len(kept) != len(c):
            msg["content"] = kept
            changed = True
    return changed


def strip_reasoning_body(body: dict[str, Any]) -> bool:
    """Remove reasoning from a non-streamed chat completion in place; True if anything went."""
    changed = False
    for ch in body.get("choices") or []:
        if isinstance(ch, dict) and isinstance(ch.get("message"), dict):
            changed |= _strip_message(ch["message"])
    usage = body.get("usage")
    if isinstance(usage, dict):
        # Reasoning token counts reveal trace length; keep totals, drop the breakdown.
        details = usage.get("completion_tokens_details")
        if isinstance(details, dict) and "reasoning_tokens" in details:
            details.pop("reasoning_tokens")
    return changed


class ThinkStripper:
    """Incremental ``<think>`` remover for one stream of text deltas."""

    def __init__(self) -> None:
        self.inside = False
        self.pending = ""

    def feed(self, text: str) -> str:
        buf, out = self.pending + text, []
        self.pending = ""
        while buf:
            tag = _CLOSE if self.inside else _OPEN
            i = buf.find(tag)
            if i < 0:
                keep = _partial_suffix(buf, tag)
                if not self.inside:
                    out.append(buf[:len(buf) - keep])
                self.pending = buf[len(buf) - keep:] if keep else ""
                break
            if not self.inside:
                out.append(buf[:i])
            buf = buf[i + len(tag):]
            self.inside = not self.inside
        return "".join(out)

    def flush(self) -> str:
        rest, self.pending = ("" if self.inside else self.pending), ""
        return rest


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:k]):
            return k
    return 0


class StreamStripper:
    """Applies strip_reasoning to parsed ``chat.completion.chunk`` objects of one stream."""

    def __init__(self) -> None:
        self._think: dict[int, ThinkStripper] = {}
        self.stripped = False

    def chunk(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The cleaned chunk, or None when nothing is left worth sending."""
        keep = False
        for ch in obj.get("choices") or []:
            if not isinstance(ch, dict):
                continue
            delta = ch.get("delta")
            if isinstance(delta, dict):
                for f in REASONING_FIELDS:
                    if f in delta:
                        delta.pop(f)
                        self.stripped = True
                c = delta.get("content")
                ts = self._think.setdefault(int(ch.get("index") or 0), ThinkStripper())
                if isinstance(c, str):
                    new = ts.feed(c)
                    if ch.get("finish_reason"):
                        new += ts.flush()
                    if new != c:
                        self.stripped = True
                    delta["content"] = new
                elif ch.get("finish_reason"):
                    tail = ts.flush()
                    if tail:
                        delta["content"] = tail
                if any(v not in (None, "", [], {}) for k, v in delta.items() if k != "role") \
                        or "role" in delta:
                    keep = True
            if ch.get("finish_reason") or ch.get("logprobs"):
                keep = True
        if obj.get("usage"):
            keep = True
            details = (obj["usage"] or {}).get("completion_tokens_details")
            if isinstance(details, dict):
                details.pop("reasoning_tokens", None)
        if not obj.get("choices") and not obj.get("usage"):
            keep = True
        return obj if keep else None


def cap_max_tokens(payload: dict[str, Any], cap: int) -> bool:
    """Lower max_tokens / max_completion_tokens to ``cap``; True if the request changed."""
    changed = False
    present = [k for k in ("max_tokens", "max_completion_tokens") if k in payload]
    for k in present or ["max_tokens"]:
        v = payload.get(k)
        if not isinstance(v, int) or v > cap:
            payload[k] = cap
            changed = True
    return changed
