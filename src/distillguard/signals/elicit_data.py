"""The elicitation labelled set: project-written family templates filled with open task text.

``data/elicitation/families.yaml`` holds the families (extraction, rubric / reward-model use,
benign reasoning talk) and their templates in several languages, all written for this
project. :func:`build_rows` fills them with task text from the bundled corpus
(``data/corpus``: MIT and Apache-2.0 subsets, see its ATTRIBUTION.md) and adds the corpus'
user turns as ordinary benign prompts. ``distillguard elicit build-set`` writes the result to
``data/elicitation/labelled.jsonl.gz``; the same inputs give the same bytes.

Each row: ``text`` (user prompt), ``system`` (system prompt or ""), ``label`` (extract |
rubric | benign), ``family``, ``group`` (``elicit`` | ``reasoning_talk`` | ``ordinary``),
``lang`` (language of the template), ``split`` (train | eval), ``task_id`` and
``provenance``. The split is drawn per task text, so no task text is in both splits; a
template without task slot counts as its own task.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from random import Random
from typing import Any

import xxhash
import yaml

LABELS = ("extract", "rubric", "benign")
GROUPS = ("elicit", "reasoning_talk", "ordinary")
SET_FILE = "labelled.jsonl.gz"
SEED = 20261201
#: Fills per template: from train-split tasks, from eval-split tasks.
FILLS = (10, 6)
#: One task in EVAL_EVERY goes to the eval split (by a hash of its text).
EVAL_EVERY = 4
MAX_RESPONSE_CHARS = 700
SYSTEM_SHARE = 0.15          # rows (not system-kind) given a benign system prompt

_LICENCE = {"gsm8k": "MIT, openai/grade-school-math", "hh_rlhf": "MIT, anthropics/hh-rlhf",
            "alpaca_eval": "Apache-2.0, tatsu-lab/alpaca_eval",
            "mt_bench": "Apache-2.0, lm-sys/FastChat", "vicuna": "Apache-2.0, lm-sys/FastChat",
            "oasst1": "Apache-2.0, OpenAssistant oasst1",
            "self_instruct": "Apache-2.0, tatsu-lab/stanford_alpaca"}
_CORPUS_FILES = ("distill-gsm8k", "distill-self_instruct", "legit-alpaca_eval", "legit-hh_rlhf",
                 "legit-mt_bench", "legit-oasst1", "legit-vicuna")
_SLOT = re.compile(r"\{(\w+)\}")
_PROSE = ("alpaca_eval", "oasst1", "hh_rlhf")


def data_dir() -> Path:
    return Path(str(resources.files("distillguard").joinpath("data", "elicitation")))


def scan_text(prompt: str | None, system: str | None, head: int = 3000, tail: int = 1500,
              sysn: int = 2000) -> str:
    """The text the signals read (``signals.sql.scan_text_sql``, ``OnlineScorer._scan``)."""
    p = prompt or ""
    if len(p) > head + tail:
        p = p[:head] + " " + p[-tail:]
    return p + " " + (system or "")[:sysn]


@dataclass(frozen=True)
class Task:
    text: str
    source: str
    item: str
    response: str | None
    steps: list[str] | None          # gsm8k solution lines

    @property
    def split(self) -> str:
        return split_of(self.text)

    @property
    def provenance(self) -> str:
        return f"{self.source} item {self.item} ({_LICENCE.get(self.source, '?')})"


def split_of(text: str) -> str:
    return "eval" if xxhash.xxh64_intdigest(text.strip().encode(), seed=SEED) % EVAL_EVERY == 0 \
        else "train"


def _clean_gsm8k(answer: str) -> list[str]:
    lines = []
    for ln in answer.splitlines():
        ln = re.sub(r"<<[^>]*>>", "", ln).strip()
        if ln.startswith("####"):
            ln = f"The answer is {ln[4:].strip()}."
        if ln:
            lines.append(ln)
    return lines


def _cut(s: str, n: int = MAX_RESPONSE_CHARS) -> str:
    s = s.strip()
    if len(s) <= n:
        return s
    cut = s[:n].rsplit(" ", 1)[0]
    return cut + " ..."


def load_corpus() -> tuple[list[Task], list[tuple[str, str, str]]]:
    """(first-turn tasks with their answer, every user turn as (text, source, item))."""
    base = resources.files("distillguard").joinpath("data", "corpus")
    tasks: list[Task] = []
    turns: list[tuple[str, str, str]] = []
    for name in _CORPUS_FILES:
        with gzip.open(base.joinpath(f"{name}.items.jsonl.gz").open("rb"), "rt",
                       encoding="utf-8") as fh:
            for line in fh:
                it = json.loads(line)
                src, item = it["source"], str(it["group"])
                user = [t for t in it["turns"] if t and t.strip()]
                if not user:
                    continue
                for t in user:
                    turns.append((t, src, item))
                steps = None
                if src == "gsm8k" and it.get("answer"):
                    steps = _clean_gsm8k(it["answer"])
                    resp = " ".join(steps)
                elif it.get("answer"):
                    resp = it["answer"]
                elif it.get("replies"):
                    resp = it["replies"][0]
                else:
                    resp = None
                tasks.append(Task(user[0].strip(), src, item,
                                  _cut(resp) if resp else None, steps))
    return tasks, turns


def load_families(path: str | Path | None = None) -> dict[str, Any]:
    p = Path(path) if path else data_dir() / "families.yaml"
    return yaml.safe_load(p.read_text("utf-8"))


def _rng(*parts: object) -> Random:
    return Random(xxhash.xxh64_intdigest("\x1f".join(map(str, parts)).encode(), seed=SEED))


def _first_sentence(s: str) -> str:
    m = re.match(r"(.{20,240}?[.!?。])(\s|$)", s, re.S)
    return (m.group(1) if m else s[:160]).strip()


class _Filler:
    """Fills one template's slots for one task, deterministically from ``rng``."""

    def __init__(self, tasks: list[Task], slots: dict[str, list[str]]) -> None:
        self.tasks = tasks
        self.slots = slots
        self.drafts = [t for t in tasks if t.response and t.source in _PROSE]
        self.by_source: dict[str, list[Task]] = {}
        for t in tasks:
            if t.response:
                self.by_source.setdefault(t.source, []).append(t)

    def other(self, t: Task, rng: Random, k: int) -> list[str]:
        pool = [x for x in self.by_source.get(t.source, []) if x.split == t.split
                and x.text != t.text]
        picks = rng.sample(pool, min(k, len(pool)))
        out = [x.response or "" for x in picks]
        if t.steps and out:                  # a plausible wrong candidate for maths
            out[0] = re.sub(r"\d+(?=\.$)", lambda m: str(int(m.group()) + rng.randint(1, 9)),
                            t.response or "")
        return out

    def fill(self, tpl: str, t: Task | None, rng: Random, split: str = "train") -> str:
        vals: dict[str, str] = {}
        for name in set(_SLOT.findall(tpl)):
            if name in ("task", "math"):
                vals[name] = t.text if t else ""
            elif name == "response":
                vals[name] = t.response or "" if t else ""
            elif name in ("draft", "draft_b"):       # short prose: the start of an answer
                pool = [x for x in self.drafts if x.split == split and (t is None or x is not t)]
                d = rng.choice(pool or self.drafts).response or ""
                vals[name] = _cut(d, 350)
            elif name == "response_b":
                o = self.other(t, rng, 1) if t else []
                vals[name] = o[0] if o else ""
            elif name == "responses":
                cands = [t.response or ""] + self.other(t, rng, rng.randint(2, 3)) if t else []
                rng.shuffle(cands)
                vals[name] = "\n\n".join(f"Response {i + 1}: {c}" for i, c in enumerate(cands))
            elif name == "steps":
                vals[name] = "\n".join(f"Step {i + 1}: {s}"
                                       for i, s in enumerate(t.steps or [])) if t else ""
            elif name == "partial":
                first = _first_sentence(t.response or t.text) if t else ""
                p = rng.choice(self.slots["partial"])
                vals[name] = p.replace("{first}", first).replace(
                    "{first_lc}", first[:1].lower() + first[1:]).replace(
                    "{goal}", "an answer to this")
            else:     # project-written values, drawn from the row's split
                pool = [v for v in self.slots[name] if split_of(v) == split]
                vals[name] = rng.choice(pool or self.slots[name])
        # str.format would read braces inside the filled values; substitute slot by slot.
        out = _SLOT.sub(lambda m: vals.get(m.group(1), m.group(0)), tpl)
        return out.replace("{{", "{").replace("}}", "}")


