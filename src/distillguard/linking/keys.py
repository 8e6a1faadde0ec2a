"""Account keys that can be shared: infrastructure, payment, org and templates (SQL, once)."""

from __future__ import annotations

from distillguard.config import Config
from distillguard.features.defs import SYSTEM_KEY_SQL, ip_prefix_sql


def account_keys_sql(cfg: Config) -> str:
    """(account_id, kind, key, n): each key an account used at least ``min_shared_requests``
    times. Templates and system prompts also need to be a real share of the account's
    traffic (>= 10%, >= 30%), so one common greeting does not tie strangers together. Exact
    addresses count from one request: an exit of a rotating proxy pool is used once or twice
    per account, and sharing it with other accounts of the pool is the evidence."""
    lc = cfg["linking"]
    m = int(lc["min_shared_requests"])
    min_tpl = int(cfg["features"]["min_template_size"])
    prefix = ip_prefix_sql(cfg)
    return f"""
WITH k AS (
  SELECT account_id, 'ip_prefix' AS kind, {prefix} AS key
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
),
sys AS (
  SELECT account_id, 'system' AS kind, {SYSTEM_KEY_SQL} AS key, count(*) AS n,
         sum(count(*)) OVER (PARTITION BY account_id) AS tot
  FROM requests WHERE system IS NOT NULL AND system <> ''
  GROUP BY account_id, {SYSTEM_KEY_SQL}
),
ip AS (
  SELECT account_id, 'ip' AS kind, ip AS key, count(*) AS n
  FROM requests WHERE ip IS NOT NULL AND ip <> '' GROUP BY account_id, ip
),
{_created_sql(cfg)}
SELECT account_id, kind, key, n FROM infra
UNION ALL
SELECT account_id, kind, key, n FROM tpl WHERE n >= {m} AND n >= 0.1 * tot
UNION ALL
SELECT account_id, kind, key, n FROM sys WHERE n >= {m} AND n >= 0.3 * tot
UNION ALL
SELECT account_id, kind, key, n FROM ip
UNION ALL
SELECT account_id, kind, key, n FROM created
"""


def _created_sql(cfg: Config) -> str:
    """The ``created`` CTE: an account's creation day as a link key (and so, through
    ``account_attrs_sql``, its lifecycle channel); with ``conjunction.burst.enabled``, only
    on days of a signup burst.

    Two accounts created within a few days of each other are coordinated only where
    signups bunch: over years of ordinary signups a few accounts are created every day, and
    two users of a popular framework created in the same week two years ago share nothing.
    The null is the world's own signup rate around that day: ``W``, the accounts created
    within ``created_days`` of it, against ``lambda``, the median daily count over the
    calendar days (days without signups included) in the ``neighbourhood_days`` either
    side, times the window's width. A median, not a mean: campaigns start together, and
    the bursts of one make a mean rate around another's days too high to see it (a
    77-account hydra in tune world 1087545355, next to 400 accounts of other campaigns
    created 10-25 days later); and over calendar days, so that a burst in a quiet month is
    not its own baseline (the median is a join over the neighbourhood, not a window: Spark
    has no median over a window frame). A day is a burst when ``W >= min_accounts`` and
    ``W >= lambda + z sqrt(lambda) + 1`` (the normal tail of a Poisson count, with a
    continuity margin). Accounts created more than ``span_days`` (default 3650) before the
    store's last request, or after it (a bad creation date), keep no creation key: the
    calendar is bounded by the traffic, not by a creation date one bad row could set. Off
    by default: docs/detection.md, "Stop 30", has what it did on the tune worlds.
    """
    bc = cfg["linking"]["conjunction"].get("burst") or {}
    day = "CAST(floor(epoch(max(account_created)) / 86400) AS BIGINT)"
    if not bc.get("enabled"):
        return f"""created AS (
  SELECT account_id, 'created' AS kind, CAST({day} AS VARCHAR) AS key, count(*) AS n
  FROM requests WHERE account_created IS NOT NULL GROUP BY account_id
)"""
    k = int(cfg["linking"]["conjunction"]["created_days"])
    nb = int(bc["neighbourhood_days"])
    return f"""acc_created AS (
  SELECT account_id, {day} AS day, count(*) AS n
  FROM requests WHERE account_created IS NOT NULL GROUP BY account_id
),
per_day AS (SELECT day, count(*) AS c FROM acc_created GROUP BY day),
span AS (
  SELECT hi - {int(bc.get("span_days", 3650))} AS lo, hi
  FROM (SELECT CAST(floor(epoch(max(ts)) / 86400) AS BIGINT) AS hi FROM requests) t
),
cal AS (SELECT unnest(generate_series(lo, hi)) AS day FROM span),
dense AS (
  SELECT cal.day, coalesce(p.c, 0) AS c FROM cal LEFT JOIN per_day p ON cal.day = p.day
),
day_win AS (
  SELECT d.day, sum(CASE WHEN abs(x.day - d.day) <= {k} THEN x.c ELSE 0 END) AS w,
         median(x.c) AS base
  FROM per_day d JOIN dense x ON x.day BETWEEN d.day - {nb} AND d.day + {nb}
  GROUP BY d.day
),
burst_day AS (
  SELECT day FROM (
    SELECT day, w, greatest(base * {2 * k + 1}, 0.5) AS lam FROM day_win) x
  WHERE w >= {int(bc["min_accounts"])} AND w >= lam + {float(bc["z"])!r} * sqrt(lam) + 1
),
created AS (
  SELECT a.account_id, 'created' AS kind, CAST(a.day AS VARCHAR) AS key, a.n
  FROM acc_created a JOIN burst_day b ON a.day = b.day
)"""


