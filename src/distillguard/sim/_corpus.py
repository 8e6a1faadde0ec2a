"""Prompt corpora: loaders for the real prompt sets, a bundled default, and tune/report splits.

The simulator never invents the *content* of ordinary traffic: it replays prompts written by
real people (ShareGPT, OpenAssistant, HH-RLHF, AlpacaEval, MT-Bench/Vicuna) and wraps prompt
sets that were really used for distillation (Alpaca, Self-Instruct seeds, Code Alpaca,
GSM8K) in campaign templates. Every source is normalised to :class:`Item` — one
conversation: its user turns, the assistant replies between them when the source has them,
and a reference answer when the source is an instruction-tuning set.

Splits are by *conversation* (ShareGPT ``share_id``, OpenAssistant message tree, record index
elsewhere) through a stable hash, so ``split="tune"`` and ``split="report"`` never share a
prompt and detection tuned on one half is measured on prompts it has never seen.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import orjson

from distillguard.errors import DistillguardError

__all__ = [
    "Corpus",
    "Item",
    "bundled_corpus",
    "guess_category",
    "load_corpus",
    "load_file",
]


@dataclass(frozen=True, slots=True)
class Item:
    """One conversation from a prompt source.

    Attributes
    ----------
    turns : tuple of str
        User turns in order (at least one).
    replies : tuple of str
        Assistant replies that followed ``turns[:-1]`` where the source has them (may be
        shorter than ``len(turns) - 1``; the simulator fills gaps from a reply pool).
    source : str
        Short source name (``oasst1``, ``gsm8k``, ...); usable in ``sources=`` filters.
    group : str
        Provenance id inside the source (ShareGPT ``share_id``, OpenAssistant tree id,
        record index).
    category : str
        Coarse capability: coding, math, writing, chat, benchmark, meta_generation.
    answer : str or None
        Reference answer (instruction-tuning sets), used to build "reconstruct the reasoning
        behind this completed response" and rubric-grading requests.
    """

    turns: tuple[str, ...]
    replies: tuple[str, ...] = ()
    source: str = "generic"
    group: str = ""
    category: str = "chat"
    answer: str | None = None

    def to_json(self) -> dict:
        d: dict = {"turns": list(self.turns), "source": self.source, "group": self.group,
                   "category": self.category}
        if self.replies:
            d["replies"] = list(self.replies)
        if self.answer is not None:
            d["answer"] = self.answer
        return d

    @classmethod
    def from_json(cls, d: dict) -> Item:
        return cls(tuple(d["turns"]), tuple(d.get("replies", ())), d.get("source", "generic"),
                   str(d.get("group", "")), d.get("category", "chat"), d.get("answer"))


_WORD = re.compile(r"[a-z+#]+")
_CODE_WORDS = frozenset(
    "def class function python javascript java c++ sql regex bash code program script api html "
    "css rust golang typescript compile compiler debug algorithm array dataframe pandas react "
    "docker json numpy linux git kubernetes c# php ruby kotlin swift".split())
_CODE_MARKS = ("```", "def ", "();", "=>", "import ", "#include", "</")
_MATH_WORDS = frozenset(
    "calculate solve equation probability integral derivative percent percentage average "
    "prime sum remainder fraction".split())
_MATH_NUM = re.compile(r"\d+\s*[-+*/x×^=]\s*\d+")
_WRITE_WORDS = frozenset(
    "write essay poem story email letter blog rewrite paragraph slogan summarize summarise "
    "summary lyrics".split())


def guess_category(text: str) -> str:
    """Cheap keyword guess of a prompt's capability (used only to mix traffic)."""
    head = text[:1500].lower()
    words = set(_WORD.findall(head))
    if words & _CODE_WORDS or any(m in head for m in _CODE_MARKS):
        return "coding"
    if words & _MATH_WORDS or "how many" in head or "how much" in head or _MATH_NUM.search(head):
        return "math"
    if words & _WRITE_WORDS:
        return "writing"
    return "chat"


def split_key(item: Item) -> str:
    """The tune/report partition key of an item: its opening prompt, normalised."""
    return " ".join(item.turns[0].lower().split())


def stable_unit(key: str) -> float:
    """Map a string to [0, 1) stably across runs and platforms (blake2b, not ``hash``)."""
    h = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


