"""The per-request signal query, written once as SQL text for every engine."""

from __future__ import annotations

from distillguard.config import Config
from distillguard.signals.rules import load_rules, sql_literal


def scan_text_sql(cfg: Config, system: str = "system") -> str:
    """The scan text (``elicit_data.scan_text``); ``system="NULL"``: the user part alone."""
    s = cfg["signals"]
    head, tail, sysn = int(s["scan_head_chars"]), int(s["scan_tail_chars"]), int(s["scan_system_chars"])
    return (
        # coalesce first: a NULL prompt must not make the whole scan (system prompt too) NULL
        f"(CASE WHEN coalesce(length(prompt), 0) <= {head + tail} THEN coalesce(prompt, '') "
        f"ELSE left(prompt, {head}) || ' ' || right(prompt, {tail}) END) "
        f"|| ' ' || coalesce(left({system}, {sysn}), '')")


def _prompt_ends_sql(cfg: Config) -> str:
    cut = int(cfg["signals"]["skeleton_chars"])
    return (f"CASE WHEN length(prompt) <= {2 * cut} THEN coalesce(prompt, '') "
            f"ELSE left(prompt, {cut}) || ' … ' || right(prompt, {cut}) END")


def signals_sql(cfg: Config) -> str:
    """SELECT producing the ``signals`` table (without template_id) from ``requests``.

    Helper columns the batch step reads and the stage drops: ``prompt_ends`` (template
    keys) and ``scan`` (the elicitation model's input). The definition every engine shares;
    the embedded engine evaluates the same rules with one RE2 set per batch instead
    (:func:`signals_base_sql`, :class:`~distillguard.signals.rules.RuleSet`).
    """
    flags, caps = load_rules(cfg)
    scan = scan_text_sql(cfg)
    flag_cols = ",\n  ".join(
        f"regexp_matches(scan, {sql_literal(r.pattern)}) AS {r.name}" for r in flags)
    whens = "\n    ".join(
        f"WHEN {'n_tools > 0 OR ' if r.name == 'agentic' else ''}"
        f"regexp_matches(scan, {sql_literal(r.pattern)}) THEN {sql_literal(r.name)}"
        for r in caps)
    return f"""
SELECT request_id, account_id, ts, model,
  {flag_cols},
  CASE
    {whens}
    ELSE 'chat' END AS capability,
  {_prompt_ends_sql(cfg)} AS prompt_ends,
  scan
FROM (
  SELECT request_id, account_id, ts, model, n_tools, prompt, {scan} AS scan
  FROM requests
)
"""


def signals_base_sql(cfg: Config) -> str:
    """:func:`signals_sql` without the rule columns: what the batch step reads, with
    ``n_tools`` (agentic capability) beside ``prompt_ends`` and ``scan``."""
    return f"""
SELECT request_id, account_id, ts, model, coalesce(n_tools, 0) AS n_tools,
  {_prompt_ends_sql(cfg)} AS prompt_ends,
  {scan_text_sql(cfg)} AS scan
FROM requests
"""
