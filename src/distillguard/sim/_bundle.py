"""Rebuild the bundled default corpus from the shared real-data folder.

Only MIT / Apache-2.0 sources are bundled (never CC BY-NC Alpaca/Code Alpaca, never
unlicensed ShareGPT). Subsets are drawn with a fixed seed and long texts are truncated so
the package stays small; ``data/corpus/ATTRIBUTION.md`` records origin and licence.

Run: ``python -m distillguard.sim._bundle /path/to/shared/data``
"""

from __future__ import annotations

import gzip
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson

from distillguard.sim._corpus import Item, load_file

# (bundle name, relative source path, max items, max chars of a reply/answer, max turn chars)
PLAN = (
    ("legit-oasst1", "legit/oasst1_en_validation_messages.jsonl", 350, 450, 2000),
    ("legit-hh_rlhf", "legit/hh_rlhf_harmless_base_test.jsonl.gz", 500, 250, 800),
    ("legit-alpaca_eval", "legit/alpaca_eval_805_with_gpt4_outputs.json", 805, 320, 2000),
    ("legit-mt_bench", "legit/mt_bench_questions.jsonl", 80, 0, 4000),
    ("legit-vicuna", "legit/vicuna_bench_questions.jsonl", 80, 0, 4000),
    ("distill-self_instruct", "distill/self_instruct_alpaca_seed_tasks_175.jsonl", 175, 600, 2500),
    ("distill-alpaca_generation_prompt", "distill/alpaca_generation_prompt.txt", 1, 0, 4000),
    ("distill-gsm8k", "distill/gsm8k_train.jsonl", 650, 420, 1500),
)


def _cut(s: str | None, n: int) -> str | None:
    if s is None or n <= 0:
        return None if n <= 0 else s
    return s if len(s) <= n else s[:n].rsplit(" ", 1)[0] + " ..."


def build(shared: Path, out_dir: Path, seed: int = 20260302) -> dict[str, int]:
    """Write ``<name>.items.jsonl.gz`` files into ``out_dir``; return item counts."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rel, k, max_reply, max_turn in PLAN:
        items = load_file(shared / rel)
        if len(items) > k:
            idx = np.sort(rng.choice(len(items), size=k, replace=False))
            items = [items[i] for i in idx]
        slim: list[Item] = []
        for it in items:
            slim.append(replace(
                it,
                turns=tuple(t if len(t) <= max_turn else t[:max_turn] for t in it.turns),
                replies=tuple(_cut(r, max_reply) or "" for r in it.replies) if max_reply else (),
                answer=_cut(it.answer, max_reply) if max_reply else None,
            ))
        data = b"\n".join(orjson.dumps(it.to_json()) for it in slim) + b"\n"
        (out_dir / f"{name}.items.jsonl.gz").write_bytes(gzip.compress(data, 9, mtime=0))
        counts[name] = len(slim)
    return counts


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    dest = Path(__file__).resolve().parents[1] / "data" / "corpus"
    print(build(src, dest))
