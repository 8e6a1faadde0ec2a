"""Training and leave-one-family-out evaluation of the elicitation model.

``train`` rebuilds the shipped weights from the shipped labelled set (same bytes on a rerun:
fixed data order, deterministic lbfgs, fixed-point weights). ``lofo`` trains once per
held-out elicitation family on the train split of every other family and reports, on the
eval split, the held-out family's recall at the threshold that flags at most ``fpr`` of the
benign reasoning-talk set, with the false-positive rate on ordinary prompts at that
threshold and the rules' recall on the same rows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from distillguard.signals.elicit_data import load_families, scan_text
from distillguard.signals.elicit_model import (
    _FOLD,
    ElicitModel,
    Spec,
    gram_buckets,
    normalise,
    windows,
)

HEADS = ("extract", "rubric")
_SLOT = re.compile(r"\{(\w+)\}")
#: Default training parameters (chosen by LOFO, docs/elicitation.md).
DEFAULT_SPEC = Spec()
DEFAULT_C = 256.0
DEFAULT_HEADS: tuple[str, ...] = ("elicit",)
#: Buckets that are positive evidence in fewer training families than this are left out
#: (``narrow_buckets``).
DEFAULT_MIN_FAMILIES = 6
#: A window of a positive text is a positive example when it holds at least this share of
#: the instruction characters the best window of that text holds.
COVER = 0.8


@dataclass
class Windows:
    """Training windows: sparse features, owning row, and per-head labels (or -1: unused)."""

    X: sp.csr_matrix
    row: np.ndarray
    y: np.ndarray            # (n_windows, heads) int8: 1, 0, or -1 (not an example)
    Xw: sp.csr_matrix | None = None    # (n_windows, vocabulary) word counts, when embedded
    family: np.ndarray | None = None   # (n_rows,) each row's family, for ``min_families``


def _norm(s: str) -> str:
    return s.replace("\x00", " ").lower().translate(_FOLD)


def _fragments(template: str) -> list[str]:
    parts = _SLOT.split(template)[::2]          # literal pieces between slots
    out = []
    for p in parts:
        p = _norm(p.replace("{{", "{").replace("}}", "}"))
        if len(p.strip()) >= 3:
            out.append(p)
    return out


def instruction_mask(row: dict[str, Any], scan: str, templates: dict[str, str]) -> np.ndarray:
    """Boolean per character of the normalised ``scan``: part of the template's text."""
    norm = _norm(scan)
    mask = np.zeros(len(norm), dtype=bool)
    tref = row["provenance"].split(" ", 2)[1]
    tpl = templates.get(tref)
    if tpl is None:
        return mask
    if row.get("system") and tpl.strip() == row["system"].strip():       # system-kind
        at = len(norm) - len(_norm(row["system"]))
        mask[max(at, 0):] = True
        return mask
    pos = 0
    for frag in _fragments(tpl):
        i = norm.find(frag, pos)
        if i < 0:
            i = norm.find(frag)
        if i >= 0:
            mask[i:i + len(frag)] = True
            pos = i + len(frag)
    return mask


def template_index(families: dict[str, Any] | None = None) -> dict[str, str]:
    fam = families or load_families()
    return {f"{f['name']}/{lang}/{i}": t for f in fam["families"]
            for lang, ts in f["templates"].items() for i, t in enumerate(ts)}


