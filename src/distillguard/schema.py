"""The canonical request-log schema: what one API request looks like to distillguard.

Input files carry the *canonical record* (documented in docs/schema.md, JSON Schema in
``data/request-log.schema.json``). Ingest normalises it into the *store row* below: one
flat, bounded row per request, which is what every later stage reads.
"""

from __future__ import annotations

import pyarrow as pa

REQUIRED_FIELDS = ("request_id", "ts", "account_id", "model")

#: Optional top-level fields of the canonical record (anything else goes to ``extra``).
OPTIONAL_FIELDS = (
    "messages", "prompt", "org_id", "api_key_id", "ip", "user_agent", "payment_fingerprint",
    "signup_channel", "account_created", "country", "system", "tools", "reasoning_effort",
    "input_tokens", "output_tokens", "response", "status",
)

KNOWN_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)

#: The store row. ``prompt`` is the text of the last user turn, ``context_chars`` the size of
#: everything before it; both bounded at ingest (see config ``ingest.max_prompt_chars``).
STORE_SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("ts", pa.timestamp("us")),              # UTC, naive
    ("account_id", pa.string()),
    ("model", pa.string()),
    ("prompt", pa.string()),
    ("system", pa.string()),
    ("n_messages", pa.int32()),
    ("n_user_turns", pa.int32()),
    ("context_chars", pa.int64()),
    ("n_tools", pa.int32()),
    ("org_id", pa.string()),
    ("api_key_id", pa.string()),
    ("ip", pa.string()),
    ("user_agent", pa.string()),
    ("payment_fingerprint", pa.string()),
    ("signup_channel", pa.string()),
    ("account_created", pa.timestamp("us")),
    ("country", pa.string()),
    ("reasoning_effort", pa.string()),
    ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("response", pa.string()),
    ("status", pa.string()),
    ("extra", pa.string()),                  # JSON object of unknown fields
    ("source", pa.string()),                 # file:line the row came from
])

STORE_COLUMNS = tuple(STORE_SCHEMA.names)
