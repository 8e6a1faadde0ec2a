"""Build weighted account-link edges and find campaigns as graph communities.

Edges come from keys two accounts share (blocking by key, never all pairs of accounts) and
from synchronized activity and shared sets of templates, both found by MinHash LSH over
per-account token sets. Groups sharing one key are linked all-pairs when small; larger ones
get about ``k`` edges per member, so the edge count stays linear in the group size: a
circulant sample for weak kinds (user agents, IP prefixes), and for the kinds that mean one
operator (``sampled_as_clique``: templates, payment) ``k`` pseudo-random cycles carrying the
whole clique's weight, so community detection keeps a large group together as it would the
clique.
"""

from __future__ import annotations

import hashlib

import duckdb
import igraph as ig
import numpy as np
import polars as pl

from distillguard.config import Config
from distillguard.linking.keys import (
    account_attrs_sql,
    account_keys_sql,
    conjunction_sql,
    content_config,
    content_tokens_sql,
    sync_tokens_sql,
)
from distillguard.signals.templates import _MULT  # same folding constants as templates

_SYNC_SEED = 7
#: Columns of key_edges and sync_edges: ``scale`` is how many pairs a sampled edge stands for.
_PART_SCHEMA = {"a": pl.Int64, "b": pl.Int64, "kind": pl.Utf8, "w": pl.Float64,
                "key": pl.Utf8, "scale": pl.Float64}