def account_attrs_sql(keys: str) -> str:
    """Per account, from the keys relation ``keys``: its main system prompt key, its main
    template and its creation day (NULL when absent). Ties go to the smaller key, so every
    engine picks the same one."""
    return f"""
WITH ranked AS (
  SELECT account_id, kind, key,
         row_number() OVER (PARTITION BY account_id, kind ORDER BY n DESC, key) AS rn
  FROM {keys} WHERE kind IN ('system', 'template', 'created')
)
SELECT account_id,
       max(CASE WHEN kind = 'system' THEN key END) AS sys_key,
       max(CASE WHEN kind = 'template' THEN key END) AS tpl_key,
       max(CASE WHEN kind = 'created' THEN CAST(key AS BIGINT) END) AS created_day
FROM ranked WHERE rn = 1 GROUP BY account_id
"""


def conjunction_sql(edges: str, attrs: str, cfg: Config) -> str:
    """Edges re-weighted by how many independent channels the two accounts agree on.

    Channels: *infrastructure* (a shared address, /24 or card), *client* (the same system
    prompt or main template), *lifecycle* (accounts created within ``created_days`` of each
    other), *timing* (synchronized activity) and *content* (overlapping sets of templates).
    Under a null model in which unrelated accounts share each channel independently,
    agreement on one channel is common (a carrier NAT, a popular framework's prompt, a
    shared family card) and agreement on two or more is rare, so a pair's weight is
    multiplied by ``channel_factor[n_channels]``. A shared organisation id is a declared
    relationship, not concealment: its pairs keep ``org_factor`` of their weight. User
    agents are too common to count as a channel.
    """
    lc = cfg["linking"]["conjunction"]
    f = [float(x) for x in lc["channel_factor"]]
    days = int(lc["created_days"])
    return f"""
WITH j AS (
  SELECT e.a, e.b, e.weight, e.kinds, e.evidence,
    CASE WHEN e.kinds LIKE '%ip%' OR e.kinds LIKE '%payment%' THEN 1 ELSE 0 END AS ch_infra,
    CASE WHEN e.kinds LIKE '%system%' OR e.kinds LIKE '%template%'
              OR (x.sys_key IS NOT NULL AND x.sys_key = y.sys_key)
              OR (x.tpl_key IS NOT NULL AND x.tpl_key = y.tpl_key) THEN 1 ELSE 0 END AS ch_client,
    CASE WHEN abs(x.created_day - y.created_day) <= {days} THEN 1 ELSE 0 END AS ch_life,
    CASE WHEN e.kinds LIKE '%sync%' THEN 1 ELSE 0 END AS ch_time,
    CASE WHEN e.kinds LIKE '%content%' THEN 1 ELSE 0 END AS ch_content,
    CASE WHEN e.kinds LIKE '%org%' THEN 1 ELSE 0 END AS org
  FROM {edges} e LEFT JOIN {attrs} x ON e.a = x.account_id LEFT JOIN {attrs} y ON e.b = y.account_id
)
SELECT a, b,
  weight * (CASE ch_infra + ch_client + ch_life + ch_time + ch_content
              WHEN 0 THEN {f[0]!r} WHEN 1 THEN {f[1]!r} WHEN 2 THEN {f[2]!r} ELSE {f[3]!r} END)
         * (CASE WHEN org = 1 THEN {float(lc["org_factor"])!r} ELSE 1.0 END) AS weight,
  kinds, evidence, ch_infra + ch_client + ch_life + ch_time + ch_content AS channels
FROM j
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


def content_config(cfg: Config) -> dict | None:
    """``linking.content`` when the content channel is on (``enabled``), else None."""
    cc = cfg["linking"].get("content") or {}
    return cc if cc.get("enabled", False) else None


def content_tokens_sql(cfg: Config) -> str:
    """(account_id, token): every template (of at least ``min_template_size`` requests) an
    account sent, once; the content channel compares these sets (``graph.content_edges``)."""
    min_tpl = int(cfg["features"]["min_template_size"])
    return f"""
SELECT account_id, template_id AS token
FROM signals WHERE template_size >= {min_tpl}
GROUP BY ALL
"""