def training_windows(rows: Sequence[dict[str, Any]], spec: Spec,
                     templates: dict[str, str] | None = None,
                     vocab: tuple[list[str], np.ndarray] | None = None) -> Windows:
    """Windows of ``rows`` with labels: every window of a benign row is a negative for each
    head; of a positive row, the windows holding most of its instruction are positives of its
    head (and negatives of the other head), the rest are not used."""
    templates = templates if templates is not None else template_index()
    scans = [scan_text(r["text"], r.get("system")) for r in rows]
    cp, starts, lens = normalise(scans)
    masks = [None if r["label"] == "benign" else instruction_mask(r, scans[i], templates)
             for i, r in enumerate(rows)]
    word_rows = None
    if spec.words and vocab is not None:
        word_rows = {int(b): i for i, b in enumerate(vocab[1].tolist())}
    parts = []
    for w, s in spec.scales:
        ws, we, first = windows(starts, lens, w, s)
        nwin = np.diff(np.concatenate([first, [ws.size]]))
        y = np.zeros((ws.size, len(HEADS)), dtype=np.int8)
        for i, r in enumerate(rows):
            m = masks[i]
            if m is None:
                continue
            lo, hi = first[i], first[i] + nwin[i]
            if m.size != lens[i]:        # lower() changed the length: not used
                y[lo:hi] = -1
                continue
            cm = np.concatenate([[0], np.cumsum(m)])
            cov = cm[we[lo:hi] - starts[i]] - cm[ws[lo:hi] - starts[i]]
            best = cov.max()
            pos = cov >= COVER * best if best > 0 else np.ones(hi - lo, bool)
            y[lo:hi] = np.where(pos, 0, -1)[:, None]
            y[lo:hi, HEADS.index(r["label"])] = np.where(pos, 1, -1)
        X, Xw = window_matrix(cp, ws, we, spec, word_rows, len(vocab[0]) if vocab else 0)
        parts.append((X, np.repeat(np.arange(len(rows)), nwin), y, Xw))
    return Windows(sp.vstack([p[0] for p in parts], format="csr"),
                   np.concatenate([p[1] for p in parts]), np.vstack([p[2] for p in parts]),
                   sp.vstack([p[3] for p in parts], format="csr") if word_rows else None,
                   np.array([r.get("family", "") for r in rows], dtype=object))


def narrow_buckets(win: Windows, sel: np.ndarray, min_families: int) -> np.ndarray:
    """Buckets that are positive evidence in at least one but fewer than ``min_families``
    families among the selected windows (bool, one per bucket).

    A bucket that the instructions of only a few families use is their own wording; the
    model would learn it and it does not carry over to a phrasing it has never seen. Left
    out of training, the model keeps the cues many families share (and every bucket only
    benign text holds, which is what holds the false positives down): leave-one-family-out
    recall 0.526 -> 0.624 at ``min_families`` 6 of 16-17 families (docs/elicitation.md).
    """
    nb = win.X.shape[1]
    if min_families <= 1 or win.family is None:
        return np.zeros(nb, dtype=bool)
    pos = np.flatnonzero(sel & (win.y == 1).any(axis=1))
    if pos.size == 0:
        return np.zeros(nb, dtype=bool)
    names, code = np.unique(win.family[win.row[pos]].astype(str), return_inverse=True)
    if names.size < min_families:
        # every positive bucket would be left out: an empty model, not a narrower one
        raise ValueError(f"min_families {min_families} but the training rows hold "
                         f"{names.size} elicitation families; use at most a third of them "
                         "(--min-families)")
    present = (win.X[pos] != 0).astype(np.float32)
    onehot = sp.csr_matrix((np.ones(pos.size, np.float32), (np.arange(pos.size), code)),
                           shape=(pos.size, int(code.max()) + 1))
    n_fam = np.asarray(((present.T @ onehot) > 0).sum(axis=1)).ravel()
    return (n_fam > 0) & (n_fam < min_families)


def window_matrix(cp: np.ndarray, ws: np.ndarray, we: np.ndarray, spec: Spec,
                  word_rows: dict[int, int] | None = None, n_vocab: int = 0
                  ) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """(windows, 2**bits) CSR: each n-gram starting in a window counts 1 / sqrt(count), as
    ``ElicitModel.window_scores`` sums them (count: the window's character n-grams).

    With ``spec.words``: given ``word_rows`` (bucket -> vocabulary row), words go to a second
    (windows, n_vocab) matrix (to be multiplied by the word embeddings); without it, word
    buckets are plain columns of the first.
    """
    zero = 1 << spec.bits
    ln = we - ws
    pos = np.repeat(ws - np.concatenate([[0], np.cumsum(ln)[:-1]]), ln) + np.arange(ln.sum())
    wid = np.repeat(np.arange(ws.size), ln)
    buckets = gram_buckets(cp, spec)
    n_char = len(spec.orders)
    cols, rws = [], []
    cnt = np.zeros(ws.size)
    for o, idx in enumerate(buckets):
        sel = pos < idx.size
        c = idx[pos[sel]]
        good = c != zero
        if o < n_char:
            cnt += np.bincount(wid[sel][good], minlength=ws.size)
        if o >= n_char and word_rows is not None:
            continue
        cols.append(c[good])
        rws.append(wid[sel][good])
    inv = 1.0 / np.sqrt(np.maximum(cnt, 1.0))
    col = np.concatenate(cols)
    rw = np.concatenate(rws)
    X = sp.csr_matrix((inv[rw], (rw, col)), shape=(ws.size, zero))
    X.sum_duplicates()
    X.sort_indices()
    Xw = None
    if spec.words and word_rows is not None:
        c = buckets[-1][pos]
        good = c != zero
        r = np.array([word_rows.get(int(b), -1) for b in c[good]], dtype=np.int64)
        w = wid[good]
        ok = r >= 0
        Xw = sp.csr_matrix((inv[w[ok]], (w[ok], r[ok])), shape=(ws.size, n_vocab))
        Xw.sum_duplicates()
    return X, Xw


