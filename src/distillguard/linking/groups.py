"""What each link community does as a whole (the ``groups`` table).

A hydra's accounts look ordinary one by one: a few dozen requests each, nothing that a
per-account score can hold on to. As a group they pool hundreds of requests, and their
coordination shows on channels that are independent for unrelated accounts: shared
infrastructure (addresses, cards), a shared client (system prompt, template), rotating
proxy exits, accounts created in a burst. Legitimate groups usually share one channel (a
campus NAT and its grant card, a framework's system prompt, a family card); the
coordination figure ``g_coordination`` therefore counts the channels *beyond* the
strongest one, which the group's own reason to exist explains; accounts that declare one
organisation explain all their channels (one customer acting openly is not concealment).

Every column is computed from the per-account ``features`` table, the ``communities`` and
the account keys the links were built from, so both engines run the same SQL on the
driver.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from distillguard.config import Config

#: Per-account features pooled over a group's requests (request-weighted means).
POOLED = ("cot_rate", "rubric_rate", "censor_rate", "elicit_model_rate", "focus_rate",
          "single_turn_share", "novelty", "tools_share", "high_effort_share",
          "template_top_share")

#: Pooled rates that are not the plain feature.
_POOLED_MEANING = {
    "elicit_model_rate": "the `elicit_model` evidence item's rate (learned-model hits in a "
                         "system prompt many accounts share left out) over the group's pooled "
                         "requests",
}

#: Group columns and what they mean (docs/CONTRACTS.md lists them too).
GROUP_COLUMNS = {
    "g_size": "accounts in the group",
    "g_requests": "requests of all its accounts",
    **{f"g_{c}": _POOLED_MEANING.get(c, f"{c} over the group's pooled requests")
       for c in POOLED},
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
    "g_sync_z": "standard score of its members' co-activity against each member's activity "
                "shifted by up to `sync_shift_minutes`",
    "g_sync": "g_sync_z ramped to [0, 1] (`sync_z_lo` to `sync_z_hi`): the timing channel",
    "g_coordination": "coordination channels beyond the strongest one: infrastructure, "
                      "client, rotating exits, creation burst, timing (each 0-1, sum 0-4), "
                      "times the share of accounts *not* in one declared organisation",
}


#: Key kinds of the infrastructure and client channels (shared with another member).
_INFRA_KINDS = "('ip', 'ip_prefix', 'payment')"
_CLIENT_KINDS = "('system', 'template')"


def _shared_keys(keys: str) -> str:
    """Per account key inside its community: how many of the community's accounts hold it
    (``n_in``; >= 2 is a key shared with another member)."""
    return f"""
  SELECT k.account_id, c.community, k.kind,
         count(*) OVER (PARTITION BY c.community, k.kind, k.key) AS n_in
  FROM {keys} k JOIN communities c ON k.account_id = c.account_id
  WHERE c.community >= 0 AND k.kind IN ('ip', 'ip_prefix', 'payment', 'system', 'template', 'org')"""


def _created_near(days: int) -> str:
    """Per member of ``m``: the members created within ``days`` after its own creation day
    (``d0``, the day that starts the window; ``n_near`` counts the member itself)."""
    return f"""
  SELECT a.community, a.account_id, a.created_day AS d0, count(*) AS n_near
  FROM m a JOIN m b ON a.community = b.community
    AND b.created_day >= a.created_day AND b.created_day <= a.created_day + {days}
  GROUP BY a.community, a.account_id, a.created_day"""


def _beyond_strongest(infra: str, client: str, rot: str, burst: str, sync: str,
                      org: str) -> str:
    """The coordination figure: the channels summed less the strongest (which the group's
    own reason to exist explains), none for a declared organisation."""
    return (f"({infra} + {client} + {rot} + {burst} + {sync}\n"
            f"    - greatest({infra}, {client}, {rot}, {burst}, {sync})) * (1 - {org})")


def group_stats_sql(keys: str, cfg: Config, sync: str | None = None) -> str:
    """One row per community (``community >= 0``) with every ``GROUP_COLUMNS`` column.

    ``keys`` names the relation of account keys (``linking.keys.account_keys_sql``);
    ``sync`` the relation :func:`group_sync` returned (none: no timing channel).
    """
    gc = cfg["linking"]["groups"]
    rot = int(gc["rotation_prefixes"])
    days = int(cfg["linking"]["conjunction"]["created_days"])
    # The group's learned-elicitation rate is the one the account-level item scores: hits
    # that come from a system prompt shared by many accounts (an agent framework's
    # scratchpad format) are left out there and must not come back through the group.
    rate = {c: c for c in POOLED}
    rate["elicit_model_rate"] = next((it["expr"] for it in cfg["scoring"]["evidence"]
                                      if it["name"] == "elicit_model"), "elicit_model_rate")
    pooled = ",\n    ".join(
        f"sum(n_requests * coalesce({rate[c]}, 0)) / sum(n_requests) AS g_{c}" for c in POOLED)
    coordination = _beyond_strongest("g_cover_infra", "g_cover_client", "g_rotation",
                                     "g_burst", "coalesce(sy.g_sync, 0.0)", "g_cover_org")
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
kc AS ({_shared_keys(keys)}
),
cover AS (
  SELECT community,
    count(DISTINCT CASE WHEN kind IN {_INFRA_KINDS} THEN account_id END) AS n_infra,
    count(DISTINCT CASE WHEN kind = 'payment' THEN account_id END) AS n_card,
    count(DISTINCT CASE WHEN kind IN {_CLIENT_KINDS} THEN account_id END) AS n_client,
    count(DISTINCT CASE WHEN kind = 'org' THEN account_id END) AS n_org
  FROM kc WHERE n_in >= 2 GROUP BY community
),
near AS ({_created_near(days)}
),
burst AS (SELECT community, max(n_near) AS n_burst FROM near GROUP BY community),
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
SELECT g.*, coalesce(sy.g_sync_z, 0.0) AS g_sync_z, coalesce(sy.g_sync, 0.0) AS g_sync,
  {coordination} AS g_coordination
FROM g LEFT JOIN {sync or "(SELECT NULL::BIGINT AS community, NULL::DOUBLE AS g_sync_z, NULL::DOUBLE AS g_sync WHERE false)"} sy USING (community)
"""


