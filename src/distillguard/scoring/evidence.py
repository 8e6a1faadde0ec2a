"""Raw evidence score per account from the declarative evidence list in the config."""

from __future__ import annotations

import duckdb
import polars as pl

from distillguard.config import Config
from distillguard.features.defs import ALL_FEATURES


def scoring_input_sql(cfg: Config) -> str:
    """Per account: its features, its link community, that community's ``groups`` row and
    ``g_attach``, how strongly the account is tied into it. Accounts in no community get
    NULL group columns (their group evidence is 0) and ``g_size`` 1.

    ``g_attach`` is the larger of the account's in-community link weight over the
    community's median and a ramp over its multi-channel edges inside the community
    (``linking.groups.attach_multi_edges`` = [lo, hi]), at most 1. The median alone
    under-counts members of a community merged from several operations (one dense core
    sets the median); an account with twenty ties that agree on two or more channels
    belongs to its community whatever the core does. Legitimate accounts drawn into a
    campaign's community (a shared proxy exit, a shared day of creation) have a handful of
    such ties at most, hence the ramp starts at ``lo``.

    ``g_ties`` is that count itself: the account's edges inside its community that agree on
    two or more channels (0 outside any community). The coordination a member takes from
    its group is scaled by it (the ``g_coordination`` item): a community may be coordinated
    as a whole while a member is tied to it on one channel only (the users of a popular
    framework's system prompt drawn into a campaign's community that uses it too)."""
    lo_hi = cfg["linking"]["groups"].get("attach_multi_edges")
    rel = "w / nullif(median(w) OVER (PARTITION BY community), 0)"
    if lo_hi:
        lo, hi = (float(x) for x in lo_hi)
        rel = f"greatest({rel}, (m2 - {lo!r}) / {hi - lo!r})"
    return f"""
WITH inner_e AS (
  SELECT e.a, e.b, e.weight, CASE WHEN e.channels >= 2 THEN 1 ELSE 0 END AS m,
         ca.community FROM edges e
  JOIN communities ca ON e.a = ca.account_id JOIN communities cb ON e.b = cb.account_id
  WHERE ca.community = cb.community AND ca.community >= 0
),
w_in AS (
  SELECT account_id, community, sum(weight) AS w, sum(m) AS m2 FROM (
    SELECT a AS account_id, community, weight, m FROM inner_e
    UNION ALL SELECT b AS account_id, community, weight, m FROM inner_e)
  GROUP BY account_id, community
),
att AS (
  SELECT account_id, least({rel}, 1.0) AS g_attach, CAST(m2 AS DOUBLE) AS g_ties
  FROM w_in
)
SELECT f.*, coalesce(c.community, -1) AS community, coalesce(att.g_attach, 0.0) AS g_attach,
       coalesce(att.g_ties, 0.0) AS g_ties, coalesce(gm.g_coord_own, 0.0) AS g_coord_own,
       g.* EXCLUDE (community, g_size), coalesce(g.g_size, 1) AS g_size
FROM features f
LEFT JOIN communities c USING (account_id)
LEFT JOIN groups g ON g.community = c.community AND c.community >= 0
LEFT JOIN att USING (account_id)
LEFT JOIN group_members gm ON gm.account_id = f.account_id AND c.community >= 0
"""


def item_weight(cfg: Config, item: dict) -> float:
    """An evidence item's weight: the fitted one (``scoring.weights``, written by
    ``distillguard fit``) when there is one, else the item's own (the designed prior)."""
    fitted = cfg["scoring"].get("weights") or {}
    return float(fitted.get(item["name"], item["weight"]))


def evidence_frame(con: duckdb.DuckDBPyConnection, cfg: Config,
                   table: str = "features", weights: dict[str, float] | None = None
                   ) -> pl.DataFrame:
    """account_id, raw, final_raw and one ``ev_<name>`` column (weighted contribution) per
    evidence item. ``raw`` sums the account's own evidence, ``final_raw`` adds the items
    marked ``group: true`` (what its link community does as a whole).

    Behaviour evidence is damped for accounts with very few requests: three prompts cannot show
    a rate, a template or a timing pattern. Group items are damped by the group's requests,
    items with a ``support`` by that count (see :func:`damping_sql`).
    ``weights`` (name -> weight) overrides the config's; 1.0 everywhere gives the unweighted
    ramps a weight fit needs.
    """
    sc = cfg["scoring"]
    items = sc["evidence"]
    min_req = float(sc["min_requests"])
    cols = []
    for it in items:
        lo, hi = float(it["lo"]), float(it["hi"])
        w = float(weights[it["name"]]) if weights is not None else item_weight(cfg, it)
        ramp = f"least(greatest((({it['expr']}) - ({lo})) / ({hi - lo}), 0), 1)"
        cols.append(f"{w!r} * coalesce({ramp}, 0) * {damping_sql(it, min_req)} "
                    f"AS ev_{it['name']}")
    df = con.sql(f"SELECT account_id, {', '.join(cols)} FROM {table}").pl()
    own = [f"ev_{it['name']}" for it in items if not it.get("group")]
    grp = [f"ev_{it['name']}" for it in items if it.get("group")]
    df = df.with_columns(pl.sum_horizontal(own).alias("raw"))
    return df.with_columns((pl.col("raw") + (pl.sum_horizontal(grp) if grp else 0.0))
                           .alias("final_raw"))


def damping_sql(item: dict, min_requests: float) -> str:
    """How far an item's evidence counts, 0 to 1 (SQL over the scoring input).

    By default the account's requests over ``min_requests`` (a group item: its group's
    requests). An item with ``support`` (an expression counting the observations the
    evidence rests on, e.g. the distinct prompts a rule matched) is damped by that count
    over ``min_support`` instead: an elicitation rate whose background is near zero is
    shown by its matches, not by the account's volume, so an account that sends ten
    requests, eight of them extraction prompts, is not read as a tenth of a case."""
    if it_support := item.get("support"):
        return f"least(coalesce(({it_support}) / {float(item['min_support'])!r}, 0), 1)"
    n = "coalesce(g_requests, 0)" if item.get("group") else "n_requests"
    return f"least({n} / {min_requests}, 1)"


#: A contribution is named as a reason only above this.
REASON_MIN = 0.05


def reasons_for(feat_row: dict, ev_row: dict, cfg: Config, k: int) -> list[str]:
    """The k strongest positive contributions, as human-readable text with values."""
    items = cfg["scoring"]["evidence"]
    contrib = sorted(((ev_row[f"ev_{it['name']}"], it) for it in items
                      if ev_row[f"ev_{it['name']}"] > REASON_MIN), key=lambda t: -t[0])
    out = []
    for _, it in contrib[:k]:
        val = feat_row.get(it["show"])
        shown = _fmt(it, val).format(val) if val is not None else str(val)
        out.append(it["reason"].format(shown))
    return out


def _fmt(item: dict, val: object) -> str:
    """How an evidence item shows its value: the item's ``fmt``, the feature's, or for group
    columns a count (sizes, days) or a share."""
    if item.get("fmt"):
        return str(item["fmt"])
    f = ALL_FEATURES.get(item["show"])
    if f is not None:
        return f.fmt
    if item["show"] in ("g_size", "g_requests", "g_age_days"):
        return "{:,.0f}"
    return "{:.0%}" if isinstance(val, float) and 0.0 <= val <= 1.0 else "{}"

