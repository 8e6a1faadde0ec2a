"""Linking: a group coordinated on two channels is one community however large; one shared
channel alone (a phrasing) stays weak."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from distillguard.config import load_config
from distillguard.linking.graph import build_edges, communities
from distillguard.store import connect


def _store(n_accounts: int, per_account: int = 5, card: str | None = None):
    """``n_accounts`` accounts sending one shared template; with ``card`` all pay with it."""
    con = connect(None)
    rows = [(f"r{a}-{i}", f"acct{a:04d}", card)
            for a in range(n_accounts) for i in range(per_account)]
    con.executemany("INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools, "
                    "payment_fingerprint) VALUES (?, TIMESTAMP '2026-01-01', ?, 'm', 'p', 0, ?)",
                    rows)
    con.execute("CREATE TABLE signals AS SELECT request_id, account_id, ts, 'math' AS capability,"
                " 'tshared' AS template_id, count(*) OVER () AS template_size FROM requests")
    return con


def _factor(cfg, channels: int) -> float:
    return float(cfg["linking"]["conjunction"]["channel_factor"][channels])


def test_one_shared_template_is_one_channel(cfg):
    """Unrelated accounts share a phrasing: a single channel keeps only its weak factor."""
    n, k = 200, int(cfg["linking"]["group_sample_k"])
    assert n > int(cfg["linking"]["max_group_full"])     # the sampled (cycle) path
    edges, accounts = build_edges(_store(n), cfg)
    w = float(cfg["linking"]["weights"]["template"]) / np.log2(1 + n)
    assert edges.height <= n * k                           # linear in the group, not n^2
    assert set(edges["channels"].to_list()) == {1}
    assert np.isclose(edges["weight"].sum(), _factor(cfg, 1) * w * n * (n - 1) / 2)
    memb = communities(edges, len(accounts), cfg)
    assert len(set(memb.tolist())) > 1                     # not one campaign on one channel


def test_sampled_two_channel_group_is_one_community(cfg):
    """A template and a card shared by 200 accounts: two channels, one community, and the
    sampled edges carry the weight of the cliques they stand for."""
    n = 200
    edges, accounts = build_edges(_store(n, card="card-1"), cfg)
    assert set(edges["channels"].to_list()) == {2}
    wt = float(cfg["linking"]["weights"]["template"]) / np.log2(1 + n)
    wp = float(cfg["linking"]["weights"]["payment"]) / np.log2(1 + n)
    # both kinds are sampled as cliques: each contributes its clique's total weight
    assert np.isclose(edges["weight"].sum(), _factor(cfg, 2) * (wt + wp) * n * (n - 1) / 2,
                      rtol=0.05)
    memb = communities(edges, len(accounts), cfg)
    assert len(set(memb.tolist())) == 1 and memb[0] >= 0


def test_without_clique_weighting_a_big_group_fragments(cfg):
    """What the weighting fixes: thin sampled edges fall below the CPM density (fragment
    merging off, to see Leiden's own output)."""
    plain = load_config(overrides={"linking": {"sampled_as_clique": [], "merge": None}})
    edges, accounts = build_edges(_store(200, card="card-1"), plain)
    memb = communities(edges, len(accounts), plain)
    assert len(set(memb.tolist())) > 1


def test_fragments_tied_by_multi_channel_edges_merge(cfg):
    """Two dense groups with a few two-channel ties between them are one operation; the
    same ties on one channel only (a shared phrasing) leave them apart."""
    import polars as pl

    from distillguard.linking.graph import merge_fragments

    clique = [(i, j) for g in (range(0, 10), range(10, 20)) for i in g for j in g if i < j]
    ties = [(0, 10), (1, 11), (2, 12)]
    memb = np.array([0] * 10 + [1] * 10)
    for channels, expect in ((2, 1), (1, 2)):
        e = pl.DataFrame({"a": [a for a, _ in clique + ties], "b": [b for _, b in clique + ties],
                          "weight": 1.0,
                          "channels": [2] * len(clique) + [channels] * len(ties)})
        assert len(set(merge_fragments(e, memb, cfg).tolist())) == expect


def test_stragglers_attach_to_the_one_community_their_multichannel_ties_reach(cfg) -> None:
    """A piece below merge.min_size joins the community that at least attach_links of its
    multi-channel edges reach, and none other; single ties, one-channel ties and ties into
    two communities leave it where it is."""
    import polars as pl

    from distillguard.linking.graph import attach_stragglers

    clique = [(i, j) for g in (range(0, 10), range(10, 20)) for i in g for j in g if i < j]
    # 20: two 2-channel ties into A; 21: one; 22: two 1-channel ties; 23: one into A, one
    # into B; 24-25: a pair with two 2-channel ties into B
    ties = [(20, 0, 2), (20, 1, 2), (21, 2, 2), (22, 3, 1), (22, 4, 1), (23, 5, 2),
            (23, 15, 2), (24, 11, 2), (25, 12, 2), (24, 25, 2)]
    memb = np.array([0] * 10 + [1] * 10 + [2, 3, 4, 5, 6, 6])
    e = pl.DataFrame({"a": [a for a, _ in clique] + [t[0] for t in ties],
                      "b": [b for _, b in clique] + [t[1] for t in ties], "weight": 1.0,
                      "channels": [2] * len(clique) + [t[2] for t in ties]})
    out = attach_stragglers(e, memb, cfg)
    assert out[20] == 0 and out[24] == out[25] == 1
    assert [out[i] for i in (21, 22, 23)] == [3, 4, 5]
    assert (out[:20] == memb[:20]).all()
    off = load_config(overrides={"linking": {"merge": {"attach_links": 0}}})
    assert (attach_stragglers(e, memb, off) == memb).all()


def test_attach_counts_multi_channel_ties_beside_the_median() -> None:
    """In a community whose dense core sets the median link weight, a member with many
    two-channel ties is fully attached; one tied by a single channel stays weakly attached;
    without ``attach_multi_edges`` only the median reading counts."""
    import duckdb

    from distillguard.scoring.evidence import scoring_input_sql
    from distillguard.scoring.fit import with_overlay

    con = duckdb.connect()
    core = [f"c{i}" for i in range(30)]
    edges = [(a, b, 10.0, 2) for i, a in enumerate(core) for b in core[i + 1:]]   # dense core
    edges += [("m", core[i], 1.0, 2) for i in range(25)]       # 25 two-channel ties, light
    edges += [("s", core[i], 1.0, 1) for i in range(25)]       # 25 one-channel ties
    con.execute("CREATE TABLE edges (a VARCHAR, b VARCHAR, weight DOUBLE, channels INT)")
    con.executemany("INSERT INTO edges VALUES (?, ?, ?, ?)", edges)
    accts = [*core, "m", "s"]
    con.execute("CREATE TABLE communities AS SELECT unnest(?) AS account_id, 0 AS community",
                [accts])
    con.execute("CREATE TABLE features AS SELECT unnest(?) AS account_id", [accts])
    con.execute("CREATE TABLE groups AS SELECT 0 AS community, 32 AS g_size")
    con.execute("CREATE TABLE group_members (account_id VARCHAR, g_coord_own DOUBLE)")
    cfg = load_config()

    def attach(c) -> dict[str, float]:
        return dict(con.execute(f"SELECT account_id, g_attach FROM ({scoring_input_sql(c)}) "
                                "WHERE account_id IN ('m', 's', 'c0')").fetchall())

    got = attach(cfg)
    assert got["c0"] == 1.0 and got["m"] == 1.0        # 25 >= 20 two-channel ties
    assert got["s"] < 0.1                               # 25 / (29 * 10 + 1) of the median
    ties = dict(con.execute(f"SELECT account_id, g_ties FROM ({scoring_input_sql(cfg)})")
                .fetchall())
    assert ties["m"] == 25 and ties["s"] == 0          # only two-channel ties count
    assert ties["c0"] == 29 + 1                         # the core, and m
    old = attach(with_overlay(cfg, {"linking": {"groups": {"attach_multi_edges": None}}}))
    assert old["m"] == old["s"] < 0.1


def _pool_store(seed: int = 0):
    """Two campaigns of 30 accounts, each paying with its own card, both sending through one
    rented pool of 300 exit addresses (40 requests per account, one exit each), plus two
    accounts at home that share one address."""
    rng = np.random.default_rng(seed)
    con = connect(None)
    rows = []
    for c in ("a", "b"):
        for i in range(30):
            for j, ip in enumerate(rng.integers(0, 300, 40)):
                rows.append((f"{c}{i}-{j}", f"camp-{c}-{i:02d}", f"card-{c}",
                             f"100.{int(ip) // 100}.{int(ip) % 100}.7"))
    for i in range(2):
        for j in range(5):
            rows.append((f"h{i}-{j}", f"home-{i}", None, "81.2.3.4"))
    con.executemany("INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools, "
                    "payment_fingerprint, ip) VALUES (?, TIMESTAMP '2026-01-01', ?, 'm', 'p', "
                    "0, ?, ?)", rows)
    con.execute("CREATE TABLE signals AS SELECT request_id, account_id, ts, 'math' AS capability,"
                " request_id AS template_id, 1 AS template_size FROM requests")
    return con


def test_shared_proxy_pool_does_not_join_two_campaigns(cfg):
    """Exits of one rented pool are shared by chance (rotation_factor): the two campaigns
    stay two communities, each held together by its card; without the discount the pool's
    ties merge them. Two accounts at one home address keep the address tie in full."""
    import copy

    con = _pool_store()
    edges, accounts = build_edges(con, cfg)
    idx = {a: i for i, a in enumerate(accounts)}
    memb = communities(edges, len(accounts), cfg)
    camp = {c: {int(memb[idx[f"camp-{c}-{i:02d}"]]) for i in range(30)} for c in "ab"}
    assert len(camp["a"]) == 1 and len(camp["b"]) == 1 and camp["a"] != camp["b"]
    home = edges.filter((pl.col("a") == idx["home-0"]) & (pl.col("b") == idx["home-1"]))
    assert home.height == 1 and "ip" in home["kinds"][0]
    cross = edges.filter(pl.col("a").is_in([idx[f"camp-a-{i:02d}"] for i in range(30)])
                         & pl.col("b").is_in([idx[f"camp-b-{i:02d}"] for i in range(30)]))
    assert cross.is_empty()                    # the thin pool ties are no channel at all

    off = copy.deepcopy(cfg)
    off["linking"].pop("rotation")
    edges, accounts = build_edges(con, off)
    memb = communities(edges, len(accounts), off)
    both = {int(memb[idx[f"camp-{c}-{i:02d}"]]) for c in "ab" for i in range(30)}
    assert len(both) == 1                      # what the discount fixes


def test_accounts_drawing_on_one_set_of_templates_are_linked_by_content(cfg):
    """Forty accounts that share nothing but the set of wrappers they rotate through (each
    sends 6 of 10) become one community on the content channel; forty others that each
    send 6 templates of their own are not linked at all."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg["linking"]["content"]["enabled"] = True
    rng = np.random.default_rng(1)
    con = connect(None)
    req, sig = [], []
    for grp in ("camp", "solo"):
        for i in range(40):
            acct = f"{grp}-{i:02d}"
            tpls = (rng.choice(10, 6, replace=False).tolist() if grp == "camp"
                    else [f"{i}-{t}" for t in range(6)])
            for t in tpls:
                for j in range(5):
                    rid = f"{acct}-{t}-{j}"
                    req.append((rid, acct))
                    sig.append((rid, acct, f"t{grp}{t}"))
    con.executemany("INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools) "
                    "VALUES (?, TIMESTAMP '2026-01-01', ?, 'm', 'p', 0)", req)
    con.execute("CREATE TABLE _s (request_id VARCHAR, account_id VARCHAR, template_id VARCHAR)")
    con.executemany("INSERT INTO _s VALUES (?, ?, ?)", sig)
    con.execute("CREATE TABLE signals AS SELECT request_id, account_id, "
                "TIMESTAMP '2026-01-01' AS ts, 'math' AS capability, template_id, "
                "count(*) OVER (PARTITION BY template_id) AS template_size FROM _s")
    edges, accounts = build_edges(con, cfg)
    idx = {a: i for i, a in enumerate(accounts)}
    content = edges.filter(pl.col("kinds").str.contains("content"))
    assert content.height > 40 and (content["channels"] >= 2).all()
    solo = [idx[f"solo-{i:02d}"] for i in range(40)]
    assert edges.filter(pl.col("a").is_in(solo) | pl.col("b").is_in(solo)).is_empty()
    memb = communities(edges, len(accounts), cfg)
    camp = {int(memb[idx[f"camp-{i:02d}"]]) for i in range(40)}
    assert len(camp) == 1 and camp != {-1}
    cfg["linking"]["content"]["enabled"] = False          # off (the default): no such edges
    edges, _ = build_edges(con, cfg)
    assert not edges["kinds"].str.contains("content").any()


def _sync_tokens(acts: dict[str, list[int]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows = [(a, f"coding|{b}") for a, bs in acts.items() for b in bs]
    tokens = pl.DataFrame(rows, schema=["account_id", "token"], orient="row")
    comm = pl.DataFrame({"account_id": list(acts), "community": [7] * len(acts)})
    return tokens, comm


def test_sync_null_keeps_busy_days_and_finds_one_stream() -> None:
    """Independent people busy on the same two days of four (a launch, the working week) are
    not synchronized; accounts dealt one stream's bursts are."""
    from distillguard.linking.groups import group_sync

    cfg = load_config()
    rng = np.random.default_rng(1)
    day0 = 20_003 * 144                 # 10-minute buckets from a Monday's UTC midnight
    # four weekdays; everyone is busiest on the last two (a launch), at their own times
    busy = {f"dev{i}": sorted({day0 + d * 144 + int(rng.integers(48, 132))   # 08-22h
                               for d in (0, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3)})
            for i in range(30)}
    z_busy = group_sync(*_sync_tokens(busy), cfg)
    bursts = day0 + rng.choice(4 * 144, size=40, replace=False)
    stream = {f"h{i}": sorted({int(b) for b in bursts if rng.random() < 0.5}) for i in range(30)}
    z_stream = group_sync(*_sync_tokens(stream), cfg)
    # (the earlier null, each member's days permuted among weekdays, read this at z 5-9;
    # this one at 1-3 over seeds 0-3: the 08-22h edges cost the shifted null a little)
    assert z_busy["g_sync_z"][0] < 3.5 and z_busy["g_sync"][0] < 0.1
    assert z_stream["g_sync_z"][0] > 10.0 and z_stream["g_sync"][0] == 1.0
    # deterministic: seeded by the community's smallest account id
    assert group_sync(*_sync_tokens(stream), cfg).equals(z_stream)


def test_group_learned_rate_leaves_out_a_shared_scratchpad() -> None:
    """A group pools the elicit_model item's own rate: users of a framework whose system
    prompt (sent by many accounts) is what the learned model flags carry none of it into
    g_elicit; a group whose members ask in their own prompts keeps its full rate."""
    from distillguard.linking.groups import POOLED, group_stats_sql

    cfg = load_config()
    con = connect(None)
    rows = []
    for i in range(6):     # framework users: every hit from a system prompt 120 accounts send
        rows.append((f"fw{i}", 0, 40, 1.0, 1.0, 120, 1))
    for i in range(6):     # a group asking in its own prompts (no system prompt)
        rows.append((f"ask{i}", 1, 40, 0.5, 0.0, 0, 0))
    feats = pl.DataFrame(rows, orient="row", schema=[
        "account_id", "community", "n_requests", "elicit_model_rate", "sys_elicit_rate",
        "system_accounts", "n_system_prompts"]).with_columns(
        *[pl.lit(0.0).alias(c) for c in POOLED if c != "elicit_model_rate"],
        pl.lit(0.0).alias("pivot_share"), pl.lit(0).alias("pivot_window_requests"),
        pl.lit(2.0).alias("hour_entropy"), pl.lit(400.0).alias("account_age_days"),
        pl.lit(0.0).alias("nonstandard_signup"), pl.lit(1).alias("n_prefixes"),
        pl.lit(None, dtype=pl.Float64).alias("created_day"))
    con.register("_f", feats.drop("community").to_arrow())
    con.execute("CREATE TABLE features AS SELECT * FROM _f")
    con.register("_c", feats.select("account_id", "community").to_arrow())
    con.execute("CREATE TABLE communities AS SELECT * FROM _c")
    con.register("_k", pl.DataFrame(schema={"account_id": pl.Utf8, "kind": pl.Utf8,
                                            "key": pl.Utf8}).to_arrow())
    g = {r["community"]: r for r in con.sql(group_stats_sql("_k", cfg)).pl().to_dicts()}
    assert g[0]["g_elicit_model_rate"] == 0.0
    assert abs(g[1]["g_elicit_model_rate"] - 0.5) < 1e-9


def _signup_store(background_days: int = 900, burst_day: int = 600, burst_n: int = 30):
    """One account created every third day for ``background_days`` days, and ``burst_n``
    accounts created on ``burst_day``; each sends three requests."""
    con = connect(None)
    created = [(f"bg{d:04d}", d) for d in range(0, background_days, 3)]
    created += [(f"burst{i:03d}", burst_day) for i in range(burst_n)]
    rows = [(f"{a}-{i}", a, d) for a, d in created for i in range(3)]
    con.executemany("INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools, "
                    "account_created) VALUES (?, TIMESTAMP '2026-01-01', ?, 'm', 'p', 0, "
                    "TIMESTAMP '2023-01-01' + to_days(CAST(? AS INTEGER)))", rows)
    con.execute("CREATE TABLE signals AS SELECT request_id, account_id, ts, 'math' AS capability,"
                " request_id AS template_id, 1 AS template_size FROM requests")
    return con


def test_creation_days_count_only_inside_signup_bursts(cfg):
    """With ``conjunction.burst`` on, an account created on an ordinary day keeps no
    creation key (its neighbours three days apart, or on the same day by chance, are no
    coordination); the accounts of a signup burst, and the few ordinary signups inside the
    burst's window, keep theirs. Off, every account keeps it."""
    import copy

    from distillguard.linking.keys import account_keys_sql

    con = _signup_store()
    off = con.sql(account_keys_sql(cfg)).pl().filter(pl.col("kind") == "created")
    assert off.height == 300 + 30                          # every account, off by default
    on_cfg = copy.deepcopy(cfg)
    on_cfg["linking"]["conjunction"]["burst"]["enabled"] = True
    on = con.sql(account_keys_sql(on_cfg)).pl().filter(pl.col("kind") == "created")
    kept = set(on["account_id"].to_list())
    assert {f"burst{i:03d}" for i in range(30)} <= kept
    k = int(cfg["linking"]["conjunction"]["created_days"])
    near = {f"bg{d:04d}" for d in range(0, 900, 3) if abs(d - 600) <= k}
    assert kept - {f"burst{i:03d}" for i in range(30)} == near
    # one bad creation date far in the future neither hides the burst nor gets a key
    con.execute("INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools, "
                "account_created) VALUES ('bad-0', TIMESTAMP '2026-01-01', 'bad', 'm', 'p', 0, "
                "TIMESTAMP '9999-01-01')")
    con.execute("INSERT INTO signals SELECT request_id, account_id, ts, 'math', request_id, 1 "
                "FROM requests WHERE account_id = 'bad'")
    again = con.sql(account_keys_sql(on_cfg)).pl().filter(pl.col("kind") == "created")
    assert set(again["account_id"].to_list()) == kept
    con.execute("DELETE FROM requests WHERE account_id = 'bad'")
    con.execute("DELETE FROM signals WHERE account_id = 'bad'")
    # a smaller crowd on one day is within what a rate of one signup every third day gives
    small = _signup_store(burst_n=2)
    on_small = small.sql(account_keys_sql(on_cfg)).pl().filter(pl.col("kind") == "created")
    assert on_small.is_empty()
    # the burst still links its accounts, on the lifecycle channel too
    edges, accounts = build_edges(con, on_cfg)
    names = np.asarray(accounts, dtype=object)
    tied = set(names[edges["a"].to_numpy()]) | set(names[edges["b"].to_numpy()])
    assert tied == kept
    assert (edges["kinds"] == "created").all() and (edges["channels"] == 1).all()


def test_a_member_is_credited_only_with_the_channels_it_takes_part_in() -> None:
    """Four campaign accounts created together on shared exits and one prompt, and two
    customers created months apart on other exits of the same pool, in one community: the
    campaign accounts get the community's coordination, the customers only the channels
    they share (client, infrastructure among themselves), not the creation burst or the
    rotation they take no part in."""
    import duckdb

    from distillguard.linking.groups import member_coordination_sql

    con = duckdb.connect()
    camp = [f"c{i}" for i in range(4)]
    cust = ["u0", "u1"]
    feats = [(a, 12, 20000 + i % 2) for i, a in enumerate(camp)]
    feats += [("u0", 1, 19800), ("u1", 1, 19900)]
    con.execute("CREATE TABLE features (account_id VARCHAR, n_prefixes INT, created_day INT)")
    con.executemany("INSERT INTO features VALUES (?, ?, ?)", feats)
    con.execute("CREATE TABLE communities AS SELECT unnest(?) AS account_id, 0 AS community",
                [camp + cust])
    # shares as group_stats_sql would give them (4 of 6 in the burst and rotating)
    con.execute("CREATE TABLE groups AS SELECT 0 AS community, 1.0 AS g_cover_infra, "
                "1.0 AS g_cover_client, 4 / 6 AS g_rotation, 4 / 6 AS g_burst, "
                "0.5 AS g_sync, 0.0 AS g_cover_org")
    keys = [(a, "ip", "exit-1") for a in camp] + [(a, "ip", "exit-2") for a in cust]
    keys += [(a, "system", "prompt") for a in camp + cust]
    con.execute("CREATE TABLE k (account_id VARCHAR, kind VARCHAR, key VARCHAR)")
    con.executemany("INSERT INTO k VALUES (?, ?, ?)", keys)
    got = dict(con.execute(member_coordination_sql("k", load_config())).fetchall())
    full = 1.0 + 1.0 + 4 / 6 + 4 / 6 + 0.5 - 1.0          # the community's g_coordination
    assert got["c0"] == pytest.approx(full) and got["c3"] == pytest.approx(full)
    assert got["u0"] == pytest.approx(1.0 + 1.0 + 0.5 - 1.0)   # no burst, no rotation
    con.execute("UPDATE groups SET g_cover_org = 1.0")
    got = dict(con.execute(member_coordination_sql("k", load_config())).fetchall())
    assert got["c0"] == 0.0                                   # one declared organisation