def member_coordination_sql(keys: str, cfg: Config) -> str:
    """Per account in a community: ``g_coord_own``, the community's coordination counted
    only on the channels the account itself takes part in.

    ``g_coordination`` is the group's: a piece of ordinary accounts joined to a campaign's
    community (a reseller's customers, tied to each other by the reseller's exits and its
    app's prompt) is credited with the campaign's creation burst and rotating exits as much
    as the campaign's own accounts are. Here each channel's share counts for a member only
    where it takes part: it shares an address, /24 or card (infrastructure), a system prompt
    or template (client) with another member, spreads over ``rotation_prefixes`` prefixes
    itself (rotation), or was created inside the community's largest burst (the
    ``created_days`` window after a day that starts one). The timing channel is the
    community's for every member (its null is built per community). The same sum less the
    largest and the same ``1 - g_cover_org`` as ``g_coordination``, so a member on every
    channel has exactly its community's figure. Reads ``groups``, ``features``,
    ``communities`` and the account keys ``keys``.
    """
    rot = int(cfg["linking"]["groups"]["rotation_prefixes"])
    days = int(cfg["linking"]["conjunction"]["created_days"])
    own = _beyond_strongest("c_infra", "c_client", "c_rot", "c_burst", "c_sync", "g_cover_org")
    return f"""
WITH m AS (
  SELECT f.account_id, f.n_prefixes, f.created_day, c.community
  FROM features f JOIN communities c USING (account_id) WHERE c.community >= 0
),
kc AS ({_shared_keys(keys)}
),
part AS (
  SELECT account_id,
    max(CASE WHEN kind IN {_INFRA_KINDS} THEN 1.0 ELSE 0.0 END) AS p_infra,
    max(CASE WHEN kind IN {_CLIENT_KINDS} THEN 1.0 ELSE 0.0 END) AS p_client
  FROM kc WHERE n_in >= 2 GROUP BY account_id
),
near AS ({_created_near(days)}
),
anchors AS (
  SELECT DISTINCT community, d0 FROM near
  QUALIFY n_near = max(n_near) OVER (PARTITION BY community) AND n_near >= 2
),
burst AS (
  SELECT DISTINCT m.account_id FROM m JOIN anchors a ON m.community = a.community
    AND m.created_day >= a.d0 AND m.created_day <= a.d0 + {days}
),
x AS (
  SELECT m.account_id, g.g_cover_org,
    g.g_cover_infra * coalesce(p.p_infra, 0.0) AS c_infra,
    g.g_cover_client * coalesce(p.p_client, 0.0) AS c_client,
    g.g_rotation * (CASE WHEN m.n_prefixes >= {rot} THEN 1.0 ELSE 0.0 END) AS c_rot,
    g.g_burst * (CASE WHEN b.account_id IS NOT NULL THEN 1.0 ELSE 0.0 END) AS c_burst,
    g.g_sync AS c_sync
  FROM m JOIN groups g ON g.community = m.community
  LEFT JOIN part p ON p.account_id = m.account_id
  LEFT JOIN burst b ON b.account_id = m.account_id
)
SELECT account_id, {own} AS g_coord_own
FROM x
"""


