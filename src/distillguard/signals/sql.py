"""The per-request signal query, written once as SQL text for every engine."""

from __future__ import annotations

from distillguard.config import Config
from distillguard.signals.rules import load_rules, sql_literal


def scan_text_sql(cfg: Config) -> str:
    s = cfg["signals"]
    head, tail, sysn = int(s["scan_head_chars"]), int(s["scan_tail_chars"]), int(s["scan_system_chars"])
    return (
        f"(CASE WHEN length(prompt) <= {head + tail} THEN coalesce(prompt, '') "
        f"ELSE left(prompt, {head}) || ' ' || right(prompt, {tail}) END) "
        f"|| ' ' || coalesce(left(system, {sysn}), '')")


def signals_sql(cfg: Config) -> str:
    """SELECT producing the ``signals`` table (without template_id) from ``requests``."""
    flags, caps = load_rules(cfg)
    scan = scan_text_sql(cfg)
    flag_cols = ",\n  ".join(
        f"regexp_matches(scan, {sql_literal(r.pattern)}) AS {r.name}" for r in flags)
    whens = "\n    ".join(
        f"WHEN {'n_tools > 0 OR ' if r.name == 'agentic' else ''}"
        f"regexp_matches(scan, {sql_literal(r.pattern)}) THEN {sql_literal(r.name)}"
        for r in caps)
    k = int(cfg["signals"]["skeleton_words"])
    head, tail = int(cfg["signals"]["scan_head_chars"]), int(cfg["signals"]["scan_tail_chars"])
    norm = (
        "trim(regexp_replace(regexp_replace(regexp_replace(regexp_replace(lower("
        f"CASE WHEN length(prompt) <= {head + tail} THEN coalesce(prompt, '') "
        f"ELSE left(prompt, {head}) || ' ' || right(prompt, {tail}) END), "
        r"'https?://\S+', ' <url> ', 'g'), '[\w.+-]+@[\w-]+\.[\w.]+', ' <email> ', 'g'), "
        r"'\d+', '0', 'g'), '\s+', ' ', 'g'))")
    return f"""
SELECT request_id, account_id, ts, model,
  {flag_cols},
  CASE
    {whens}
    ELSE 'chat' END AS capability,
  CASE WHEN len(words) <= {2 * k} THEN array_to_string(words, ' ')
       ELSE array_to_string(words[1:{k}], ' ') || ' … ' || array_to_string(words[-{k}:], ' ')
  END AS skeleton,
  CASE WHEN len(words) >= 10 THEN array_to_string(words[1:6], ' ') END AS head_key,
  CASE WHEN len(words) >= 10 THEN array_to_string(words[-6:], ' ') END AS tail_key
FROM (
  SELECT request_id, account_id, ts, model, n_tools, {scan} AS scan,
         string_split({norm}, ' ') AS words
  FROM requests
)
"""