@dataclass
class Corpus:
    """A list of :class:`Item` with the selections the simulator needs.

    Build with :func:`load_corpus` or :func:`bundled_corpus`; narrow with :meth:`split` and
    :meth:`only_sources`.
    """

    items: list[Item] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def split(self, part: str, tune_fraction: float = 0.5) -> Corpus:
        """Return the ``tune`` or ``report`` part (or everything for ``all``).

        The unit is the conversation, keyed by its normalised opening prompt: all turns of
        a conversation, every branch of an OpenAssistant tree, and every copy of the same
        opening prompt in other records or sources land on the same side, so the halves
        share no opening prompt. The hash is stable (blake2b), so the partition is the same
        for every seed and scenario.
        """
        if part == "all":
            return Corpus(list(self.items))
        if part not in ("tune", "report"):
            raise DistillguardError(f"split must be tune, report or all, not {part!r}")
        want_tune = part == "tune"
        return Corpus([it for it in self.items
                       if (stable_unit(split_key(it)) < tune_fraction) == want_tune])

    def only_sources(self, include: Iterable[str] | None = None,
                     exclude: Iterable[str] | None = None) -> Corpus:
        """Keep items whose source is in ``include`` and not in ``exclude``."""
        inc = set(include) if include is not None else None
        exc = set(exclude or ())
        return Corpus([it for it in self.items
                       if (inc is None or it.source in inc) and it.source not in exc])

    def by_category(self, *cats: str) -> list[Item]:
        return [it for it in self.items if it.category in cats]

    def sources(self) -> list[str]:
        return sorted({it.source for it in self.items})


# --------------------------------------------------------------------------------------
# Loaders, one per known format. Each yields Items; ``load_file`` picks by name/content.
# --------------------------------------------------------------------------------------

def _open_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return fh.read()
    return path.read_text(encoding="utf-8")