def fit(rows: Sequence[dict[str, Any]], spec: Spec = DEFAULT_SPEC, C: float = DEFAULT_C,
        templates: dict[str, str] | None = None, meta: dict[str, Any] | None = None,
        heads: tuple[str, ...] = DEFAULT_HEADS,
        min_families: int = DEFAULT_MIN_FAMILIES) -> ElicitModel:
    """One logistic regression per head over training windows; int16 weights."""
    emb = None
    if spec.words:
        vocab = vocabulary([r["text"] for r in rows], spec)
        emb = (vocab, word_vectors(vocab[0]))
    win = training_windows(rows, spec, templates, emb[0] if emb else None)
    return fit_windows(win, spec, C, None, meta, heads, emb, min_families)


def fit_windows(win: Windows, spec: Spec, C: float = DEFAULT_C, keep: np.ndarray | None = None,
                meta: dict[str, Any] | None = None, heads: tuple[str, ...] = DEFAULT_HEADS,
                emb: tuple[tuple[list[str], np.ndarray], np.ndarray] | None = None,
                min_families: int = DEFAULT_MIN_FAMILIES) -> ElicitModel:
    """Fit on the windows of rows where ``keep[row]`` (all rows without ``keep``).

    ``min_families``: n-gram buckets that are positive evidence in fewer families of the
    kept rows than this are left out (:func:`narrow_buckets`; weight 0).

    ``heads``: ``HEADS`` (extract, rubric) or one merged head (``("elicit",)``). ``emb``:
    ((vocabulary, buckets), vectors): word features enter the regression as embeddings; each
    vocabulary word's bucket then gets the weight its vector earns (vector . weights).
    """
    from sklearn.linear_model import LogisticRegression

    y = win.y
    if len(heads) == 1:
        y = np.where((y == 1).any(axis=1), 1, np.where((y == 0).all(axis=1), 0, -1))[:, None]
    sel = np.ones(y.shape[0], dtype=bool) if keep is None else keep[win.row]
    nb = 1 << spec.bits
    X = win.X
    narrow = narrow_buckets(win, sel, min_families)
    if narrow.any():
        X = (X @ sp.diags((~narrow).astype(np.float64))).tocsr()
    if emb is not None and win.Xw is not None:
        X = sp.hstack([X, sp.csr_matrix(win.Xw @ emb[1])], format="csr")
    W = np.zeros((len(heads), nb), dtype=np.int16)
    scale = np.ones(len(heads))
    bias = np.zeros(len(heads))
    for h in range(len(heads)):
        use = sel & (y[:, h] >= 0)
        yh = y[use, h]
        if yh.min() == yh.max():
            bias[h] = -20.0                      # no positives: this head never fires
            continue
        clf = LogisticRegression(C=C, solver="liblinear", tol=1e-4, random_state=0)
        clf.fit(X[use], yh)
        w = clf.coef_[0][:nb].copy()
        if emb is not None and win.Xw is not None:
            (_, buckets), vecs = emb
            w[buckets] += vecs @ clf.coef_[0][nb:]
        s = float(np.abs(w).max()) / 32767.0 or 1.0
        W[h] = np.round(w / s).astype(np.int16)
        scale[h] = s
        bias[h] = float(clf.intercept_[0])
    return ElicitModel(spec, W, scale, bias, tuple(heads),
                       dict(meta or {}, C=C, **({"min_families": min_families}
                                                if min_families > 1 else {})))


# ------------------------------------------------------------------------ evaluation