def _needs(tpl: str) -> set[str]:
    return set(_SLOT.findall(tpl))


def build_rows(families: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The whole labelled set, in a fixed order."""
    fam_doc = families or load_families()
    slots = fam_doc["slots"]
    tasks, turns = load_corpus()
    filler = _Filler(tasks, slots)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()

    def add(row: dict[str, Any]) -> None:
        key = (row["text"], row["system"])
        if key not in seen:
            seen.add(key)
            rows.append(row)

    for fam in fam_doc["families"]:
        name, label = fam["name"], fam["label"]
        group = "elicit" if label != "benign" else fam.get("group", "reasoning_talk")
        system_kind = fam.get("kind") == "system"
        for lang, tpls in fam["templates"].items():
            for ti, tpl in enumerate(tpls):
                tref = f"{name}/{lang}/{ti}"
                need = _needs(tpl)
                rng = _rng(tref)
                if not need & {"task", "math", "response", "response_b", "responses",
                               "steps", "partial"} and not system_kind:
                    # No corpus task: the template is the task, or its project-written slot
                    # values (topics, code, subjects) are, each value in one split.
                    if not need:
                        add(_row(tpl, "", label, name, group, lang, split_of(tpl), tref,
                                 "no task text", rng))
                        continue
                    counts = FILLS if "draft" in need else (4, 2)
                    for split, n in zip(("train", "eval"), counts, strict=True):
                        for k in range(n):
                            text = filler.fill(tpl, None, _rng(tref, split, k), split)
                            add(_row(text, "", label, name, group, lang, split, tref,
                                     "project-written slot values", rng, text))
                    continue
                pool = [t for t in tasks if _usable(t, need)]
                if "math" in need or "steps" in need:
                    pool = [t for t in pool if t.source == "gsm8k"]
                for split, n in zip(("train", "eval"), FILLS, strict=True):
                    cand = [t for t in pool if t.split == split]
                    for t in rng.sample(cand, min(n, len(cand))):
                        if system_kind:
                            text, system = t.text, tpl
                        else:
                            text, system = filler.fill(tpl, t, rng, split), ""
                        add(_row(text, system, label, name, group, lang, split, tref,
                                 t.provenance, rng, t.text, force_system=system_kind))
    # Pasted documents: answers from the corpus (prose, code, lists) as prompts, alone and
    # concatenated into long texts, so long ordinary prompts are seen as such.
    docs = [t for t in tasks if t.response and t.source in _PROSE]
    for split in ("train", "eval"):
        pool = [t for t in docs if t.split == split]
        rng = _rng("pasted", split)
        for _ in range(len(pool) // 3):
            picks = rng.sample(pool, rng.randint(1, 6))
            text = "\n\n".join(t.response or "" for t in picks)
            add({"text": text, "system": "", "label": "benign", "family": "ordinary_pasted",
                 "group": "ordinary", "lang": "en", "split": split,
                 "task_id": _task_id(picks[0].text),
                 "provenance": "answers of " + ", ".join(t.provenance for t in picks)})
    for text, src, item in turns:
        add({"text": text, "system": "", "label": "benign", "family": f"ordinary_{src}",
             "group": "ordinary", "lang": "en", "split": split_of(text),
             "task_id": _task_id(text),
             "provenance": f"user turn of {src} item {item} ({_LICENCE.get(src, '?')})"})
    return rows


def _usable(t: Task, need: set[str]) -> bool:
    if need & {"response", "response_b", "responses", "partial"} and not t.response:
        return False
    if len(t.text) > 1500:
        return False
    return True


def _task_id(text: str) -> str:
    return f"{xxhash.xxh64_intdigest(text.strip().encode(), seed=SEED):016x}"


def _row(text: str, system: str, label: str, family: str, group: str, lang: str, split: str,
         tref: str, task_prov: str, rng: Random, task_text: str | None = None,
         force_system: bool = False) -> dict[str, Any]:
    prov = f"template {tref} (distillguard, Apache-2.0); task: {task_prov}"
    if not force_system and rng.random() < SYSTEM_SHARE:
        sys_prompts = load_families_cached()["slots"]["system_benign"]
        system = rng.choice(sys_prompts)
    return {"text": text, "system": system, "label": label, "family": family, "group": group,
            "lang": lang, "split": split, "task_id": _task_id(task_text or tref),
            "provenance": prov}


_FAM_CACHE: dict[str, Any] = {}


def load_families_cached() -> dict[str, Any]:
    if not _FAM_CACHE:
        _FAM_CACHE.update(load_families())
    return _FAM_CACHE


def write_set(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows as gzip JSONL with a fixed gzip header (same bytes on every run)."""
    data = b"".join(json.dumps(r, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"
                    for r in rows)
    Path(path).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    return data.count(b"\n")


def load_set(path: str | Path | None = None) -> list[dict[str, Any]]:
    p = Path(path) if path else data_dir() / SET_FILE
    opener = gzip.open if str(p).endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
