"""Learned elicitation signal: hashed character n-grams, a linear model, max over windows.

``ElicitModel.predict_proba(texts)`` gives, per scan text (``elicit_data.scan_text``), the
probability that the prompt asks for the model's reasoning or trace (extraction) or uses the
model as a grader or reward model. It runs in numpy over whole batches:

1. Texts are joined (NUL-separated), lower-cased, digits folded to ``0`` and line breaks to
   spaces, and read as one array of code points.
2. Every character n-gram of the configured orders is hashed (32-bit multiply-xor, per order
   salt) into ``2**bits`` buckets; each bucket has an integer weight (int16, shipped).
   With ``Spec.words``, whole words are hashed into the same buckets too; their weights
   come from static word embeddings at training time (below), so a word never seen in the
   labelled set still carries the weight its meaning suggests.
3. Per position, the weights of the n-grams starting there are summed; integer prefix sums
   give the sum over any window of ``window`` characters. A window's score is that sum over
   the square root of its n-gram count (~ an L2-normalised bag of n-grams), and a text's
   score is the max over its windows (stride ``stride``; a text shorter than a window is one
   window). An instruction wrapped around a long task is found in its window instead of
   being diluted by the task, and a long ordinary prompt is not one big bag of chances.
4. ``p = sigmoid(scale * max_window + bias)``, one head per label (extract, rubric);
   ``predict_proba`` returns the max over heads.

Integer weights and integer prefix sums make a text's value independent of the batch it is
in: the DuckDB stage, the Spark executors and the online scorer give the same bits.

Training (:func:`train`) fits one logistic regression per head (scikit-learn, lbfgs) on
windows: all windows of benign texts are negatives; of a positive text, the windows that hold
most of the template's instruction (located from the row's template) are positives and the
windows holding only task text are left out. Weights are quantised to int16.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

MODEL_FILE = "elicit_model.npz"
_MUL = np.uint32(0x01000193)
_MIX1 = np.uint32(0x9E3779B1)
_MIX2 = np.uint32(0x85EBCA6B)
_FOLD = {ord(c): "0" for c in "123456789"}
_FOLD.update({ord("\n"): " ", ord("\t"): " ", ord("\r"): " "})
#: normalise's folds of an ASCII text as a bytes.translate table: NUL and \t-\r to a
#: space, A-Z to a-z, 1-9 to 0.
_ASCII_FOLD = bytes(32 if c == 0 or 9 <= c <= 13 else c + 32 if 65 <= c <= 90
                    else 48 if 49 <= c <= 57 else c for c in range(256))


@dataclass(frozen=True)
class Spec:
    """Featurisation parameters (stored with the weights)."""

    orders: tuple[int, ...] = (2, 3, 4, 5)
    bits: int = 18
    #: (window, stride) pairs in characters; a text's score is the max over all of them.
    scales: tuple[tuple[int, int], ...] = ((256, 128), (64, 32))
    #: Whole words (runs of letters below U+2000) hashed into the same buckets as well.
    words: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"orders": list(self.orders), "bits": self.bits,
                "scales": [list(s) for s in self.scales], "words": self.words}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Spec:
        return cls(tuple(int(o) for o in d["orders"]), int(d["bits"]),
                   tuple((int(w), int(s)) for w, s in d["scales"]), bool(d.get("words")))


# ------------------------------------------------------------------------ featurisation

def normalise(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points uint32, start, length) of the normalised texts joined by NUL.

    Lower-cased (``str.lower``), digits 1-9 folded to 0, tab / CR / LF to a space.
    """
    # str.lower only for non-ASCII texts (the slow case); ASCII letters are lowered below.
    joined = "\x00".join([t if t.isascii() else t.lower()
                          for t in ((u or "").replace("\x00", " ") for u in texts)])
    cp = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).copy()
    cp[(cp - np.uint32(65)) < np.uint32(26)] += np.uint32(32)
    cp[(cp - np.uint32(49)) < np.uint32(9)] = 48
    cp[(cp - np.uint32(9)) < np.uint32(5)] = 32          # \t \n \v \f \r
    sep = np.flatnonzero(cp == 0)
    starts = np.concatenate([[0], sep + 1]).astype(np.int64)
    ends = np.concatenate([sep, [cp.size]]).astype(np.int64)
    return cp, starts, ends - starts


