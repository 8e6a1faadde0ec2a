"""Per-account behavioural features, each defined once as SQL text.

The same definitions run on DuckDB (embedded default) and, transpiled, on Spark. Every feature
is an aggregate over ``_req`` (requests joined with their signals and a few window columns),
grouped by account. Direction is documented per feature; scoring reads them by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from distillguard.config import Config

#: Output tokens of a request: the logged count, else estimated from the logged response text
#: (about 4 characters a token), so logs without usage fields still show short or long
#: answers. One expression for batch features and the online replay.
OUTPUT_TOKENS_SQL = ("coalesce(r.output_tokens, CASE WHEN r.response IS NOT NULL "
                     "THEN CAST(ceil(length(r.response) / 4.0) AS BIGINT) END)")


def ip_prefix_sql(cfg: Config, col: str = "ip") -> str:
    """SQL expression: the network prefix of an address column (IPv4 /24 by default, IPv6
    /48), the address itself when it is neither; defined once for linking and features."""
    p4 = int(cfg["linking"]["ip4_prefix"])
    # /24 keeps the first three octets; other lengths fall back to the full address.
    ip4 = (fr"regexp_extract({col}, '^(\d+\.\d+\.\d+)\.\d+$', 1) || '.0/24'" if p4 == 24
           else f"{col} || '/32'")
    ip6 = (fr"regexp_extract(lower({col}), '^([0-9a-f]{{1,4}}:[0-9a-f]{{1,4}}:[0-9a-f]{{1,4}}):', 1)"
           " || '::/48'")
    return (fr"CASE WHEN regexp_matches({col}, '^\d+\.\d+\.\d+\.\d+$') THEN {ip4} "
            fr"WHEN regexp_matches(lower({col}), '^[0-9a-f]{{1,4}}:[0-9a-f]{{1,4}}:[0-9a-f]{{1,4}}:') "
            f"THEN {ip6} ELSE {col} END")


#: The system prompt as a key: md5 of its first 2,000 characters, lower-cased, whitespace
#: collapsed (the same product or framework prompt sent by different clients is one key).
SYSTEM_KEY_SQL = ("md5(regexp_replace(lower(left(system, 2000)), '\\s+', ' ', 'g'))")


@dataclass(frozen=True)
class Feature:
    name: str
    sql: str          # aggregate expression over _req
    doc: str
    fmt: str = "{:.2f}"


FEATURES: tuple[Feature, ...] = (
    Feature("n_requests", "count(*)", "requests made", "{:,.0f}"),
    Feature("active_days", "count(DISTINCT CAST(ts AS DATE))", "days with any request", "{:.0f}"),
    Feature("req_per_active_hour", "count(*) / count(DISTINCT date_trunc('hour', ts))",
            "requests per hour in which the account was active", "{:.1f}"),
    Feature("gap_cv", "coalesce(stddev_pop(gap_s) / nullif(avg(gap_s), 0), 0)",
            "coefficient of variation of inter-arrival gaps (humans burst: high)"),
    Feature("median_gap_s", "coalesce(median(gap_s), 0)", "median seconds between requests",
            "{:.0f}s"),
    Feature("out_in_ratio", "median(output_tokens / greatest(input_tokens, 1))",
            "median output/input token ratio (harvesting long answers: high)"),
    Feature("mean_output_tokens", "avg(output_tokens)", "mean output tokens (NULL: not logged)",
            "{:.0f}"),
    Feature("novelty", "count(DISTINCT prompt_hash) / count(*)",
            "distinct prompts / requests (eval harnesses repeat a fixed set: low)"),
    # An agent loop re-sends its task with a growing transcript, an evaluation harness
    # re-sends the same request in every run: only the second repeats prompt *and* context.
    Feature("rerun_share", "1 - count(DISTINCT prompt_hash || '|' || CAST(n_user_turns AS "
            "VARCHAR) || '|' || CAST(context_chars AS VARCHAR)) / count(*)",
            "share of requests repeating an earlier request of the account, context included "
            "(re-runs of a fixed prompt set)", "{:.0%}"),
    Feature("single_turn_share", "avg(CASE WHEN n_user_turns <= 1 AND context_chars = 0 "
            "THEN 1.0 ELSE 0.0 END)", "share of requests with no conversation context"),
    Feature("followup_share", "avg(CASE WHEN n_user_turns >= 2 THEN 1.0 ELSE 0.0 END)",
            "share of requests that follow up an earlier user turn of a conversation (tool "
            "rounds of an agent loop are not follow-ups)", "{:.0%}"),
    Feature("tools_share", "avg(CASE WHEN n_tools > 0 THEN 1.0 ELSE 0.0 END)",
            "share of requests defining tools"),
    # Elicitation rates are shares of the account's *distinct* prompts: an agent loop
    # re-sending one task (or a user re-sending one message) counts once.
    Feature("cot_rate", "count(DISTINCT CASE WHEN cot_elicit THEN prompt_hash END) / "
            "count(DISTINCT prompt_hash)",
            "share of distinct prompts eliciting chain-of-thought", "{:.0%}"),
    Feature("rubric_rate", "count(DISTINCT CASE WHEN rubric_grading THEN prompt_hash END) / "
            "count(DISTINCT prompt_hash)",
            "share of distinct prompts asking for rubric grading", "{:.0%}"),
    Feature("censor_rate", "count(DISTINCT CASE WHEN censorship_safe THEN prompt_hash END) / "
            "count(DISTINCT prompt_hash)",
            "share of distinct prompts asking for censorship-safe rewrites", "{:.0%}"),
    Feature("n_elicit", "count(DISTINCT CASE WHEN cot_elicit OR rubric_grading OR "
            "censorship_safe THEN prompt_hash END)", "distinct prompts with any elicitation "
            "signal (counts survive camouflage that dilutes rates; an agent loop re-sending "
            "one task counts once)", "{:,.0f}"),
    Feature("elicit_model_rate", "count(DISTINCT CASE WHEN elicit_model THEN prompt_hash END)"
            " / count(DISTINCT prompt_hash)",
            "share of distinct prompts the learned elicitation model flags (signals.elicit_p "
            "at or above signals.elicit_model_threshold)", "{:.0%}"),
    Feature("elicit_soft_rate", "count(DISTINCT CASE WHEN elicit_soft THEN prompt_hash END)"
            " / count(DISTINCT prompt_hash)",
            "share of distinct prompts the learned elicitation model scores at or above the "
            "looser signals.elicit_soft_threshold (near misses of phrasings it never learnt)",
            "{:.0%}"),
    Feature("n_elicit_model", "count(DISTINCT CASE WHEN elicit_model THEN prompt_hash END)",
            "distinct prompts the learned elicitation model flags (as n_elicit)", "{:,.0f}"),
    # An agent framework's scratchpad ("Thought: / Action:") lives in its system prompt.
    Feature("sys_elicit_rate", "count(DISTINCT CASE WHEN elicit_model AND elicit_sys THEN "
            "prompt_hash END) / count(DISTINCT prompt_hash)",
            "share of distinct prompts the learned model flags only for their system prompt "
            "(the user prompt alone stays below the threshold; signals.elicit_user)", "{:.0%}"),
    Feature("n_system_prompts", "count(DISTINCT sys_key)",
            "distinct system prompts the account sends", "{:.0f}"),
    Feature("focus_rate", "avg(CASE WHEN capability IN ('coding', 'math', 'agentic', "
            "'reasoning') THEN 1.0 ELSE 0.0 END)",
            "share of requests in the capabilities campaigns target", "{:.0%}"),
    Feature("high_effort_share", "avg(CASE WHEN lower(reasoning_effort) IN ('high', 'xhigh', "
            "'max') THEN 1.0 ELSE 0.0 END)", "share of requests at high reasoning effort",
            "{:.0%}"),
    Feature("pivot_share", "coalesce(sum(CASE WHEN in_pivot_window AND on_new_model THEN 1 "
            "ELSE 0 END) / nullif(sum(CASE WHEN in_pivot_window THEN 1 ELSE 0 END), 0), 0)",
            "share of traffic in a new model's first day that went to that model", "{:.0%}"),
    Feature("pivot_window_requests", "sum(CASE WHEN in_pivot_window THEN 1 ELSE 0 END)",
            "requests made in a new model's first day", "{:,.0f}"),
    Feature("account_age_days", "coalesce(date_diff('day', max(account_created), min(ts)), 365)",
            "account age at first request (unknown: 365)", "{:.0f}d"),
    Feature("nonstandard_signup", "max(CASE WHEN lower(signup_channel) IN ('education', "
            "'startup', 'research', 'trial', 'free_credits') THEN 1.0 ELSE 0.0 END)::DOUBLE",
            "signed up through a subsidised channel"),
    Feature("n_ips", "count(DISTINCT ip)", "distinct client IPs", "{:.0f}"),
    Feature("n_api_keys", "count(DISTINCT api_key_id)", "distinct API keys", "{:.0f}"),
    # Infrastructure and its sharing. A rotating proxy spreads one account over many /24s
    # (a home, an office or a carrier NAT keeps it in one or two); the exits, cards and
    # system prompts it uses are counted across every account in the logs.
    Feature("n_prefixes", "count(DISTINCT ip_prefix)",
            "distinct network prefixes (/24, /48) the account came from", "{:.0f}"),
    Feature("shared_ip_share", "avg(CASE WHEN ip_accounts >= 2 THEN 1.0 ELSE 0.0 END)",
            "share of requests from an address other accounts also used", "{:.0%}"),
    Feature("ip_accounts_median", "coalesce(median(ip_accounts), 0)",
            "median number of accounts using the addresses of its requests", "{:.0f}"),
    Feature("card_accounts", "coalesce(max(card_accounts), 0)",
            "accounts paying with its payment method (0: none logged)", "{:.0f}"),
    Feature("system_accounts", "coalesce(max(system_accounts), 0)",
            "accounts sending its system prompt (0: none)", "{:.0f}"),
    Feature("created_day", "max(epoch(account_created)) / 86400.0",
            "account creation, in days since 1970 (NULL: not logged)", "{:.0f}"),
)

#: Features computed from a per-(account, bucket) pre-aggregation, not a plain aggregate.
DERIVED: tuple[Feature, ...] = (
    Feature("hour_entropy", "", "entropy of the hour-of-day histogram / log(24) "
            "(24/7 machine traffic: near 1; human diurnal: lower)"),
    Feature("template_top_share", "", "share of requests in the account's most used prompt "
            "template", "{:.0%}"),
    Feature("capability_top_share", "", "share of requests in the account's main capability",
            "{:.0%}"),
)

#: Joined in from partner intelligence (intel.match_partner_indicators); 0 without it.
PARTNER: tuple[Feature, ...] = (
    Feature("partner_hits", "", "distinct partner indicators matched", "{:.0f}"),
    Feature("partner_confidence", "", "highest partner confidence among them", "{:.0f}"),
)

ALL_FEATURES = {f.name: f for f in FEATURES + DERIVED + PARTNER}


#: The parts of ``_req`` computed over every account's requests (global state): new-model
#: windows, accounts per address, card and system prompt. An incremental run keeps them
#: between runs to tell which accounts they changed (``features.incremental``).
GLOBAL_PARTS = ("windows", "ip_n", "card_n", "sys_r", "sys_a")


def own_sql(cfg: Config, requests: str = "requests") -> str:
    """The columns of ``_req`` that depend on the request alone (its text hashed, its
    address's prefix, ...), plus the keys the global parts join on: ``own`` in
    ``enriched_sql``, kept per request by incremental runs."""
    return f"""SELECT r.request_id, r.account_id, r.ts, r.model, r.payment_fingerprint,
       r.n_user_turns, r.context_chars, r.n_tools,
       r.input_tokens, {OUTPUT_TOKENS_SQL} AS output_tokens, r.reasoning_effort,
       r.account_created,
       r.signup_channel, r.ip, r.api_key_id,
       {ip_prefix_sql(cfg, "r.ip")} AS ip_prefix,
       coalesce(md5(r.prompt), '-') AS prompt_hash  -- md5: same value on every engine
FROM {requests} r"""


def enriched_sql(cfg: Config, *, materialized: Mapping[str, str] | None = None,
                 accounts: str | None = None, request_id: bool = False) -> str:
    """``_req``: requests + signals + inter-arrival gap + new-model window flags.

    Only the columns the feature SQL reads. The new-model windows are few, so the flags come
    from two small joins, not a correlated subquery per request: ``spans`` merges overlapping
    windows into disjoint ones (at most one match per request), and a request matches at most
    one window of its own model (``models`` has one row per model).

    For incremental runs: ``materialized`` maps ``own`` and parts named in ``GLOBAL_PARTS``
    to tables already holding them (``own_sql``, ``global_part_sql``), ``accounts`` names a
    table of the accounts whose rows to produce (every row of each, so the per-account gaps
    stay whole), and ``request_id`` adds the request id (to tell later which rows changed).
    """
    ctes = _enriched_ctes(cfg)
    ctes["own"] = own_sql(cfg)
    for name, table in (materialized or {}).items():
        ctes[name] = f"SELECT * FROM {table}"
    elicit_thr = float(cfg["signals"]["elicit_model_threshold"])
    soft_thr = float(cfg["signals"]["elicit_soft_threshold"])
    scope = (f"\nWHERE r.account_id IN (SELECT account_id FROM {accounts})" if accounts
             else "")
    rid = "r.request_id, " if request_id else ""
    return "\nWITH " + ",\n".join(f"{k} AS ({v})" for k, v in ctes.items()) + f"""
SELECT {rid}r.account_id, r.ts, r.n_user_turns, r.context_chars, r.n_tools,
       r.input_tokens, r.output_tokens, r.reasoning_effort, r.account_created,
       r.signup_channel, r.ip, r.api_key_id, r.ip_prefix,
       ip_n.n AS ip_accounts, card_n.n AS card_accounts, sys_n.n AS system_accounts,
       r.prompt_hash,
       s.capability, s.cot_elicit, s.rubric_grading, s.censorship_safe, s.template_id,
       s.template_size, coalesce(s.elicit_p >= {elicit_thr!r}, false) AS elicit_model,
       coalesce(s.elicit_p >= {soft_thr!r}, false) AS elicit_soft,
       coalesce(eu.user_p < {elicit_thr!r}, false) AS elicit_sys, sys_n.sys_key,
       epoch(r.ts) - lag(epoch(r.ts)) OVER (PARTITION BY r.account_id ORDER BY r.ts) AS gap_s,
       p.s0 IS NOT NULL AS in_pivot_window,
       w.model IS NOT NULL AS on_new_model
FROM own r JOIN signals s USING (request_id)
LEFT JOIN spans p ON r.ts >= p.s0 AND r.ts < p.s1
LEFT JOIN windows w ON r.model = w.model AND r.ts >= w.w0 AND r.ts < w.w1
LEFT JOIN ip_n ON r.ip = ip_n.ip
LEFT JOIN card_n ON r.payment_fingerprint = card_n.payment_fingerprint
LEFT JOIN sys_n ON r.request_id = sys_n.request_id
LEFT JOIN elicit_user eu ON r.request_id = eu.request_id{scope}
"""


def global_part_sql(cfg: Config, name: str, *, materialized: Mapping[str, str] | None = None,
                    requests: str = "requests") -> str:
    """SELECT of one of ``GLOBAL_PARTS`` as ``enriched_sql`` has it: over the whole store,
    or over the table ``requests`` (e.g. the new requests' system-prompt keys), reading the
    parts in ``materialized`` from tables."""
    ctes = _enriched_ctes(cfg, requests)
    for part, table in (materialized or {}).items():
        ctes[part] = f"SELECT * FROM {table}"
    return ("WITH " + ",\n".join(f"{k} AS ({v})" for k, v in ctes.items())
            + f"\nSELECT * FROM {name}")


def _enriched_ctes(cfg: Config, requests: str = "requests") -> dict[str, str]:
    """The WITH parts of ``enriched_sql``, by name, in dependency order."""
    fc = cfg["features"]
    win = int(fc["pivot_window_hours"])
    min_age = int(fc["new_model_min_age_hours"])
    return {
        "start": "SELECT min(ts) AS t0 FROM requests",
        "models": f"""
  SELECT model, min(ts) AS first_seen,
         min(ts) >= (SELECT t0 FROM start) + INTERVAL {min_age} HOUR AS is_new
  FROM requests GROUP BY model
""",
        "windows": f"""SELECT first_seen AS w0, first_seen + INTERVAL {win} HOUR AS w1, model
            FROM models WHERE is_new""",
        "islands": """
  SELECT w0, w1, sum(CASE WHEN prev_end >= w0 THEN 0 ELSE 1 END)
                 OVER (ORDER BY w0, w1 ROWS UNBOUNDED PRECEDING) AS island
  FROM (SELECT w0, w1, max(w1) OVER (ORDER BY w0, w1
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                       AS prev_end
        FROM windows) AS ordered
""",
        "spans": "SELECT min(w0) AS s0, max(w1) AS s1 FROM islands GROUP BY island",
        "ip_n": """SELECT ip, count(DISTINCT account_id) AS n FROM requests
         WHERE ip IS NOT NULL AND ip <> '' GROUP BY ip""",
        "card_n": """SELECT payment_fingerprint, count(DISTINCT account_id) AS n FROM requests
           WHERE payment_fingerprint IS NOT NULL AND payment_fingerprint <> ''
           GROUP BY payment_fingerprint""",
        # account_id rides along so sys_a needs no join back to requests
        "sys_r": f"""SELECT request_id, account_id, {SYSTEM_KEY_SQL} AS sys_key FROM {requests}
          WHERE system IS NOT NULL AND system <> ''""",
        "sys_a": "SELECT sys_key, count(DISTINCT account_id) AS n FROM sys_r GROUP BY sys_key",
        "sys_n": "SELECT s.request_id, a.n, s.sys_key FROM sys_r s JOIN sys_a a USING (sys_key)",
    }


def features_sql(cfg: Config, key: str = "account_id", source: str = "_req") -> str:
    """SELECT producing one row per ``key`` with every feature column, from ``source``
    (``_req``, or a part of it holding every row of the accounts it has)."""
    min_tpl = int(cfg["features"]["min_template_size"])
    aggs = ",\n  ".join(f"{f.sql} AS {f.name}" for f in FEATURES)
    return f"""
WITH base AS (
  SELECT {key},
  {aggs}
  FROM {source} GROUP BY {key}
),
hours AS (
  SELECT {key}, hour(ts) AS h, count(*) AS c FROM {source} GROUP BY {key}, hour(ts)
),
hour_ent AS (
  SELECT {key}, -sum((c / tot) * ln(c / tot)) / ln(24) AS hour_entropy
  FROM (SELECT {key}, c, sum(c) OVER (PARTITION BY {key}) AS tot FROM hours)
  GROUP BY {key}
),
tpl AS (
  SELECT {key}, max(c) AS c FROM (
    SELECT {key}, template_id, count(*) AS c FROM {source}
    WHERE template_size >= {min_tpl} GROUP BY {key}, template_id)
  GROUP BY {key}
),
cap AS (
  SELECT {key}, max(c) AS c FROM (
    SELECT {key}, capability, count(*) AS c FROM {source} GROUP BY {key}, capability)
  GROUP BY {key}
)
SELECT base.*,
       coalesce(hour_ent.hour_entropy, 0) AS hour_entropy,
       coalesce(tpl.c, 0) / base.n_requests AS template_top_share,
       coalesce(cap.c, 0) / base.n_requests AS capability_top_share
FROM base
LEFT JOIN hour_ent USING ({key})
LEFT JOIN tpl USING ({key})
LEFT JOIN cap USING ({key})
"""
