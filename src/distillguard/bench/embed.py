"""Offline sentence embeddings for the benchmark baselines.

The published query-distribution detectors (PRADA, stateful k-NN, MMD) compare queries by a
distance in some feature space. For text prompts we need a cheap, deterministic embedding that
never touches the network, because distillguard runs next to production logs:

``wordllama``
    256-d average-pooled token embeddings distilled from LLM input embeddings (WordLlama
    ``l2_supercat``), pooled here as a sparse count matrix times the embedding table (same
    vectors as ``WordLlama.embed``, ~4x faster on real logs, see ``_embed_wordllama``). The weights and tokenizer ship inside the ``wordllama`` wheel; we load
    them with ``cache_dir`` pointing at the package folder and ``disable_download=True``. The
    library's default loader looks for the tokenizer under ``wordllama/tokenizer/`` (the wheel
    has ``tokenizers/``) and would then try Hugging Face; pointing ``cache_dir`` at the package
    makes its second lookup (``cache_dir/tokenizers/...``) succeed, so nothing is downloaded.
``hashed``
    Fallback with no model at all: signed feature hashing of character 3–5-grams (within word
    boundaries) and word unigrams, followed by a fixed sparse random projection (a count-sketch
    / sparse Johnson–Lindenstrauss transform with a fixed seed) to ``dim`` dimensions. It is
    lexical, not semantic, but stable across runs and machines.

Every backend returns L2-normalised ``float32`` rows, so the Euclidean distance of two rows is
``sqrt(2 - 2 cos)``; empty texts map to the zero vector (there is nothing to normalise).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

__all__ = ["embed", "available_backends", "EMBED_DIM"]

#: Output dimension of both backends (WordLlama ``l2_supercat`` at 256 dims).
EMBED_DIM = 256

#: Texts are truncated to this many characters before embedding: tokenisation (WordLlama) and
#: n-gram hashing cost grow with length, one pasted 100 kB document should not dominate a
#: batch, and the opening of a prompt carries its template and topic anyway.
MAX_CHARS = 2000

Backend = Literal["auto", "wordllama", "hashed"]

_HASH_FEATURES = 2**18  # hashing space before projection; collisions negligible at this size
_SKETCH_NNZ = 4  # non-zeros per input feature in the sparse projection (Kane & Nelson 2014)
_PROJECTION_SEED = 20240601  # fixed: the projection must be identical on every run


def available_backends() -> list[str]:
    """List the backends usable in this environment, best first.

    Returns
    -------
    list of str
        ``["wordllama", "hashed"]`` when WordLlama and its bundled files are present,
        otherwise ``["hashed"]``.
    """
    try:
        _load_wordllama()
    except (ImportError, FileNotFoundError, OSError):
        return ["hashed"]
    return ["wordllama", "hashed"]


def embed(
    texts: Sequence[str],
    backend: Backend = "auto",
    *,
    batch_size: int = 1024,
    max_chars: int = MAX_CHARS,
    dim: int = EMBED_DIM,
) -> np.ndarray:
    """Embed texts offline into L2-normalised vectors.

    Parameters
    ----------
    texts : sequence of str, length n
        Texts to embed; ``None`` entries are treated as empty strings.
    backend : {"auto", "wordllama", "hashed"}, default "auto"
        ``"auto"`` uses WordLlama when installed (with its bundled weights) and falls back to
        ``"hashed"`` otherwise, so the benchmark runs on a bare install.
    batch_size : int, default 1024
        Texts per batch (bounds peak memory; no padding is involved). Output rows keep the
        input order.
    max_chars : int, default 2000
        Each text is cut to this many characters first (see ``MAX_CHARS``).
    dim : int, default 256
        Output dimension of the ``hashed`` backend (WordLlama is always 256).

    Returns
    -------
    numpy.ndarray of shape (n, 256) (or ``(n, dim)`` for ``hashed``), dtype float32
        Unit-norm rows; all-zero rows for empty texts.

    Raises
    ------
    ImportError
        If ``backend="wordllama"`` and WordLlama is not installed (``pip install
        'distillguard[embed]'``).

    Examples
    --------
    >>> X = embed(["hello world", "hello there"], backend="hashed")
    >>> X.shape, X.dtype.name
    ((2, 256), 'float32')
    """
    if backend not in ("auto", "wordllama", "hashed"):
        raise ValueError(f"unknown embedding backend {backend!r}; use auto, wordllama or hashed")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    clean = [(t or "")[:max_chars] for t in texts]
    if backend == "auto":
        backend = "wordllama" if "wordllama" in available_backends() else "hashed"
    if not clean:
        return np.zeros((0, EMBED_DIM if backend == "wordllama" else dim), dtype=np.float32)
    if backend == "wordllama":
        out = _embed_wordllama(clean, batch_size)
    else:
        out = _embed_hashed(clean, batch_size, dim)
    return _l2_normalise(out)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Scale rows to unit norm in place; zero rows stay zero (no NaN)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


@lru_cache(maxsize=1)
def _load_wordllama() -> Any:
    """Load WordLlama strictly from the files bundled in the wheel (never downloads).

    The instance is private to this module: its tokenizer is switched to no padding, which
    is what lets ``_embed_wordllama`` pool ragged token lists without padding waste.
    """
    import wordllama
    from wordllama import WordLlama

    model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
    model.tokenizer.no_padding()
    return model


def _embed_wordllama(texts: list[str], batch_size: int) -> np.ndarray:
    """Mean-pool WordLlama token embeddings, batch by batch, without padding.

    Same vectors as ``WordLlamaInference.embed`` (masked average pooling), computed as a
    sparse (texts x vocabulary) count matrix times the embedding table: no padding to the
    longest text and no (tokens x 256) intermediate. On real prompt logs this is ~4x faster
    than the library's padded gather and bounded in memory; tokenisation dominates.
    """
    model = _load_wordllama()
    tok, table = model.tokenizer, model.embedding
    vocab = table.shape[0]
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # fast: skips char offsets
    out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        encs = encode(chunk, add_special_tokens=False)
        lens = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        ids = np.fromiter((i for e in encs for i in e.ids), dtype=np.int64, count=int(lens.sum()))
        np.clip(ids, 0, vocab - 1, out=ids)
        indptr = np.concatenate([[0], np.cumsum(lens)])
        counts = sp.csr_matrix((np.ones(ids.size, dtype=np.float32), ids, indptr),
                               shape=(len(chunk), vocab))
        sums = np.asarray(counts @ table)
        out[start : start + len(chunk)] = sums / np.maximum(lens, 1)[:, None]
    return out


@lru_cache(maxsize=4)
def _projection(n_in: int, dim: int) -> sp.csr_matrix:
    """Fixed sparse random projection ``n_in -> dim`` with ``_SKETCH_NNZ`` signed entries/row.

    Each input feature lands in ``_SKETCH_NNZ`` output coordinates with random signs and
    weight ``1/sqrt(nnz)``, which preserves inner products in expectation (sparse JL).
    """
    rng = np.random.default_rng(_PROJECTION_SEED)
    rows = np.repeat(np.arange(n_in), _SKETCH_NNZ)
    cols = rng.integers(0, dim, size=n_in * _SKETCH_NNZ)
    vals = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=n_in * _SKETCH_NNZ)
    vals /= np.sqrt(_SKETCH_NNZ)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_in, dim), dtype=np.float32)


@lru_cache(maxsize=1)
def _hashers() -> tuple[Any, Any]:
    """Stateless hashing vectorizers (no fit, no vocabulary, deterministic)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    chars = HashingVectorizer(
        analyzer="char_wb", ngram_range=(3, 5), n_features=_HASH_FEATURES, norm="l2",
        alternate_sign=True, lowercase=True, dtype=np.float32,
    )
    words = HashingVectorizer(
        analyzer="word", ngram_range=(1, 1), n_features=_HASH_FEATURES, norm="l2",
        alternate_sign=True, lowercase=True, dtype=np.float32,
    )
    return chars, words


def _embed_hashed(texts: list[str], batch_size: int, dim: int) -> np.ndarray:
    """Hash char 3–5-grams and words (each block unit-norm, equal weight), then project."""
    chars, words = _hashers()
    proj = _projection(2 * _HASH_FEATURES, dim)
    out = np.empty((len(texts), dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        feats = sp.hstack([chars.transform(chunk), words.transform(chunk)], format="csr")
        out[start : start + len(chunk)] = (feats @ proj).toarray()
    return out
