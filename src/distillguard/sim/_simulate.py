"""``simulate()``: run a scenario and write canonical request logs plus ground-truth labels."""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from distillguard.errors import ConfigError
from distillguard.sim._corpus import Corpus, bundled_corpus, load_corpus
from distillguard.sim._engine import LINEUP_AWARE, Accounts, Block, Ctx, iso_seconds
from distillguard.sim._populations import KINDS, _concat
from distillguard.sim._scenario import SCENARIOS, Scenario
from distillguard.sim._text import TemplateBank
from distillguard.sim._timing import DAY, TimingTrace, load_timing

__all__ = ["SimResult", "simulate"]

CorpusSpec = str | Path | Sequence[str | Path] | Corpus | None


@dataclass(frozen=True)
class SimResult:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    logs : list of Path
        Request logs, one gzip JSONL file per simulated UTC day, time-ordered.
    labels : Path
        ``labels.csv`` (account_id, label, campaign_id, kind) for every account in the logs.
    n_requests, n_accounts : int
    manifest : Path
        ``manifest.json``: scenario, seed, split and corpus sources used (reproducibility).
    """

    logs: list[Path]
    labels: Path
    n_requests: int
    n_accounts: int
    manifest: Path | None = None


def _resolve_scenario(scenario: str | Scenario, knobs: dict[str, Any]) -> Scenario:
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
        scenario = SCENARIOS[scenario]
    scen = scenario.with_knobs(**knobs) if knobs else scenario
    scen.validate()
    return scen


def _corpus(spec: CorpusSpec, which: str, split: str, tune_fraction: float,
            sources: Sequence[str] | None, exclude: Sequence[str] | None) -> Corpus:
    c = bundled_corpus(which) if spec is None else load_corpus(spec)
    if sources is not None or exclude:
        c = c.only_sources(sources if sources is not None else None, exclude)
    c = c.split(split, tune_fraction)
    if not len(c):
        raise ConfigError(f"the {which} corpus is empty after split={split!r} and source "
                          f"filters (sources={sources}, exclude_sources={exclude})")
    return c


def _input_tokens(messages: list[dict], system: str | None, tools: list | None) -> int:
    """Rough prompt token count (chars/4 plus per-message overhead), as a gateway would log."""
    chars = len(system) if system else 0
    for m in messages:
        c = m.get("content")
        if c:
            chars += len(c)
        if "tool_calls" in m:
            chars += 60
    if tools:
        chars += 160 * len(tools)
    return chars // 4 + 4 * len(messages) + 3


def _seed_for(seed: int, i: int, kind: str) -> np.random.Generator:
    # population streams are independent: editing one population never reshuffles another
    return np.random.default_rng([seed, i, zlib.crc32(kind.encode())])


def simulate(
    out_dir: str | Path,
    scenario: str | Scenario = "default",
    seed: int = 7,
    legit_corpus: CorpusSpec = None,
    distill_corpus: CorpusSpec = None,
    timing: str | Path | list[str | Path] | TimingTrace | None = None,
    split: str = "all",
    *,
    sources: Sequence[str] | None = None,
    exclude_sources: Sequence[str] | None = None,
    **knob_overrides: Any,
) -> SimResult:
    """Simulate a week of API traffic with labelled distillation campaigns.

    Parameters
    ----------
    out_dir : path
        Output folder; receives ``logs/requests-YYYY-MM-DD.jsonl.gz``, ``labels.csv`` and
        ``manifest.json``. Earlier ``requests-*.jsonl.gz`` there are removed.
    scenario : str or Scenario
        A name from :data:`SCENARIOS` (``tiny``, ``demo``, ``default``) or a Scenario.
    seed : int
        Fixes everything: same seed and inputs give byte-identical files.
    legit_corpus, distill_corpus : path, list of paths, Corpus, or None
        Prompt sources for benign and campaign content (file, directory or list; formats in
        ``_corpus.load_file``). ``None`` uses the small bundled MIT/Apache corpus.
    timing : path(s) to Azure LLM trace CSVs, a TimingTrace, or None
        Real inter-arrival times and completion lengths for machine traffic.
    split : {"all", "tune", "report"}
        Use only the tune or report half of every corpus (by conversation) and of the
        template phrasings, so detection can be tuned and reported on disjoint prompts.
    sources, exclude_sources : list of str, optional
        Keep only / drop whole corpus sources (``oasst1``, ``hh_rlhf``, ``gsm8k``, ...),
        e.g. to hold a source out entirely.
    **knob_overrides
        ``camouflage``, ``paraphrase``, ``accounts``, ``rate``, ``ip_pool``, ``pivot``,
        ``scale``, any Scenario field, or ``<kind>__<field>``; see
        :meth:`Scenario.with_knobs`.
    """
    scen = _resolve_scenario(scenario, knob_overrides)
    if split not in ("all", "tune", "report"):
        raise ConfigError(f"split must be all, tune or report, not {split!r}")
    legit = _corpus(legit_corpus, "legit", split, scen.tune_fraction, sources, exclude_sources)
    distill = _corpus(distill_corpus, "distill", split, scen.tune_fraction, sources,
                      exclude_sources)
    trace = timing if isinstance(timing, TimingTrace) or timing is None else load_timing(timing)
    ctx = Ctx(scen, legit, distill, TemplateBank(split), trace, Accounts(), seed)
    allb, order = _generate(ctx, seed)
    return _write(Path(out_dir), scen, seed, split, ctx, allb, order)


def _generate(ctx: Ctx, seed: int) -> tuple[Block, np.ndarray]:
    """Run every population of ``ctx.scenario``; returns all requests and their time order."""
    scen = ctx.scenario
    blocks: list[Block] = []
    for i, pop in enumerate(scen.populations):
        if pop.n_accounts > 0:
            b = KINDS[pop.kind](ctx, pop, _seed_for(seed, i, pop.kind))
            if scen.release_days and pop.kind not in LINEUP_AWARE:
                # own stream: lifting never reshuffles the population's other draws
                b = ctx.lift_models(b, np.random.default_rng(
                    [seed, i, zlib.crc32(pop.kind.encode()), 0x4D4F44]))
            blocks.append(b)
    allb = _concat(blocks)
    keep = np.flatnonzero((allb.ts >= ctx.t0) & (allb.ts < ctx.t_end))
    order = keep[np.argsort(allb.ts[keep], kind="stable")]
    return allb, order


#: Scenario fields added after the presets were frozen; left out of manifest.json while at
#: their defaults so the presets' files stay byte-identical.
_NEW_SCENARIO_FIELDS = {"release_days": (), "shared_pools": ()}


def _scenario_json(scen: Scenario) -> dict[str, Any]:
    d = asdict(scen)
    for k, default in _NEW_SCENARIO_FIELDS.items():
        if tuple(d.get(k, ())) == default:
            d.pop(k, None)
    return d


def _write(out: Path, scen: Scenario, seed: int, split: str, ctx: Ctx, b: Block,
           order: np.ndarray, extra: dict[str, Any] | None = None) -> SimResult:
    logdir = out / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    for old in logdir.glob("requests-*.jsonl.gz"):
        old.unlink()
    acc = ctx.accounts
    n = len(order)
    rng = np.random.default_rng([seed, 0xC0FFEE])
    raw = rng.bytes(12 * n).hex()
    ts = b.ts[order]
    ts_str = [s + "Z" for s in np.datetime_as_string(
        (ts * 1000).astype("datetime64[ms]"), unit="ms").tolist()]
    created = iso_seconds(np.array(acc.created)) if len(acc) else []
    models = scen.models
    day = np.floor((ts - ctx.t0) / DAY).astype(np.int64)
    day_names = list(np.datetime_as_string(
        (ctx.t0 + np.arange(int(np.ceil(scen.days))) * DAY).astype("datetime64[s]"),
        unit="D").tolist())
    bounds = np.searchsorted(day, np.arange(len(day_names) + 1))
    logs: list[Path] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    futures = []

    def flush(path: Path, data: bytes) -> None:
        # mtime=0 and no file name in the gzip header: same bytes on every run
        path.write_bytes(gzip.compress(data, scen.gzip_level, mtime=0))

    used = np.zeros(len(acc), bool)
    for d, name in enumerate(day_names):
        lines: list[bytes] = []
        for j in range(bounds[d], bounds[d + 1]):
            i = int(order[j])
            a = int(b.acct[i])
            used[a] = True
            msgs = b.messages[i]
            system = b.system[i]
            tools = b.tools[i]
            st = int(b.status[i])
            rec: dict[str, Any] = {
                "request_id": "req_" + raw[24 * j: 24 * j + 24],
                "ts": ts_str[j],
                "account_id": acc.ids[a],
                "model": models[int(b.model[i])],
                "messages": msgs,
                "org_id": acc.org[a],
                "api_key_id": b.key[i],
                "ip": b.ip[i],
                "user_agent": b.ua[i],
                "payment_fingerprint": acc.payment[a],
                "signup_channel": acc.signup[a],
                "account_created": created[a],
                "country": acc.country[a],
            }
            if system:
                rec["system"] = system
            if tools:
                rec["tools"] = tools
            rec["reasoning_effort"] = b.effort[i]
            rec["input_tokens"] = _input_tokens(msgs, system, tools)
            rec["output_tokens"] = int(b.out_tokens[i]) if st == 200 else 0
            rec["status"] = st
            lines.append(orjson.dumps(rec))
        if lines:
            path = logdir / f"requests-{name}.jsonl.gz"
            logs.append(path)
            data = b"\n".join(lines) + b"\n"
            del lines
            futures.append(pool.submit(flush, path, data))
    for f in futures:
        f.result()
    pool.shutdown()

    labels = out / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["account_id", "label", "campaign_id", "kind"])
        for a in np.flatnonzero(used).tolist():
            w.writerow([acc.ids[a], acc.label[a], acc.campaign[a], acc.kind[a]])
    manifest = out / "manifest.json"
    manifest.write_bytes(orjson.dumps({
        "scenario": _scenario_json(scen), "seed": seed, "split": split,
        "legit_sources": ctx.legit.sources(), "distill_sources": ctx.distill.sources(),
        "timing_trace": ctx.trace is not None, "n_requests": n,
        "n_accounts": int(used.sum()), "files": [p.name for p in logs], **(extra or {}),
    }, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return SimResult(logs, labels, n, int(used.sum()), manifest)