def gram_buckets(cp: np.ndarray, spec: Spec) -> list[np.ndarray]:
    """Per order k: the bucket of the k-gram starting at each position (``cp.size - k + 1``
    values, int64). A k-gram holding a separator (it would cross two texts) gets the bucket
    ``2**bits``, whose weight is 0.
    """
    out = []
    zero = 1 << spec.bits
    sep = np.flatnonzero(cp == 0)
    h = cp.copy()
    shift = np.uint32(32 - spec.bits)
    for k in range(1, max(spec.orders) + 1):
        if k > 1:
            h = h[:-1] * _MUL + cp[k - 1:]
        if k in spec.orders:
            x = (h ^ np.uint32((k * 0x27D4EB2F) & 0xFFFFFFFF)) * _MIX1
            x ^= x >> np.uint32(15)
            x *= _MIX2
            idx = (x >> shift).astype(np.int64)
            bad = (sep[:, None] - np.arange(k)[None, :]).ravel()
            idx[bad[(bad >= 0) & (bad < idx.size)]] = zero
            out.append(idx)
    if spec.words:
        st, b = word_starts(cp, spec.bits)
        idx = np.full(cp.size, zero, dtype=np.int64)
        idx[st] = b
        out.append(idx)
    return out


#: Letters (str.isalpha) below U+2000: Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic ...
_ALPHA = np.array([chr(c).isalpha() for c in range(0x2000)], dtype=bool)
_WORD_MAX = 16


