"""Making untrusted text safe for the report.

Everything that comes from request logs (prompts, skeletons, user agents, account ids, model
names, reasons, campaign fields...) is attacker-controlled. It goes into the page only through
:func:`esc`, which bounds its length, neutralises control and bidi-override characters and
HTML-escapes it, and into plots only through :func:`mpl_text`.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

#: C0/C1 controls (except tab/newline), zero-width and bidi override/isolate characters: they
#: can hide or visually reorder text in front of an analyst (Trojan-Source style spoofing).
_UNSAFE_CHARS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)
_REPLACEMENT = "\ufffd"
_ELLIPSIS = "\u2026"


def clean(value: Any, limit: int = 200) -> str:
    """Return ``value`` as bounded, printable text (NOT yet HTML-escaped)."""
    if value is None:
        return ""
    if isinstance(value, str):
        s = value
    elif isinstance(value, (dict, list, tuple)):
        try:
            s = json.dumps(value, default=str, ensure_ascii=False)[: limit * 2 + 16]
        except (TypeError, ValueError):
            s = str(value)[: limit * 2 + 16]
    else:
        s = str(value)
    limit = max(1, int(limit))
    if len(s) > limit:
        s = s[: limit - 1] + _ELLIPSIS
    s = _UNSAFE_CHARS.sub(_REPLACEMENT, s)
    # Lone surrogates would break UTF-8 encoding of the page.
    return s.encode("utf-8", "replace").decode("utf-8")


def esc(value: Any, limit: int = 200) -> str:
    """Bound, clean and HTML-escape ``value`` (quotes included, so safe in attributes)."""
    return html.escape(clean(value, limit), quote=True)


def mpl_text(value: Any, limit: int = 40) -> str:
    """Bounded single-line text for matplotlib labels, with mathtext disabled via escaping."""
    s = clean(value, limit).replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return s.replace("$", r"\$")