def threshold_at(benign: np.ndarray, fpr: float) -> float:
    """Flag ``p > t``: at most floor(fpr * n) benign values are above ``t``."""
    b = np.sort(np.asarray(benign, dtype=np.float64))[::-1]
    if b.size == 0:
        return 0.5
    return float(b[min(int(np.floor(fpr * b.size)), b.size - 1)])


#: Per-prompt share of benign reasoning talk the operating point printed by ``elicit train``
#: may flag (a candidate for ``signals.elicit_model_threshold``; not applied automatically).
OPERATING_BUDGET = 0.0025


def operating_point(model: ElicitModel, rows: Sequence[dict[str, Any]],
                    fpr: float = OPERATING_BUDGET) -> dict[str, float]:
    """The threshold at which ``model`` flags at most ``fpr`` of the eval split's benign
    reasoning talk (a candidate for ``signals.elicit_model_threshold``),
    with what it flags there. Requests count from
    ``elicit_p >= threshold``; the value is the next 1e-4 step above the budget's boundary
    row, so that ``>=`` keeps the budget and the number can be written in the config as is."""
    ev = [r for r in rows if r["split"] == "eval"]
    grp = np.array([r["group"] for r in ev])
    p = model.predict_proba([scan_text(r["text"], r.get("system")) for r in ev])
    t = round(float(np.floor(threshold_at(p[grp == "reasoning_talk"], fpr) * 1e4) + 1) / 1e4, 4)
    return {"threshold": t,
            "fpr_reasoning_talk": float(np.mean(p[grp == "reasoning_talk"] >= t)),
            "fpr_ordinary": float(np.mean(p[grp == "ordinary"] >= t)),
            "recall": float(np.mean(p[grp == "elicit"] >= t))}


def rules_flags(scans: Sequence[str]) -> np.ndarray:
    """Whether the rule flags cot_elicit or rubric_grading fire (the online scorer's RE2
    semantics, so the same matches as the batch engines)."""
    from distillguard.config import load_config
    from distillguard.respond.online import re2_semantics
    from distillguard.signals.rules import load_rules

    flags, _ = load_rules(load_config())
    rx = [re.compile(re2_semantics(r.pattern)) for r in flags
          if r.name in ("cot_elicit", "rubric_grading")]
    return np.array([any(x.search(s) for x in rx) for s in scans], dtype=bool)


def lofo(rows: Sequence[dict[str, Any]], spec: Spec = DEFAULT_SPEC, C: float = DEFAULT_C,
         fpr: float = 0.01, families: Sequence[str] | None = None,
         extra_benign: Sequence[str] | None = None,
         heads: tuple[str, ...] = DEFAULT_HEADS,
         at: Sequence[float] = (),
         min_families: int = DEFAULT_MIN_FAMILIES) -> list[dict[str, Any]]:
    """Leave-one-family-out table, one dict per held-out family, then ``(all)``: the model
    trained on every family (held-out families' eval split still unseen).

    ``at``: fixed probabilities (an operating threshold such as
    ``signals.elicit_model_threshold``); each row then holds ``at[str(t)]``, the share of
    the target rows, of benign reasoning talk, of ordinary prompts (and of the extra
    benign prompts) with ``p >= t``: what a feature counting ``elicit_p >= t`` sees of a
    family the model never learnt."""
    templates = template_index()
    split = np.array([r["split"] for r in rows])
    fam = np.array([r["family"] for r in rows])
    grp = np.array([r["group"] for r in rows])
    ev = split == "eval"
    scans = [scan_text(r["text"], r.get("system")) for r in rows]
    rules = rules_flags([s for s, e in zip(scans, ev, strict=True) if e])
    rule_of = np.zeros(len(rows), dtype=bool)
    rule_of[ev] = rules
    elicit = sorted(set(fam[grp == "elicit"]))
    held = list(families) if families is not None else elicit + ["(all)"]
    eval_idx = np.flatnonzero(ev)
    eval_scans = [scans[i] for i in eval_idx]
    train_idx = np.flatnonzero(~ev)
    emb = None
    if spec.words:
        vocab = vocabulary([rows[i]["text"] for i in train_idx], spec)
        emb = (vocab, word_vectors(vocab[0]))
    win = training_windows([rows[i] for i in train_idx], spec, templates,
                           emb[0] if emb else None)
    out = []
    for F in held:
        model = fit_windows(win, spec, C, fam[train_idx] != F, heads=heads, emb=emb,
                            min_families=min_families)
        p = np.zeros(len(rows))
        p[eval_idx] = model.predict_proba(eval_scans)
        t = threshold_at(p[ev & (grp == "reasoning_talk")], fpr)
        target = ev & ((grp == "elicit") if F == "(all)" else (fam == F))
        res = {"family": F, "n": int(target.sum()),
               "label": "" if F == "(all)" else rows[int(np.flatnonzero(fam == F)[0])]["label"],
               "recall": float(np.mean(p[target] > t)), "threshold": t,
               "fpr_reasoning_talk": float(np.mean(p[ev & (grp == "reasoning_talk")] > t)),
               "fpr_ordinary": float(np.mean(p[ev & (grp == "ordinary")] > t)),
               "rules_recall": float(np.mean(rule_of[target])),
               "rules_fpr_reasoning_talk": float(np.mean(rule_of[ev & (grp == "reasoning_talk")])),
               "rules_fpr_ordinary": float(np.mean(rule_of[ev & (grp == "ordinary")]))}
        pe = model.predict_proba(list(extra_benign)) if extra_benign else None
        if pe is not None:
            res["fpr_extra"] = float(np.mean(pe > t))
        if at:
            res["at"] = {str(a): {
                "recall": float(np.mean(p[target] >= a)),
                "fpr_reasoning_talk": float(np.mean(p[ev & (grp == "reasoning_talk")] >= a)),
                "fpr_ordinary": float(np.mean(p[ev & (grp == "ordinary")] >= a)),
                **({"fpr_extra": float(np.mean(pe >= a))} if pe is not None else {})}
                for a in at}
        out.append(res)
    return out


