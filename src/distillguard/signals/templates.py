"""Prompt-template clusters from MinHash signatures, grouped by LSH band buckets.

Two exact "bands" join the MinHash bands: the first and the last six words of the normalised
prompt. A fixed instruction wrapped around a long, varying task shares its head or its tail
exactly even when the whole skeleton's Jaccard similarity is low.

Pairwise similarity joins blow up quadratically on templated traffic (a million prompts from
one template are a trillion pairs). Instead each request's signature is cut into bands; a band
value shared by many requests is a bucket of near-duplicates, and each request takes the
largest bucket it falls in as its template id. Cost is linear in requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash
from rensa import RMinHash

_SEED = 20261130
# Odd 64-bit multipliers to fold a band's rows into one key (overflow wraps, by design).
_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                  0x27D4EB2F165667C5, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
                  0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53], dtype=np.uint64)


_URL = r"https?://\S+"
_EMAIL = r"[\w.+-]+@[\w-]+\.[\w.]+"


def skeleton_frame(prompt_ends: pl.Series, k: int) -> pl.DataFrame:
    """Skeleton, head key and tail key of each prompt (vectorised in Polars' Rust engine).

    The skeleton is the prompt lower-cased, with URLs, e-mail addresses and numbers replaced by
    placeholders, cut to its first and last ``k`` words: what stays fixed when a template is
    filled with different tasks. Head and tail keys are the first and last six words of
    prompts of ten words or more.
    """
    words = (prompt_ends.fill_null("").str.to_lowercase()
             .str.replace_all(_URL, " <url> ").str.replace_all(_EMAIL, " <email> ")
             .str.replace_all(r"\d+", "0").str.extract_all(r"\S+"))
    df = pl.DataFrame({"w": words})
    n = pl.col("w").list.len()
    return df.select(
        pl.when(n <= 2 * k).then(pl.col("w").list.join(" "))
        .otherwise(pl.col("w").list.head(k).list.join(" ") + " … "
                   + pl.col("w").list.tail(k).list.join(" ")).alias("skeleton"),
        pl.when(n >= 10).then(pl.col("w").list.head(6).list.join(" ")).alias("head_key"),
        pl.when(n >= 10).then(pl.col("w").list.tail(6).list.join(" ")).alias("tail_key"),
    )


def _distinct(texts: Iterable[str | None] | pa.Array | pa.ChunkedArray
              ) -> tuple[list[str | None], np.ndarray]:
    """(distinct values, index of each row's value among them; -1 for None), found in
    Arrow's dictionary encoding rather than a Python loop over every row."""
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(
        list(texts), pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = arr.dictionary_encode()
    return (enc.dictionary.to_pylist(),
            enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))


def _unique_signatures(skeletons: Iterable[str | None] | pa.Array, num_perm: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(MinHash signature matrix (distinct, num_perm) uint32 of the distinct skeletons,
    computed in Rust by rensa, and each row's index into it).

    Each distinct skeleton is hashed once (templated traffic repeats skeletons), and the
    digest rows are copied out flat: rensa's ``to_rows`` list of lists is the slow part.
    """
    uniq, inv = _distinct(skeletons)
    if inv.size == 0:
        return np.zeros((0, num_perm), dtype=np.uint32), inv
    if (inv < 0).any():                    # a missing skeleton hashes as the empty one
        uniq.append("")
        inv = np.where(inv < 0, len(uniq) - 1, inv)
    # Word sets, not shingles: cheaper, and a template's fixed words dominate either way.
    token_sets = [(s or "").split() or [""] for s in uniq]
    m = RMinHash.digest_matrix_from_token_sets(token_sets, num_perm, _SEED)
    rows = m.to_rows()
    sig = np.fromiter(chain.from_iterable(rows), dtype=np.uint32,
                      count=len(rows) * num_perm).reshape(len(rows), num_perm)
    return sig, inv


def signature_band_keys(skeletons: Iterable[str | None] | pa.Array, num_perm: int,
                        bands: int) -> np.ndarray:
    """(n, bands) band keys of the skeletons' MinHash signatures, folded once per distinct
    skeleton."""
    sig, inv = _unique_signatures(skeletons, num_perm)
    return band_keys(sig, bands)[inv]


def template_keys(prompt_ends: pa.Array, offset: int, k: int, num_perm: int,
                  bands: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Skeletons and the (n, bands + 2) uint64 template keys of one batch of prompts.

    Keys are the MinHash band keys, then the exact head and tail keys. This is the whole
    per-batch text work of both engines, so it can run in a worker process or an executor.
    A prompt too short to have a head or tail gets a key unique to it (``offset``: the
    batch's position in the input); the (n, 2) ``missing`` mask says which, for engines
    that store NULL instead.
    """
    sk = skeleton_frame(pl.from_arrow(prompt_ends), k)
    skel = sk["skeleton"].to_arrow()
    keys = np.column_stack([signature_band_keys(skel, num_perm, bands),
                            exact_keys(sk["head_key"].to_arrow(), 1, offset),
                            exact_keys(sk["tail_key"].to_arrow(), 2, offset)])
    missing = np.column_stack([sk["head_key"].is_null().to_numpy(),
                               sk["tail_key"].is_null().to_numpy()])
    return skel.cast(pa.string()), keys, missing


def band_keys(sig: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) uint64 bucket keys: each band's rows folded into one 64-bit value."""
    n, perms = sig.shape
    rows = perms // bands
    if rows * bands != perms or rows > len(_MULT):
        raise ValueError(f"{perms} permutations do not split into {bands} bands of <= 8 rows")
    s = sig[:, : rows * bands].reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        keys = (s * _MULT[:rows]).sum(axis=2, dtype=np.uint64)
        keys ^= np.arange(bands, dtype=np.uint64) * np.uint64(0x2545F4914F6CDD1D)
    return keys


def exact_keys(texts: Iterable[str | None] | pa.Array, salt: int, offset: int = 0
               ) -> np.ndarray:
    """64-bit keys of exact strings (None → a unique-per-row key that never groups).

    ``offset`` is the position of ``texts[0]`` in the whole input, so the unique keys of
    rows in different batches do not collide. Each distinct string is hashed once.
    """
    uniq, inv = _distinct(texts)
    h = np.fromiter((xxhash.xxh3_64_intdigest(t.encode(), seed=salt) for t in uniq),
                    dtype=np.uint64, count=len(uniq))
    out = np.empty(inv.size, dtype=np.uint64)
    has = inv >= 0
    out[has] = h[inv[has]]
    none = np.flatnonzero(~has).astype(np.uint64)
    out[~has] = np.uint64(0xFFFF_0000_0000_0000) + np.uint64(offset) + none
    return out


def template_ids_sql(keys_table: str, width: int, carry: Sequence[str] = ()) -> str:
    """Template choice over a table with columns ``k0 .. k{width-1}``.

    Yields ``request_id, skeleton, template_key, template_size`` and the ``carry`` columns
    of the keys table (so callers need not join it a second time). Per band, only buckets of
    two or more are counted (a key seen once has size 1), so each band's hash table holds the
    repeated keys only; the request's template is the largest bucket, ties to the lowest band.
    Runs in DuckDB, so memory stays bounded (it spills).
    """
    ks = [f"k{b}" for b in range(width)]
    sizes = ",\n".join(
        f"sz{b} AS (SELECT {k} AS k, count(*) AS c FROM {keys_table} GROUP BY {k} "
        "HAVING count(*) > 1)" for b, k in enumerate(ks))
    cols = ", ".join(f"coalesce(sz{b}.c, 1) AS c{b}" for b in range(width))
    joins = "\n".join(f"LEFT JOIN sz{b} ON t.{k} = sz{b}.k" for b, k in enumerate(ks))
    best = f"greatest({', '.join(f'c{b}' for b in range(width))})"
    whens = " ".join(f"WHEN c{b} = {best} THEN {k}" for b, k in enumerate(ks))
    extra = "".join(f", t.{c}" for c in carry)
    out = "".join(f", {c}" for c in carry)
    return f"""
WITH {sizes},
sized AS (
  SELECT t.request_id, t.skeleton, {', '.join(f't.{k}' for k in ks)}, {cols}{extra}
  FROM {keys_table} t
  {joins}
)
SELECT request_id, skeleton, CASE {whens} END AS template_key, {best} AS template_size{out}
FROM sized
"""