def _group_pairs(members: np.ndarray, full: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(members)
    if n <= full:
        i, j = np.triu_indices(n, 1)
        return members[i], members[j]
    idx = np.arange(n)
    src = np.repeat(idx, k)
    dst = (src + np.tile(np.arange(1, k + 1), n)) % n
    return members[src], members[dst]


def _cycle_pairs(members: np.ndarray, order_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``k`` pseudo-random Hamiltonian cycles through ``members`` (``order_keys[m, j]`` orders
    cycle j): about n·k edges, like the circulant, but an expander, so no cut of the group is
    cheap. A circulant ring is cut into arcs by community detection at a few edges' cost."""
    k = order_keys.shape[1]
    src, dst = [], []
    for j in range(k):
        cyc = members[np.argsort(order_keys[members, j], kind="stable")]
        src.append(cyc)
        dst.append(np.roll(cyc, -1))
    return np.concatenate(src), np.concatenate(dst)


def cycle_order_keys(accounts: list[str], k: int) -> np.ndarray:
    """(n_accounts, k) ordering keys: the first 64 bits of md5("<account_id>|<j>"), j = 1..k.

    md5 of the same text is available in every engine's SQL, so Spark builds the same cycles.
    """
    out = np.empty((len(accounts), k), dtype=np.uint64)
    for i, a in enumerate(accounts):
        for j in range(k):
            out[i, j] = int(hashlib.md5(f"{a}|{j + 1}".encode(),
                                        usedforsecurity=False).hexdigest()[:16], 16)
    return out


def key_edges(con: duckdb.DuckDBPyConnection, cfg: Config,
              acc_index: dict[str, int], keys: pl.DataFrame | None = None) -> pl.DataFrame:
    lc = cfg["linking"]
    if keys is None:
        keys = con.sql(account_keys_sql(cfg)).pl()
    if keys.is_empty():
        return pl.DataFrame(schema=_PART_SCHEMA)
    keys = keys.with_columns(pl.col("account_id").replace_strict(acc_index).alias("idx"))
    groups = (keys.group_by("kind", "key").agg(pl.col("idx").sort())
              .filter(pl.col("idx").list.len().is_between(2, int(lc["max_group"]))))
    weights = lc["weights"]
    dense = set(lc.get("sampled_as_clique", ()))
    a_parts, b_parts, kinds, ws, scales, kk = [], [], [], [], [], []
    full, k = int(lc["max_group_full"]), int(lc["group_sample_k"])
    order_keys = None
    for kind, key, members in groups.iter_rows():
        n = len(members)
        m = np.asarray(members, dtype=np.int64)
        if n > full and kind in dense:
            if order_keys is None:
                order_keys = cycle_order_keys(sorted(acc_index, key=acc_index.__getitem__), k)
            a, b = _cycle_pairs(m, order_keys)
        else:
            a, b = _group_pairs(m, full, k)
        # Sharing a key with 3 others says more than sharing it with 3,000 (IDF-like).
        w = float(weights[kind]) / np.log2(1 + n)
        # A sampled group stands for all its n(n-1)/2 pairs. For the kinds that mean "the
        # same operator" the sampled edges carry the clique's total weight, so community
        # detection sees a big shared-template group as dense as a small one instead of
        # splitting it into pieces; other kinds (user agents, IP prefixes) stay thin.
        scale = (n - 1) / (2 * k) if n > full and kind in dense else 1.0
        a_parts.append(a)
        b_parts.append(b)
        kinds.append(np.full(len(a), kind, dtype=object))
        ws.append(np.full(len(a), w * scale))
        scales.append(np.full(len(a), scale))
        kk.append(np.full(len(a), str(key)[:80], dtype=object))
    if not a_parts:
        return pl.DataFrame(schema=_PART_SCHEMA)
    a = np.concatenate(a_parts)
    b = np.concatenate(b_parts)
    kind_arr = np.concatenate(kinds)
    w_arr = np.concatenate(ws) * rotation_factor(keys, kind_arr, a, b, len(acc_index), cfg)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return pl.DataFrame({"a": lo, "b": hi, "kind": kind_arr,
                         "w": w_arr, "key": np.concatenate(kk),
                         "scale": np.concatenate(scales)}, schema=_PART_SCHEMA)


def rotation_factor(keys: pl.DataFrame, kind: np.ndarray, a: np.ndarray, b: np.ndarray,
                    n_accounts: int, cfg: Config) -> np.ndarray:
    """Per edge part, ``min(1, free / sqrt(d_a * d_b))`` for the address kinds, 1 otherwise.

    ``d`` is how many distinct keys of that kind the account used. Two accounts that each
    draw dozens of exits from one commercial proxy pool share some of them by chance, whether
    or not one operator runs both (several campaigns and ordinary proxy users rent the same
    pool): under that null the shared exits scale with d_a * d_b / pool size, so a shared
    exit says little about the pair. Accounts with at most ``free`` addresses (home, phone,
    office) are not discounted. ``linking.graph.build_edges`` then drops the address ties
    this leaves below ``min_weight`` of the kind's weight, so they do not count as a channel.
    """
    rc = cfg["linking"].get("rotation") or {}
    out = np.ones(len(kind))
    if not rc:
        return out
    free = float(rc["free"])
    for k in rc["kinds"]:
        sel = kind == k
        if not sel.any():
            continue
        d = np.ones(n_accounts)
        per = keys.filter(pl.col("kind") == k).group_by("idx").agg(pl.col("key").n_unique())
        d[per["idx"].to_numpy()] = np.maximum(per["key"].to_numpy(), 1)
        out[sel] = np.minimum(1.0, free / np.sqrt(d[a[sel]] * d[b[sel]]))
    return out


def minhash_pairs(tok: pl.DataFrame, acc_index: dict[str, int], bands: int, rows: int,
                  min_jaccard: float, cap: int, k: int) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """(a, b, jaccard) of account pairs whose token sets (``tok``: account_id, token list)
    collide in one of ``bands`` MinHash bands of ``rows`` rows and whose estimated Jaccard
    is at least ``min_jaccard``; large band buckets get ``k`` pairs per member, in the order
    of ``tok`` (sorted by account id, as the Spark twin orders them)."""
    from rensa import RMinHash

    none = np.empty(0, dtype=np.int64)
    if tok.height < 2:
        return none, none, np.empty(0)
    sig = np.asarray(RMinHash.digest_matrix_from_token_sets(
        tok["token"].to_list(), bands * rows, _SYNC_SEED).to_rows(), dtype=np.uint32)
    idx = np.array([acc_index[a] for a in tok["account_id"].to_list()], dtype=np.int64)
    s = sig.reshape(len(sig), bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        bkeys = (s * _MULT[:rows]).sum(axis=2, dtype=np.uint64)
    pairs: set[tuple[int, int]] = set()
    for bnd in range(bands):
        order = np.argsort(bkeys[:, bnd], kind="stable")
        col = bkeys[order, bnd]
        bounds = np.flatnonzero(np.diff(col)) + 1
        for grp in np.split(order, bounds):
            if len(grp) < 2:
                continue
            a, b = _group_pairs(grp, cap, k)
            pairs.update(zip(a.tolist(), b.tolist(), strict=True))
    if not pairs:
        return none, none, np.empty(0)
    pa_ = np.array(sorted(pairs), dtype=np.int64)
    jac = (sig[pa_[:, 0]] == sig[pa_[:, 1]]).mean(axis=1)
    keep = jac >= min_jaccard
    a, b = idx[pa_[keep, 0]], idx[pa_[keep, 1]]
    return np.minimum(a, b), np.maximum(a, b), jac[keep]


def _lsh_edges(tokens: pl.DataFrame, acc_index: dict[str, int], lc: dict, min_tokens: int,
               bands: int, rows: int, min_jaccard: float, weight: float,
               kind: str) -> pl.DataFrame:
    """Edge parts of ``kind`` (``weight`` x Jaccard) between accounts with at least
    ``min_tokens`` tokens whose sets collide (``minhash_pairs``); the Spark twin is
    ``engines.spark._lsh_edges``."""
    tok = (tokens.group_by("account_id").agg(pl.col("token"))
           .filter(pl.col("token").list.len() >= int(min_tokens))
           .sort("account_id"))
    a, b, jac = minhash_pairs(tok, acc_index, bands, rows, min_jaccard,
                              int(lc["max_group_full"]), int(lc["group_sample_k"]))
    return pl.DataFrame({"a": a, "b": b, "kind": np.full(len(a), kind, dtype=object),
                         "w": weight * jac,
                         "key": np.char.mod("jaccard=%.2f", jac).astype(object),
                         "scale": np.ones(len(a))}, schema=_PART_SCHEMA)


def sync_edges(con: duckdb.DuckDBPyConnection, cfg: Config,
               acc_index: dict[str, int], tokens: pl.DataFrame | None = None) -> pl.DataFrame:
    """Pairs of accounts whose (capability, time-bucket) sets overlap (Jaccard from MinHash)."""
    lc = cfg["linking"]
    tokens = con.sql(sync_tokens_sql(cfg)).pl() if tokens is None else tokens
    return _lsh_edges(tokens, acc_index, lc, int(lc["sync_min_buckets"]), 16, 4,
                      float(lc["sync_min_jaccard"]), float(lc["weights"]["sync"]), "sync")


def content_edges(con: duckdb.DuckDBPyConnection, cfg: Config, acc_index: dict[str, int],
                  tokens: pl.DataFrame | None = None) -> pl.DataFrame:
    """Pairs of accounts whose *sets* of templates overlap (Jaccard from MinHash LSH).

    One shared template is common (a framework's wrapper, a public task set) and is the
    client channel; many accounts drawing on the same set of templates is a shared content
    pipeline, such as a campaign spreading its extraction wrappers over hundreds of accounts
    that share nothing else. Banded for low similarity (``content.bands`` x ``rows``)."""
    lc = cfg["linking"]
    cc = content_config(cfg)
    if cc is None:
        return pl.DataFrame(schema=_PART_SCHEMA)
    tokens = con.sql(content_tokens_sql(cfg)).pl() if tokens is None else tokens
    return _lsh_edges(tokens, acc_index, lc, int(cc["min_templates"]), int(cc["bands"]),
                      int(cc["rows"]), float(cc["min_jaccard"]),
                      float(lc["weights"]["content"]), "content")


def build_edges(con: duckdb.DuckDBPyConnection, cfg: Config, keys: pl.DataFrame | None = None,
                tokens: pl.DataFrame | None = None, content: pl.DataFrame | None = None,
                ) -> tuple[pl.DataFrame, list[str]]:
    """Aggregate all link evidence into one weighted edge per account pair.

    Per kind the weight is capped at the kind's weight, so a thousand shared /24s do not
    drown every other signal; the pair's weight is the sum over kinds, times the factor for
    the number of independent channels the pair agrees on (``conjunction``). ``keys`` and
    ``tokens``, ``content``: the account keys, activity tokens and template tokens if already
    computed (``linking.keys.account_keys_sql``, ``sync_tokens_sql``, ``content_tokens_sql``).
    """
    accounts = [r[0] for r in con.execute(
        "SELECT DISTINCT account_id FROM requests ORDER BY 1").fetchall()]
    acc_index = {a: i for i, a in enumerate(accounts)}
    if keys is None:
        keys = con.sql(account_keys_sql(cfg)).pl()
    parts = [key_edges(con, cfg, acc_index, keys), sync_edges(con, cfg, acc_index, tokens),
             content_edges(con, cfg, acc_index, content)]
    e = pl.concat(parts)
    if e.is_empty():
        return pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64, "weight": pl.Float64,
                                    "kinds": pl.Utf8, "evidence": pl.Utf8,
                                    "channels": pl.Int32}), accounts
    e = e.filter(pl.col("a") != pl.col("b"))
    caps = {k: float(v) for k, v in cfg["linking"]["weights"].items()}
    # The cap scales with a sampled clique's edges (see key_edges).
    per_kind = (e.group_by("a", "b", "kind")
                .agg(pl.col("w").sum(), pl.col("key").first(), pl.col("scale").max())
                .with_columns(pl.min_horizontal(
                    pl.col("w"),
                    pl.col("kind").replace_strict(caps, return_dtype=pl.Float64)
                    * pl.col("scale")).alias("w")))
    rc = cfg["linking"].get("rotation") or {}
    if rc:
        # address ties the rotation discount left thin are no channel (rotation_factor)
        per_kind = per_kind.filter(~pl.col("kind").is_in(list(rc["kinds"]))
                                   | (pl.col("w") >= float(rc["min_weight"])
                                      * pl.col("kind").replace_strict(caps, default=0.0,
                                                                      return_dtype=pl.Float64)))
    edges = (per_kind.sort("kind").group_by("a", "b")
             .agg(pl.col("w").sum().alias("weight"),
                  pl.col("kind").str.join(",").alias("kinds"),
                  (pl.col("kind") + "=" + pl.col("key")).str.join("; ").alias("evidence")))
    return conjunction(con, edges, keys, acc_index, cfg), accounts


def conjunction(con: duckdb.DuckDBPyConnection, edges: pl.DataFrame, keys: pl.DataFrame,
                acc_index: dict[str, int], cfg: Config) -> pl.DataFrame:
    """``edges`` re-weighted by the channels each pair agrees on (``conjunction_sql``)."""
    con.register("_dg_keys", keys.select("account_id", "kind", "key", "n").to_arrow())
    try:
        attrs = con.sql(account_attrs_sql("_dg_keys")).pl()
    finally:
        con.unregister("_dg_keys")
    attrs = attrs.with_columns(pl.col("account_id").replace_strict(acc_index, default=-1)
                               .cast(pl.Int64))
    con.register("_dg_e", edges.to_arrow())
    con.register("_dg_attrs", attrs.to_arrow())
    try:
        out = con.sql(conjunction_sql("_dg_e", "_dg_attrs", cfg)).pl()
    finally:
        con.unregister("_dg_e")
        con.unregister("_dg_attrs")
    return out.with_columns(pl.col("channels").cast(pl.Int32))


def communities(edges: pl.DataFrame, n_accounts: int, cfg: Config) -> np.ndarray:
    """Leiden (CPM objective) communities; -1 for accounts in no multi-account community.

    CPM rather than modularity: modularity's resolution limit merges small dense clusters
    into big ones, and a campaign of five accounts must stay five accounts.
    """
    lc = cfg["linking"]
    member = np.full(n_accounts, -1, dtype=np.int64)
    if edges.is_empty():
        return member
    g = ig.Graph(n=n_accounts, edges=list(zip(edges["a"].to_list(), edges["b"].to_list(),
                                              strict=True)), directed=False)
    g.es["weight"] = edges["weight"].to_list()
    # python-igraph draws from Python's global `random` unless told otherwise: an unseeded
    # Leiden gave different communities (and reasons) for the same store from run to run.
    import random

    ig.set_random_number_generator(random.Random(int(lc.get("leiden_seed", 0))))
    try:
        part = g.community_leiden(objective_function="CPM", weights="weight",
                                  resolution=float(lc["leiden_resolution"]), n_iterations=-1,
                                  initial_membership=None)
    finally:
        ig.set_random_number_generator(random)
    memb = merge_fragments(edges, np.asarray(part.membership, dtype=np.int64), cfg)
    memb = attach_stragglers(edges, memb, cfg)
    sizes = np.bincount(memb)
    ok = sizes[memb] >= int(lc["min_campaign_accounts"])
    member[ok] = memb[ok]
    return member


def merge_fragments(edges: pl.DataFrame, memb: np.ndarray, cfg: Config) -> np.ndarray:
    """Join communities that are pieces of one operation.

    CPM keeps dense groups; a hydra spread over dozens of cards and a large proxy pool is
    dense inside each card group but tied across them only by the occasional shared exit:
    sparse, yet every such tie agrees on two channels (the address and the client), which
    unrelated groups almost never do. Two communities (each of at least ``min_size``
    accounts) are joined when at least ``min_links`` multi-channel edges run between them,
    covering ``min_share`` of the smaller one's accounts; joins are transitive (connected
    components over the community graph, scipy).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    mc = cfg["linking"].get("merge") or {}
    if not mc or edges.is_empty() or "channels" not in edges.columns:
        return memb
    sizes = np.bincount(memb)
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    ca, cb = memb[a], memb[b]
    keep = ((edges["channels"].to_numpy() >= 2) & (ca != cb)
            & (sizes[ca] >= int(mc["min_size"])) & (sizes[cb] >= int(mc["min_size"])))
    if not keep.any():
        return memb
    x = pl.DataFrame({"lo": np.minimum(ca[keep], cb[keep]), "hi": np.maximum(ca[keep], cb[keep]),
                      "u": np.where(ca[keep] < cb[keep], a[keep], b[keep]),
                      "v": np.where(ca[keep] < cb[keep], b[keep], a[keep])})
    pairs = x.group_by("lo", "hi").agg(pl.len().alias("n"), pl.col("u").n_unique().alias("nu"),
                                       pl.col("v").n_unique().alias("nv"))
    small = np.minimum(sizes[pairs["lo"].to_numpy()], sizes[pairs["hi"].to_numpy()])
    cover = np.maximum(pairs["nu"].to_numpy(), pairs["nv"].to_numpy()) / small
    ok = (pairs["n"].to_numpy() >= int(mc["min_links"])) & (cover >= float(mc["min_share"]))
    if not ok.any():
        return memb
    k = len(sizes)
    g = coo_matrix((np.ones(int(ok.sum())), (pairs["lo"].to_numpy()[ok],
                                              pairs["hi"].to_numpy()[ok])), shape=(k, k))
    _, label = connected_components(g, directed=False)
    return label[memb].astype(np.int64)


def attach_stragglers(edges: pl.DataFrame, memb: np.ndarray, cfg: Config) -> np.ndarray:
    """Put pieces too small to be merged (fewer than ``merge.min_size`` accounts) into the
    community they are tied to by multi-channel edges.

    CPM asks a member for link weight in proportion to its community's size, so an account
    of a 200-account operation with a handful of two-channel ties (exit address and client)
    stays outside it, alone or in a pair. Such a piece joins a community of at least
    ``min_size`` accounts when at least ``attach_links`` of its multi-channel edges run into
    that community and none run into any other (ambiguous pieces stay where they are).
    """
    mc = cfg["linking"].get("merge") or {}
    need = int(mc.get("attach_links", 0))
    if not need or edges.is_empty() or "channels" not in edges.columns:
        return memb
    sizes = np.bincount(memb)
    big = int(mc["min_size"])
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    multi = edges["channels"].to_numpy() >= 2
    ca, cb = memb[a], memb[b]
    # (small piece, big community) for every multi-channel edge from one into the other
    fwd = multi & (sizes[ca] < big) & (sizes[cb] >= big)
    rev = multi & (sizes[cb] < big) & (sizes[ca] >= big)
    x = pl.DataFrame({"piece": np.concatenate([ca[fwd], cb[rev]]),
                      "to": np.concatenate([cb[fwd], ca[rev]])})
    if x.is_empty():
        return memb
    t = (x.group_by("piece").agg(pl.col("to").n_unique().alias("k"), pl.col("to").first(),
                                  pl.len().alias("n"))
         .filter((pl.col("k") == 1) & (pl.col("n") >= need)))
    if t.is_empty():
        return memb
    remap = np.arange(len(sizes), dtype=np.int64)
    remap[t["piece"].to_numpy()] = t["to"].to_numpy()
    return remap[memb]
