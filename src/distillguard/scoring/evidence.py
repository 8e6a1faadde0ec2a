"""Raw evidence score per account from the declarative evidence list in the config."""

from __future__ import annotations

import duckdb
import polars as pl

from distillguard.config import Config
from distillguard.features.defs import ALL_FEATURES


def evidence_frame(con: duckdb.DuckDBPyConnection, cfg: Config,
                   table: str = "features") -> pl.DataFrame:
    """account_id, raw, and one ``ev_<name>`` column (weighted contribution) per evidence item.

    Behaviour evidence is damped for accounts with very few requests: three prompts cannot show
    a rate, a template or a timing pattern.
    """
    sc = cfg["scoring"]
    items = sc["evidence"]
    min_req = float(sc["min_requests"])
    cols = []
    for it in items:
        lo, hi, w = float(it["lo"]), float(it["hi"]), float(it["weight"])
        ramp = f"least(greatest((({it['expr']}) - ({lo})) / ({hi - lo}), 0), 1)"
        cols.append(f"{w} * coalesce({ramp}, 0) * least(n_requests / {min_req}, 1) "
                    f"AS ev_{it['name']}")
    df = con.sql(f"SELECT account_id, {', '.join(cols)} FROM {table}").pl()
    ev = [f"ev_{it['name']}" for it in items]
    return df.with_columns(pl.sum_horizontal(ev).alias("raw"))


def reasons_for(feat_row: dict, ev_row: dict, cfg: Config, k: int) -> list[str]:
    """The k strongest positive contributions, as human-readable text with values."""
    items = cfg["scoring"]["evidence"]
    contrib = sorted(((ev_row[f"ev_{it['name']}"], it) for it in items
                      if ev_row[f"ev_{it['name']}"] > 0.05), key=lambda t: -t[0])
    out = []
    for _, it in contrib[:k]:
        f = ALL_FEATURES.get(it["show"])
        val = feat_row.get(it["show"])
        shown = f.fmt.format(val) if f is not None and val is not None else str(val)
        out.append(it["reason"].format(shown))
    return out

