"""Account keys that can be shared: infrastructure, payment, org and templates (SQL, once)."""

from __future__ import annotations

from distillguard.config import Config


def account_keys_sql(cfg: Config) -> str:
    """(account_id, kind, key, n): each key an account used at least ``min_shared_requests``
    times. Templates also need to be a real share of the account's traffic (>= 10%), so one
    common greeting does not tie strangers together."""
    lc = cfg["linking"]
    m = int(lc["min_shared_requests"])
    min_tpl = int(cfg["features"]["min_template_size"])
    p4 = int(lc["ip4_prefix"])
    # /24 keeps the first three octets; other lengths fall back to the full address.
    ip4 = (r"regexp_extract(ip, '^(\d+\.\d+\.\d+)\.\d+$', 1) || '.0/24'" if p4 == 24
           else "ip || '/32'")
    ip6 = (r"regexp_extract(lower(ip), '^([0-9a-f]{1,4}:[0-9a-f]{1,4}:[0-9a-f]{1,4}):', 1)"
           " || '::/48'")
    return f"""
WITH k AS (
  SELECT account_id, 'ip_prefix' AS kind,
         CASE WHEN regexp_matches(ip, '^\\d+\\.\\d+\\.\\d+\\.\\d+$') THEN {ip4}
              WHEN regexp_matches(lower(ip), '^[0-9a-f]{{1,4}}:[0-9a-f]{{1,4}}:[0-9a-f]{{1,4}}:')
                THEN {ip6}
              ELSE ip END AS key
  FROM requests WHERE ip IS NOT NULL AND ip <> ''
  UNION ALL SELECT account_id, 'user_agent', user_agent FROM requests
    WHERE user_agent IS NOT NULL AND user_agent <> ''
  UNION ALL SELECT account_id, 'payment', payment_fingerprint FROM requests
    WHERE payment_fingerprint IS NOT NULL AND payment_fingerprint <> ''
  UNION ALL SELECT account_id, 'org', org_id FROM requests
    WHERE org_id IS NOT NULL AND org_id <> ''
),
infra AS (
  SELECT account_id, kind, key, count(*) AS n FROM k GROUP BY ALL HAVING count(*) >= {m}
),
tpl AS (
  SELECT account_id, 'template' AS kind, template_id AS key, count(*) AS n,
         sum(count(*)) OVER (PARTITION BY account_id) AS tot
  FROM signals WHERE template_size >= {min_tpl}
  GROUP BY account_id, template_id
)
SELECT account_id, kind, key, n FROM infra
UNION ALL
SELECT account_id, kind, key, n FROM tpl WHERE n >= {m} AND n >= 0.1 * tot
"""


def sync_tokens_sql(cfg: Config) -> str:
    """SynchroTrap-style action tokens: (what, time bucket) per account.

    "What" is the prompt template when the request belongs to one, else its capability: two
    unrelated round-the-clock jobs share time buckets but not templates, while load-balanced
    campaign accounts share both.
    """
    minutes = int(cfg["linking"]["sync_bucket_minutes"])
    min_tpl = int(cfg["features"]["min_template_size"])
    return f"""
SELECT account_id,
       (CASE WHEN template_size >= {min_tpl} THEN template_id ELSE capability END)
         || '|' || CAST(floor(epoch(ts) / {minutes * 60}) AS BIGINT) AS token
FROM signals
GROUP BY ALL
"""