def word_spans(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of every word: a run of letters (``str.isalpha``) below U+2000."""
    isw = np.zeros(cp.size, dtype=bool)
    low = cp < 0x2000
    isw[low] = _ALPHA[cp[low]]
    edge = np.diff(np.concatenate([[0], isw.view(np.int8), [0]]))
    st = np.flatnonzero(edge == 1)
    return st, np.flatnonzero(edge == -1) - st


def word_starts(cp: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(start position, bucket) of every word, hashed on its first 16 characters and its
    length (salted apart from the n-grams)."""
    st, ln = word_spans(cp)
    h = np.full(st.size, 0x9747B28C, dtype=np.uint32)
    for k in range(_WORD_MAX):
        m = ln > k
        if not m.any():
            break
        h[m] = h[m] * _MUL + cp[st[m] + k]
    x = (h ^ (np.minimum(ln, 255).astype(np.uint32) << np.uint32(24))) * _MIX1
    x ^= x >> np.uint32(15)
    x *= _MIX2
    return st, (x >> np.uint32(32 - bits)).astype(np.int64)


def window_counts(ws: np.ndarray, we: np.ndarray, doc_end: np.ndarray, spec: Spec
                  ) -> np.ndarray:
    """Number of n-grams (all orders) starting in each window that end inside the text."""
    cnt = np.zeros(ws.size, dtype=np.int64)
    for k in spec.orders:
        cnt += np.maximum(np.minimum(we, doc_end - k + 1) - ws, 0)
    return cnt


def windows(starts: np.ndarray, lens: np.ndarray, w: int, s: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window start, window end, first window of each text) over the joined array, for
    windows of ``w`` characters every ``s`` (the last one ends at the text's end)."""
    over = np.maximum(lens - w, 0)
    nw = np.where(lens > w, -(-over // s) + 1, 1)
    first = np.concatenate([[0], np.cumsum(nw)[:-1]])
    doc = np.repeat(np.arange(lens.size), nw)
    k = np.arange(doc.size) - first[doc]
    ws = starts[doc] + np.minimum(k * s, over[doc])
    we = np.minimum(ws + w, starts[doc] + lens[doc])
    return ws, we, first


# ------------------------------------------------------------------------ the model

def shipped_model_bytes() -> bytes:
    """The shipped model file's bytes: what it loads from and what the signal cache and the
    incremental state fingerprint (a retrained model invalidates both)."""
    return resources.files("distillguard").joinpath("data", MODEL_FILE).read_bytes()


@dataclass
class ElicitModel:
    """Hashed n-gram heads (int16 weights) scored as the max over windows."""

    spec: Spec
    weights: np.ndarray                    # (heads, 2**bits) int16
    scale: np.ndarray                      # (heads,) float64: logit per weight unit
    bias: np.ndarray                       # (heads,) float64
    heads: tuple[str, ...] = ("extract", "rubric")
    meta: dict[str, Any] = field(default_factory=dict)

    # -- persistence
    @classmethod
    def load(cls, path: str | Path | None = None) -> ElicitModel:
        """The shipped model (``data/elicit_model.npz``), or the one at ``path``. Offline."""
        if path is None:
            data = shipped_model_bytes()
        else:
            data = Path(path).read_bytes()
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> ElicitModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            return cls(Spec.from_json(meta["spec"]), z["weights"].astype(np.int16),
                       z["scale"].astype(np.float64), z["bias"].astype(np.float64),
                       tuple(meta["heads"]), meta)

    def to_bytes(self) -> bytes:
        """npz bytes; the same model gives the same bytes (fixed zip timestamps)."""
        import zipfile

        meta = dict(self.meta, spec=self.spec.to_json(), heads=list(self.heads))
        arrays = {"weights": self.weights.astype(np.int16), "scale": self.scale,
                  "bias": self.bias,
                  "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, arr in arrays.items():
                b = io.BytesIO()
                np.lib.format.write_array(b, np.ascontiguousarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, b.getvalue())
        return buf.getvalue()

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    # -- scoring
    def window_scores(self, texts: Sequence[str | None]) -> np.ndarray:
        """(n, heads) float64: per text, the max over windows of sum / sqrt(count).

        Integer weights and int64 running sums: a window's sum is an exact difference, so
        a text's value does not depend on the other texts of the batch.
        """
        cp, starts, lens = normalise(texts)
        nh = self.weights.shape[0]
        buckets = gram_buckets(cp, self.spec)
        ends = starts + lens
        geo = []
        for w, s in self.spec.scales:
            ws, we, first = windows(starts, lens, w, s)
            doc_end = np.repeat(ends, np.diff(np.concatenate([first, [ws.size]])))
            cnt = window_counts(ws, we, doc_end, self.spec)
            geo.append((ws, we, first, np.sqrt(np.maximum(cnt, 1).astype(np.float64))))
        out = np.full((len(texts), nh), -np.inf, dtype=np.float64)
        tables = self._tables()
        for h in range(nh):
            pos = np.zeros(cp.size + 1, dtype=np.int32)  # a few int16 weights per position
            for idx in buckets:
                pos[1:idx.size + 1] += np.take(tables[h], idx)
            acc = np.cumsum(pos, dtype=np.int64)
            for ws, we, first, root in geo:
                np.maximum(out[:, h], np.maximum.reduceat((acc[we] - acc[ws]) / root, first),
                           out=out[:, h])
        return out

    def _tables(self) -> np.ndarray:
        """(heads, 2**bits + 1) int32 weights; the last bucket (invalid n-grams) is 0."""
        t = self.__dict__.get("_tab")
        if t is None:
            t = np.zeros((self.weights.shape[0], self.weights.shape[1] + 1), dtype=np.int32)
            t[:, :-1] = self.weights
            self.__dict__["_tab"] = t
        return t

    def logits(self, texts: Sequence[str | None]) -> np.ndarray:
        """(n, heads) logits."""
        return self.window_scores(texts) * self.scale + self.bias

    def predict_heads(self, texts: Sequence[str | None]) -> np.ndarray:
        """(n, heads) probabilities (math.exp per value: the same bits on every engine)."""
        z = self.logits(texts)
        return np.array([[_sigmoid(x) for x in row] for row in z.tolist()],
                        dtype=np.float64).reshape(z.shape)

    def predict_proba(self, texts: Sequence[str | None]) -> np.ndarray:
        """(n,) probability that each text is reasoning extraction or rubric / reward use
        (the max over heads). Scored in chunks of ``CHUNK`` texts (cache-sized arrays); a
        text's value does not depend on the chunk it is in."""
        out = np.empty(len(texts), dtype=np.float64)
        for i in range(0, len(texts), CHUNK):
            z = self.logits(texts[i:i + CHUNK]).max(axis=1)
            out[i:i + z.size] = [_sigmoid(x) for x in z.tolist()]
        return out

    def proba_one(self, text: str | None) -> float:
        """``predict_proba([text])[0]``, the same bits, with a fraction of the numpy calls.

        The online scorer scores one text per request, where ``predict_proba``'s batch
        machinery (separators, per-text window offsets, ``reduceat``) costs ~165 µs CPU of
        numpy call overhead on a short prompt, this ~32 µs: an ASCII text is folded by one
        ``bytes.translate``, all orders are hashed and looked up (both heads) in one pass,
        and the window geometry, which depends only on the text's length, is cached.
        """
        t = text or ""
        if t.isascii():      # normalise's folds as one bytes.translate
            cp = np.frombuffer(t.encode("ascii").translate(_ASCII_FOLD), np.uint8)
            cp = cp.astype(np.uint32)
        else:
            t = t.replace("\x00", " ").lower()
            cp = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).copy()
            cp[(cp - np.uint32(65)) < np.uint32(26)] += np.uint32(32)
            cp[(cp - np.uint32(49)) < np.uint32(9)] = 48
            cp[(cp - np.uint32(9)) < np.uint32(5)] = 32
        spec, tables = self.spec, self._tables()
        n = cp.size
        # every order's salted n-gram hashes in one array: one mix and one lookup for all
        parts, h = [], cp
        for k in range(1, max(spec.orders) + 1):
            if k > 1:
                h = h[:-1] * _MUL + cp[k - 1:]
            if k in spec.orders:
                parts.append(h ^ np.uint32((k * 0x27D4EB2F) & 0xFFFFFFFF))
        x = np.concatenate(parts) * _MIX1
        x ^= x >> np.uint32(15)
        x *= _MIX2
        w = tables[:, x >> np.uint32(32 - spec.bits)]
        pos = np.zeros((tables.shape[0], n + 1), dtype=np.int32)
        at = 0
        for part in parts:
            pos[:, 1:part.size + 1] += w[:, at:at + part.size]
            at += part.size
        if spec.words:
            st, b = word_starts(cp, spec.bits)
            pos[:, st + 1] += tables[:, b]
        acc = np.cumsum(pos, axis=1, dtype=np.int64)
        ws, we, root = _geometry(n, spec.scales, spec.orders)
        z = ((acc[:, we] - acc[:, ws]) / root).max(axis=1) * self.scale + self.bias
        return _sigmoid(float(z.max()))


@functools.lru_cache(maxsize=8192)
def _geometry(n: int, scales: tuple[tuple[int, int], ...], orders: tuple[int, ...]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, sqrt of n-gram count) of every window of every scale over one text of
    ``n`` characters, as :func:`windows` and :func:`window_counts` place them."""
    starts, lens = np.array([0], dtype=np.int64), np.array([n], dtype=np.int64)
    parts = [windows(starts, lens, w, s)[:2] for w, s in scales]
    ws = np.concatenate([p[0] for p in parts])
    we = np.concatenate([p[1] for p in parts])
    cnt = window_counts(ws, we, np.full(ws.size, n, dtype=np.int64), Spec(orders))
    return ws, we, np.sqrt(np.maximum(cnt, 1).astype(np.float64))


#: Texts scored per numpy pass (larger arrays fall out of the CPU caches: slower per text).
CHUNK = 2048
_DEFAULT: list[ElicitModel] = []


def default_model() -> ElicitModel:
    """The shipped model, loaded once per process."""
    if not _DEFAULT:
        _DEFAULT.append(ElicitModel.load())
    return _DEFAULT[0]


def scan_probs(scan: Any) -> np.ndarray:
    """``elicit_p`` of a batch of scan texts (a pyarrow string array or a list), float64.

    The per-batch step of every engine: the DuckDB stage's worker processes, the Spark
    executors and, one text at a time, the online scorer.
    """
    model = default_model()
    if hasattr(scan, "dictionary_encode"):       # Arrow: score each distinct text once
        enc = scan.dictionary_encode()
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        uniq = model.predict_proba(enc.dictionary.to_pylist())
        return uniq[enc.indices.to_numpy(zero_copy_only=False)]
    return model.predict_proba(list(scan))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
