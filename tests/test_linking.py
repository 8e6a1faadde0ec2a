"""Linking: a group sharing one template is one community, however large it is."""

from __future__ import annotations

import numpy as np

from distillguard.config import load_config
from distillguard.linking.graph import build_edges, communities
from distillguard.store import connect


def _store(n_accounts: int, per_account: int = 5):
    con = connect(None)
    rows = [(f"r{a}-{i}", f"acct{a:04d}") for a in range(n_accounts) for i in range(per_account)]
    con.executemany("INSERT INTO requests (request_id, ts, account_id, model, prompt, n_tools) "
                    "VALUES (?, TIMESTAMP '2026-01-01', ?, 'm', 'p', 0)", rows)
    con.execute("CREATE TABLE signals AS SELECT request_id, account_id, ts, 'math' AS capability,"
                " 'tshared' AS template_id, count(*) OVER () AS template_size FROM requests")
    return con


def test_sampled_template_group_weighs_like_its_clique(cfg):
    n, k = 200, int(cfg["linking"]["group_sample_k"])
    assert n > int(cfg["linking"]["max_group_full"])     # the sampled (circulant) path
    edges, accounts = build_edges(_store(n), cfg)
    w = float(cfg["linking"]["weights"]["template"]) / np.log2(1 + n)
    assert edges.height <= n * k                           # linear in the group, not n^2
    assert np.isclose(edges["weight"].sum(), w * n * (n - 1) / 2)
    memb = communities(edges, len(accounts), cfg)
    assert len(set(memb.tolist())) == 1 and memb[0] >= 0   # one campaign, not fragments


def test_without_clique_weighting_a_big_group_fragments(cfg):
    """What the weighting fixes: thin sampled edges fall below the CPM density."""
    plain = load_config(overrides={"linking": {"sampled_as_clique": []}})
    edges, accounts = build_edges(_store(200), plain)
    memb = communities(edges, len(accounts), plain)
    assert len(set(memb.tolist())) > 1