def throughput(model: ElicitModel, texts: Sequence[str], batch: int = 20_000,
               repeat: int = 3) -> float:
    """Prompts per second of ``predict_proba`` in this process (best of ``repeat``)."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            model.predict_proba(texts[i:i + batch])
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


# ------------------------------------------------------------------------ word embeddings

def word_vectors(words: Sequence[str]) -> np.ndarray:
    """(n, 256) float64: static WordLlama (l2_supercat, MIT) embeddings of words, each the
    mean of its tokens' vectors. Training only: the shipped model keeps one weight per word."""
    from distillguard.bench.embed import _load_wordllama

    m = _load_wordllama()
    tok, table = m.tokenizer, np.asarray(m.embedding, dtype=np.float64)
    space = tok.token_to_id("▁")
    out = np.zeros((len(words), table.shape[1]))
    for i, enc in enumerate(tok.encode_batch([" " + w for w in words],
                                             add_special_tokens=False)):
        ids = [t for t in enc.ids if t != space]
        if ids:
            out[i] = table[ids].mean(axis=0)
    return out


def vocabulary(texts: Sequence[str], spec: Spec) -> tuple[list[str], np.ndarray]:
    """Words of ``texts``, of the bundled corpus and WordLlama's whole-word tokens, sorted,
    with their buckets."""
    from distillguard.bench.embed import _load_wordllama
    from distillguard.signals.elicit_data import load_corpus
    from distillguard.signals.elicit_model import word_spans

    tasks, turns = load_corpus()
    corpus = list(texts) + [t for t, _, _ in turns] + [t.response or "" for t in tasks]
    words: set[str] = set()
    for i in range(0, len(corpus), 4096):
        cp, _, _ = normalise(corpus[i:i + 4096])
        st, ln = word_spans(cp)
        s = cp.tobytes().decode("utf-32-le")
        words.update(s[a:a + b] for a, b in zip(st.tolist(), ln.tolist(), strict=True))
    tok = _load_wordllama().tokenizer
    for t in tok.get_vocab():
        if t.startswith("▁") and len(t) > 2 and t[1:].isalpha():
            words.add(t[1:].lower())
    vocab = sorted(w for w in words if w and w == w.lower()
                   and all(ord(c) < 0x2000 and c.isalpha() for c in w))
    from distillguard.signals.elicit_model import word_starts

    cp, _, _ = normalise([" ".join(vocab)])
    _, buckets = word_starts(cp, spec.bits)
    return vocab, buckets