def _jsonl(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines() would also break on U+2028 inside JSON strings
    return [orjson.loads(line) for line in _open_text(path).split("\n") if line.strip()]


def _instr(rec: dict, key_in: str = "input") -> str:
    inst = str(rec.get("instruction", "")).strip()
    inp = str(rec.get(key_in, "") or "").strip()
    return f"{inst}\n\n{inp}" if inp and inp != "<noinput>" else inst


def _load_sharegpt(path: Path) -> list[Item]:
    convs: dict[str, list[tuple[int, int, str]]] = {}
    for r in _jsonl(path):
        convs.setdefault(str(r["share_id"]), []).append(
            (int(r.get("part", 0)), int(r.get("turn", 0)), str(r["text"])))
    out = []
    for sid, turns in convs.items():
        turns.sort()
        texts = tuple(t for _, _, t in turns if t.strip())
        if texts:
            out.append(Item(texts, (), "sharegpt", sid, guess_category(texts[0])))
    return out


def _load_oasst(path: Path) -> list[Item]:
    rows = [r for r in _jsonl(path) if not r.get("deleted")]
    by_id = {r["message_id"]: r for r in rows}
    has_prompter_grandchild: set[str] = set()
    for r in rows:
        if r.get("role") == "prompter" and r.get("parent_id") in by_id:
            gp = by_id[r["parent_id"]].get("parent_id")
            if gp:
                has_prompter_grandchild.add(gp)
    out = []
    for r in rows:
        # a conversation per deepest prompter message: its chain from the root
        if r.get("role") != "prompter" or r["message_id"] in has_prompter_grandchild:
            continue
        chain = []
        cur: dict | None = r
        while cur is not None:
            chain.append(cur)
            cur = by_id.get(cur.get("parent_id") or "")
        chain.reverse()
        turns = tuple(m["text"] for m in chain if m["role"] == "prompter")
        replies = tuple(m["text"] for m in chain if m["role"] == "assistant")
        root = chain[0].get("message_tree_id") or chain[0]["message_id"]
        out.append(Item(turns, replies, "oasst1", str(root), guess_category(turns[0])))
    return out


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _load_hh(path: Path) -> list[Item]:
    out = []
    for i, r in enumerate(_jsonl(path)):
        parts = _HH_TURN.split(r["chosen"])
        turns, replies = [], []
        for role, text in zip(parts[1::2], parts[2::2], strict=False):
            (turns if role == "Human" else replies).append(text.strip())
        turns = [t for t in turns if t]
        if turns:
            out.append(Item(tuple(turns), tuple(replies[:len(turns) - 1]), "hh_rlhf", str(i),
                            guess_category(turns[0])))
    return out


def _load_alpaca_eval(path: Path) -> list[Item]:
    out = []
    for i, r in enumerate(orjson.loads(_open_text(path))):
        text = str(r["instruction"])
        out.append(Item((text,), (), "alpaca_eval", str(i), guess_category(text),
                        answer=r.get("output")))
    return out


def _load_bench(path: Path, source: str) -> list[Item]:
    out = []
    for r in _jsonl(path):
        turns = tuple(str(t) for t in r.get("turns", ()) if t)
        if turns:
            out.append(Item(turns, (), source, str(r.get("question_id", len(out))), "benchmark"))
    return out


def _load_alpaca_like(path: Path, source: str) -> list[Item]:
    recs = orjson.loads(_open_text(path))
    out = []
    for i, r in enumerate(recs):
        text = _instr(r)
        if text:
            cat = "coding" if source == "code_alpaca" else guess_category(text)
            out.append(Item((text,), (), source, str(i), cat, answer=r.get("output")))
    return out


def _load_seed_tasks(path: Path, source: str) -> list[Item]:
    out = []
    for i, r in enumerate(_jsonl(path)):
        inst = (r.get("instances") or [{}])[0]
        text = _instr({"instruction": r.get("instruction", ""), "input": inst.get("input", "")})
        if text:
            cat = "coding" if source == "code_alpaca_seed" else guess_category(text)
            out.append(Item((text,), (), source, str(r.get("id", i)), cat,
                            answer=inst.get("output")))
    return out


def _load_gsm8k(path: Path) -> list[Item]:
    return [Item((r["question"],), (), "gsm8k", str(i), "math", answer=r.get("answer"))
            for i, r in enumerate(_jsonl(path))]


_TEXT_FIELDS = ("text", "prompt", "instruction", "question", "content")


def _load_generic(path: Path) -> list[Item]:
    """Generic fallback: JSON list / JSONL of objects with a text-like field, or plain text."""
    name = path.name.lower()
    raw = _open_text(path)
    stem = re.sub(r"\.(jsonl|json|txt)(\.gz)?$", "", name)
    if ".json" not in name:
        if "generation_prompt" in name:  # the Alpaca/Self-Instruct meta prompt: one prompt
            return [Item((raw.strip(),), (), stem, "0", "meta_generation")]
        lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
        return [Item((ln,), (), stem, str(i), guess_category(ln)) for i, ln in enumerate(lines)]
    recs = orjson.loads(raw) if name.endswith((".json", ".json.gz")) else _jsonl(path)
    out = []
    for i, r in enumerate(recs):
        if isinstance(r, str):
            text = r
        elif "turns" in r and isinstance(r["turns"], list):  # our own bundled format
            out.append(Item.from_json(r))
            continue
        else:
            text = next((str(r[k]) for k in _TEXT_FIELDS if r.get(k)), "")
            if r.get("instruction") and r.get("input"):
                text = _instr(r)
        if text.strip():
            out.append(Item((text,), (), stem, str(i), guess_category(text),
                            answer=r.get("output") if isinstance(r, dict) else None))
    return out


def load_file(path: str | Path) -> list[Item]:
    """Load one prompt file, choosing the loader from the file name, else from its fields."""
    p = Path(path)
    if not p.is_file():
        raise DistillguardError(f"corpus file not found: {p}")
    n = p.name.lower()
    if n.endswith(".items.jsonl.gz"):
        return [Item.from_json(r) for r in _jsonl(p)]
    if "sharegpt" in n:
        return _load_sharegpt(p)
    if "oasst" in n:
        return _load_oasst(p)
    if "hh_rlhf" in n or "hh-rlhf" in n:
        return _load_hh(p)
    if "alpaca_eval" in n:
        return _load_alpaca_eval(p)
    if "mt_bench" in n:
        return _load_bench(p, "mt_bench")
    if "vicuna" in n:
        return _load_bench(p, "vicuna")
    if "code_alpaca_seed" in n:
        return _load_seed_tasks(p, "code_alpaca_seed")
    if "code_alpaca" in n:
        return _load_alpaca_like(p, "code_alpaca")
    if "seed_tasks" in n:
        return _load_seed_tasks(p, "self_instruct")
    if "gsm8k" in n:
        return _load_gsm8k(p)
    if "alpaca" in n and n.endswith((".json", ".json.gz")):
        return _load_alpaca_like(p, "alpaca")
    return _load_generic(p)


def _dedupe(items: Iterable[Item]) -> list[Item]:
    """Drop exact repeats of a conversation's user turns within one source."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    out = []
    for it in items:
        k = (it.source, tuple(t.strip().lower() for t in it.turns))
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out


def load_corpus(spec: str | Path | Sequence[str | Path] | Corpus) -> Corpus:
    """Load a corpus from a file, a directory (every file in it), or a list of those."""
    if isinstance(spec, Corpus):
        return spec
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    items: list[Item] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and not f.name.lower().endswith((".md", ".enc", ".tgz")))
        elif p.exists():
            files = [p]
        else:
            raise DistillguardError(f"corpus path not found: {p}")
        for f in files:
            items.extend(load_file(f))
    if not items:
        raise DistillguardError(f"no prompts found in {spec}")
    return Corpus(_dedupe(items))


def bundled_corpus(which: str) -> Corpus:
    """The small MIT/Apache-2.0 corpus shipped in ``distillguard/data/corpus``.

    ``which`` is ``legit`` or ``distill``. See that folder's ATTRIBUTION.md for origin and
    licence of every file.
    """
    root = resources.files("distillguard") / "data" / "corpus"
    items: list[Item] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.startswith(which + "-") and entry.name.endswith(".items.jsonl.gz"):
            with entry.open("rb") as fh:
                data = gzip.decompress(fh.read())
            items.extend(Item.from_json(orjson.loads(ln)) for ln in data.splitlines() if ln)
    if not items:
        raise DistillguardError(f"bundled corpus {which!r} missing from {root}")
    return Corpus(items)