def group_sync(tokens: pl.DataFrame, comm: pl.DataFrame, cfg: Config) -> pl.DataFrame:
    """Synchronized activity of each community, tested against its own members shifted in
    time.

    The statistic is SynchroTrap's co-activity: ordered pairs of members active in the same
    time bucket (``sync_bucket_minutes``), summed over buckets. The null shifts each
    member's whole activity by its own random offset of 1 to ``sync_shift_minutes`` either
    way (in buckets), ``sync_permutations`` times. A shift keeps what members share without
    acting as one: the days they are busy (a model launch, the working week) and, for
    offsets well under the length of a working day, the hours they keep; accounts fed by one
    load-balanced stream lose the buckets they shared. (A null that permuted each member's
    days among days of the same type read developers busy on the same two weekdays of a
    four-day window as synchronized, z = 9.5, where this null gives 0.2.) Returns
    community, ``g_sync_z`` (standard score of the observed co-activity) and ``g_sync`` (the
    z-score ramped to [0, 1] between ``sync_z_lo`` and ``sync_z_hi``, a coordination
    channel). Deterministic: the offsets are seeded by the community's smallest account id.
    """
    gc = cfg["linking"]["groups"]
    out_schema = {"community": pl.Int64, "g_sync_z": pl.Float64, "g_sync": pl.Float64}
    minutes = int(cfg["linking"]["sync_bucket_minutes"])
    shift = max(1, int(round(float(gc.get("sync_shift_minutes", 120)) / minutes)))
    min_size = int(gc.get("sync_min_size", 3))
    reps = int(gc.get("sync_permutations", 20))
    lo, hi = float(gc.get("sync_z_lo", 3.0)), float(gc.get("sync_z_hi", 10.0))
    if tokens.is_empty() or comm.is_empty():
        return pl.DataFrame(schema=out_schema)
    act = (tokens.select("account_id", pl.col("token").str.split("|").list.last()
                         .cast(pl.Int64).alias("bucket")).unique()
           .join(comm.filter(pl.col("community") >= 0), on="account_id"))
    if act.is_empty():
        return pl.DataFrame(schema=out_schema)
    b0 = int(act["bucket"].min())
    sizes = act.group_by("community").agg(pl.col("account_id").n_unique().alias("n"))
    act = act.join(sizes.filter(pl.col("n") >= min_size), on="community")
    rows = []
    # buckets from 0, with room for a shift either way
    length = int(act["bucket"].max()) - b0 + 1 + 2 * shift if not act.is_empty() else 0
    # offsets 1..shift either way, never 0 (an unshifted member would keep its coincidences)
    offsets = np.concatenate([np.arange(-shift, 0), np.arange(1, shift + 1)])

    def coactivity(buckets: np.ndarray) -> float:
        c = np.bincount(buckets, minlength=length).astype(float)
        return float((c * c - c).sum())

    for (cid,), g in act.sort("community", "account_id", "bucket").group_by(
            "community", maintain_order=True):
        accts = g["account_id"].to_numpy()
        uniq, member = np.unique(accts, return_inverse=True)
        b = g["bucket"].to_numpy() - b0 + shift
        obs = coactivity(b)
        seed = int.from_bytes(str(uniq[0]).encode()[:8].ljust(8, b"\0"), "little")
        rng = np.random.default_rng(seed)
        null = np.empty(reps)
        for r in range(reps):
            null[r] = coactivity(b + rng.choice(offsets, size=len(uniq))[member])
        sd = float(null.std())
        z = (obs - float(null.mean())) / sd if sd > 0 else 0.0
        rows.append((int(cid), z, float(min(max((z - lo) / (hi - lo), 0.0), 1.0))))
    return pl.DataFrame(rows, schema=out_schema, orient="row")
