"""What each link community does as a whole (the ``groups`` table).

A hydra's accounts look ordinary one by one: a few dozen requests each, nothing that a
per-account score can hold on to. As a group they pool hundreds of requests, and their
coordination shows on channels that are independent for unrelated accounts: shared
infrastructure (addresses, cards), a shared client (system prompt, template), rotating
proxy exits, accounts created in a burst. Legitimate groups usually share one channel (a
campus NAT and its grant card, a framework's system prompt, a family card); the
coordination figure ``g_coordination`` therefore counts the channels *beyond* the
strongest one, which the group's own reason to exist explains.

Every column is computed from the per-account ``features`` table, the ``communities`` and
the account keys the links were built from, so both engines run the same SQL on the
driver.
"""

from __future__ import annotations

from distillguard.config import Config

#: Per-account features pooled over a group's requests (request-weighted means).
POOLED = ("cot_rate", "rubric_rate", "censor_rate", "elicit_model_rate", "focus_rate",
          "single_turn_share", "novelty", "tools_share", "high_effort_share",
          "template_top_share")

#: Group columns and what they mean (docs/CONTRACTS.md lists them too).
GROUP_COLUMNS = {
    "g_size": "accounts in the group",
    "g_requests": "requests of all its accounts",
    **{f"g_{c}": f"{c} over the group's pooled requests" for c in POOLED},
    "g_pivot_share": "share of the group's traffic in a new model's first day on that model",
    "g_hour_entropy": "mean hour-of-day entropy of its accounts",
    "g_age_days": "median account age at first request",
    "g_signup": "share of its accounts from a subsidised signup channel",
    "g_rotation": "share of its accounts spread over >= `rotation_prefixes` network prefixes",
    "g_cover_infra": "share of its accounts sharing an address, /24 or card with another member",
    "g_cover_card": "share of its accounts sharing a card with another member",
    "g_cover_client": "share of its accounts sharing a system prompt or template with another "
                      "member",
    "g_burst": "largest share of its accounts created within `created_days` of each other",
    "g_cover_org": "share of its accounts sharing an organisation id (a declared relationship)",
    "g_coordination": "coordination channels beyond the strongest one: infrastructure, "
                      "client, rotating exits, creation burst (each a member share, 0-3)",
}


def group_stats_sql(keys: str, cfg: Config) -> str:
    """One row per community (``community >= 0``) with every ``GROUP_COLUMNS`` column.

    ``keys`` names the relation of account keys (``linking.keys.account_keys_sql``).
    """
    gc = cfg["linking"]["groups"]
    rot = int(gc["rotation_prefixes"])
    days = int(cfg["linking"]["conjunction"]["created_days"])
    pooled = ",\n    ".join(
        f"sum(n_requests * coalesce({c}, 0)) / sum(n_requests) AS g_{c}" for c in POOLED)
    return f"""
WITH m AS (
  SELECT f.*, c.community FROM features f JOIN communities c USING (account_id)
  WHERE c.community >= 0
),
base AS (
  SELECT community, count(*) AS g_size, sum(n_requests) AS g_requests,
    {pooled},
    coalesce(sum(pivot_share * pivot_window_requests) / nullif(sum(pivot_window_requests), 0),
             0) AS g_pivot_share,
    avg(hour_entropy) AS g_hour_entropy,
    median(account_age_days) AS g_age_days,
    avg(nonstandard_signup) AS g_signup,
    avg(CASE WHEN n_prefixes >= {rot} THEN 1.0 ELSE 0.0 END) AS g_rotation
  FROM m GROUP BY community
),
kc AS (
  SELECT k.account_id, c.community, k.kind,
         count(*) OVER (PARTITION BY c.community, k.kind, k.key) AS n_in
  FROM {keys} k JOIN communities c ON k.account_id = c.account_id
  WHERE c.community >= 0 AND k.kind IN ('ip', 'ip_prefix', 'payment', 'system', 'template', 'org')
),
cover AS (
  SELECT community,
    count(DISTINCT CASE WHEN kind IN ('ip', 'ip_prefix', 'payment') THEN account_id END)
      AS n_infra,
    count(DISTINCT CASE WHEN kind = 'payment' THEN account_id END) AS n_card,
    count(DISTINCT CASE WHEN kind IN ('system', 'template') THEN account_id END) AS n_client,
    count(DISTINCT CASE WHEN kind = 'org' THEN account_id END) AS n_org
  FROM kc WHERE n_in >= 2 GROUP BY community
),
burst AS (
  SELECT x.community, max(x.n_near) AS n_burst FROM (
    SELECT a.community, a.account_id, count(*) AS n_near
    FROM m a JOIN m b ON a.community = b.community
      AND b.created_day >= a.created_day AND b.created_day <= a.created_day + {days}
    GROUP BY a.community, a.account_id) x
  GROUP BY x.community
),
g AS (
  SELECT base.*,
    coalesce(cover.n_infra, 0) / g_size AS g_cover_infra,
    coalesce(cover.n_card, 0) / g_size AS g_cover_card,
    coalesce(cover.n_client, 0) / g_size AS g_cover_client,
    coalesce(cover.n_org, 0) / g_size AS g_cover_org,
    CASE WHEN coalesce(burst.n_burst, 0) >= 2 THEN burst.n_burst / g_size ELSE 0.0 END
      AS g_burst
  FROM base LEFT JOIN cover USING (community) LEFT JOIN burst USING (community)
)
SELECT g.*,
  g_cover_infra + g_cover_client + g_rotation + g_burst
    - greatest(g_cover_infra, g_cover_client, g_rotation, g_burst) AS g_coordination
FROM g
"""
