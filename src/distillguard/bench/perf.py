"""Scale benchmark: generate campaign-sized canonical logs fast, run detection, time each stage.

>>> from distillguard.bench.perf import perf
>>> perf([1e6, 4e6], "perf-out", seed=7)                              # doctest: +SKIP

Traffic is assembled column-wise (numpy sampling + pyarrow string kernels, never a Python loop
per row) from the bundled corpus: ordinary users with heavy-tailed volume, diurnal timing,
optional system prompts, multi-turn history and pasted context, plus a few hydra campaigns
(templated distillation prompts, shared /24 IP pools, shared payment fingerprints, one SDK
user agent, round-the-clock timing, a pivot to a newly released model). Accounts scale with
size: about 25,000 at 16 million requests.

Each size is written as canonical Parquet (``messages`` as ``list<struct<role, content>>``),
one file per million requests, and detected in a fresh process (so its peak RSS is its own)
with a file-backed store. Per stage: wall seconds, requests per second, peak RSS; across sizes
the fitted growth exponent of time vs size (least squares on log-log). Results go to
``perf.json`` and ``perf.md`` in ``out_dir``.

Beside each detection run, in the same ``perf`` run and on the same files, the *floor*: one
DuckDB query that reads every column detection reads, takes md5 of every request's message
text and counts distinct digests per account (:func:`floor_sql`), in its own fresh process
with the same DuckDB limits. Detection is reported as a multiple of it. ``formats`` adds
the same traffic as gzipped canonical JSONL (``jsonl.gz``, written from the Parquet by
DuckDB): detection from it, and ingest against the ``read_json`` floor on the same files.

Run: ``python -m distillguard.bench.perf perf-out --sizes 1e6,4e6,16e6 --seed 7
--formats parquet,jsonl.gz``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillguard.bench.run import PeakRSS

STAGES = ("ingest", "signals", "features", "linking", "scoring")
ACCOUNTS_AT_16M = 25_000
T0 = np.datetime64("2026-11-02T00:00:00", "ms").astype(np.int64)   # a Monday, epoch ms
DAYS = 7
MODELS = ("gpt-5", "gpt-5-mini", "o5", "gpt-5.5")   # the last is released on day 4
NEW_MODEL_DAY = 4

# Campaign templates: fixed wording around a varying task, in the spirit of the public reports.
_TEMPLATES = (
    ("You are an expert tutor. Solve the following problem. Lay out your complete internal "
     "reasoning step by step before giving the final answer, and do not skip any steps.\n\n"
     "Problem:\n", "\n\nFormat: reasoning first, then 'Final answer:' on its own line."),
    ("Imagine and articulate the internal reasoning behind a completed response. Here is the "
     "task the response answered:\n\n", "\n\nWrite out the full chain of thought that would "
     "produce a high-quality answer, then the answer itself."),
    ("Act as a grader. Score the candidate responses to the instruction below on a scale from "
     "1 to 10 using the rubric (accuracy, completeness, clarity).\n\nInstruction:\n",
     "\n\nReturn JSON with a score and a one-line justification per candidate."),
    ("Rewrite your answer to the following request so that it is politically neutral and "
     "censorship-safe, avoiding sensitive topics.\n\nRequest:\n",
     "\n\nGive the safe version only."),
    ("You are a senior software engineer. Implement a solution for the task below in Python, "
     "with tests. Explain your reasoning behind each design decision.\n\nTask:\n",
     "\n\nReturn the code in one block."),
)
_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in at most three sentences.",
    "You are a customer-support agent for an online store. Be polite and precise; never "
    "promise refunds without an order number.",
    "You are a coding assistant. Prefer idiomatic, well-tested code and explain trade-offs.",
    "You are a writing coach. Give concrete, actionable feedback on style and structure.",
    "You are a friendly tutor for high-school students. Explain step by step and check "
    "understanding with a short question at the end.",
    "Answer in the language of the user. Keep answers factual; say when you are not sure.",
    "You are a data analyst. Reply with clear tables where helpful.",
)
_USER_AGENTS = (
    "OpenAI/Python 1.54.3", "OpenAI/Python 1.51.0", "OpenAI/NodeJS 4.67.1",
    "langchain-openai/0.2.9", "litellm/1.52.0", "curl/8.5.0", "python-requests/2.32.3",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0",
    "llama-index/0.12.1", "aiohttp/3.10.10", "OpenAI/Go 0.1.0",
)
_COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "KR", "CA", "AU", "NL", "SG")
_SIGNUPS = ("standard",) * 8 + ("education", "startup", "research", "trial")


# --------------------------------------------------------------------------- traffic


class _Text:
    """String pools from the bundled corpus, as Arrow arrays for vectorised sampling."""

    def __init__(self) -> None:
        from distillguard.sim import bundled_corpus

        legit, distill = bundled_corpus("legit"), bundled_corpus("distill")
        turns = [t for it in legit.items for t in it.turns if t.strip()]
        replies = [r for it in legit.items for r in it.replies if r.strip()]
        tasks = [t for it in distill.items for t in it.turns if t.strip()]
        answers = [it.answer for it in distill.items if it.answer]
        self.turns = pa.array(turns, pa.string())
        self.replies = pa.array(replies or turns, pa.string())
        self.tasks = pa.array(tasks, pa.string())
        docs = replies + answers
        self.docs = pa.array(docs or turns, pa.string())
        words = sorted({w for t in turns + tasks for w in t.split() if 2 < len(w) < 14})
        self.words = pa.array(words, pa.string())


def _sample(rng: np.random.Generator, arr: pa.Array, n: int) -> pa.Array:
    return arr.take(pa.array(rng.integers(0, len(arr), n)))


def _word_runs(rng: np.random.Generator, words: pa.Array, lengths: np.ndarray) -> pa.Array:
    """One string of ``lengths[i]`` random words per row (vectorised: list + binary_join)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    vals = words.take(pa.array(rng.integers(0, len(words), int(offsets[-1]))))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), vals), " ")


def _cat(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _accounts(n_acc: int, rng: np.random.Generator) -> dict[str, Any]:
    """Per-account attributes; campaigns share IP pools, payment and user agent."""
    n_camp = max(4, round(n_acc * 0.04))
    kinds = np.zeros(n_acc, dtype=np.int64)            # 0 benign, 1..5 campaign number
    camp_idx = rng.choice(n_acc, n_camp, replace=False)
    n_campaigns = 5
    kinds[camp_idx] = 1 + np.arange(n_camp) % n_campaigns
    # Volume: heavy-tailed for people; campaigns pull ~20% of traffic in total.
    w = rng.lognormal(0.0, 1.4, n_acc)
    w[kinds == 0] *= 0.80 / w[kinds == 0].sum()
    w[kinds > 0] *= 0.20 / w[kinds > 0].sum()
    org = np.where(rng.random(n_acc) < 0.3, rng.integers(0, max(1, n_acc // 3), n_acc), -1)
    ip24 = rng.integers(0, 2**24, n_acc)                 # a home /24 per account
    # Campaign accounts draw from their campaign's pool of a few /24s (proxy pools).
    pools = rng.integers(0, 2**24, (n_campaigns, 12))
    ck = kinds[kinds > 0] - 1
    ip24[kinds > 0] = pools[ck, rng.integers(0, 12, len(ck))]
    pay = np.arange(n_acc)
    pay[kinds > 0] = n_acc + ck * 7 + rng.integers(0, 7, len(ck))   # 7 cards per campaign
    ua = rng.integers(0, len(_USER_AGENTS), n_acc)
    ua[kinds > 0] = ck % 3
    created_days = np.where(kinds > 0, rng.uniform(1, 10, n_acc), rng.uniform(30, 900, n_acc))
    signup = rng.integers(0, len(_SIGNUPS), n_acc)
    signup[kinds > 0] = 8 + ck % 4
    ids = pc.binary_join_element_wise(
        "acct_", pc.utf8_lpad(pa.array(np.arange(n_acc)).cast(pa.string()), 6, "0"), "")
    ip_prefix = pc.binary_join_element_wise(
        *(pa.array((ip24 >> s) & 255).cast(pa.string()) for s in (16, 8, 0)), ".")
    created = (T0 - (created_days * 86_400_000).astype(np.int64)).astype("datetime64[ms]")
    return {
        "n": n_acc, "kinds": kinds, "cw": np.cumsum(w / w.sum()), "ids": ids,
        "org": pc.if_else(pa.array(org >= 0), pc.binary_join_element_wise(
            "org_", pa.array(org).cast(pa.string()), ""), pa.scalar(None, pa.string())),
        "ip_prefix": ip_prefix,
        "payment": pc.binary_join_element_wise("pm_", pc.utf8_lpad(
            pa.array(pay).cast(pa.string()), 7, "0"), ""),
        "ua": pa.array(_USER_AGENTS).take(pa.array(ua)),
        "created": pc.binary_join_element_wise(pc.strftime(
            pa.array(created, pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%S"), "Z", ""),
        "signup": pa.array(_SIGNUPS).take(pa.array(signup)),
        "country": pa.array(_COUNTRIES).take(pa.array(rng.integers(0, len(_COUNTRIES), n_acc))),
        "keys": rng.integers(1, 4, n_acc),
    }


def _timestamps(rng: np.random.Generator, campaign: np.ndarray,
                day_no: int | None = None) -> np.ndarray:
    """Epoch ms: people follow a diurnal curve, campaigns run around the clock.

    ``day_no``: every request on that day (a daily log), else spread over ``DAYS`` days.
    """
    n = len(campaign)
    day = rng.integers(0, DAYS, n) if day_no is None else np.full(n, day_no)
    hour_p = np.exp(-0.5 * ((np.arange(24) - 14) / 4.0) ** 2) + 0.05
    hour = rng.choice(24, n, p=hour_p / hour_p.sum())
    hour = np.where(campaign, rng.integers(0, 24, n), hour)
    ms = rng.integers(0, 3_600_000, n)
    return T0 + day * 86_400_000 + hour * 3_600_000 + ms


def _chunk(n: int, start: int, acc: dict[str, Any], text: _Text,
           rng: np.random.Generator, day_no: int | None = None) -> pa.Table:
    a = np.minimum(np.searchsorted(acc["cw"], rng.random(n)), acc["n"] - 1)
    kind = acc["kinds"][a]
    camp = kind > 0
    ts = _timestamps(rng, camp, day_no)
    day = (ts - T0) // 86_400_000

    # Prompts: people ask corpus questions, half with pasted context or extra words; campaigns
    # wrap distillation tasks in their campaign's template.
    # Each kind of prompt is built only for its rows, then put in row order with one take.
    r = np.where(camp, 9.0, rng.random(n))
    groups = [np.flatnonzero(r < 0.35), np.flatnonzero((r >= 0.35) & (r < 0.75)),
              np.flatnonzero((r >= 0.75) & (r < 2)), np.flatnonzero(camp)]
    g0, g1, g2, g3 = (len(g) for g in groups)
    ti = np.clip(kind[groups[3]] - 1, 0, len(_TEMPLATES) - 1)
    parts = [
        _cat(_sample(rng, text.docs, g0), "\n\n", _sample(rng, text.docs, g0), "\n\n",
             _sample(rng, text.turns, g0)),
        _cat(_sample(rng, text.turns, g1), " ",
             _word_runs(rng, text.words, rng.integers(3, 25, g1))),
        _sample(rng, text.turns, g2),
        _cat(pa.array([t[0] for t in _TEMPLATES]).take(pa.array(ti)),
             _sample(rng, text.tasks, g3), " ",
             _word_runs(rng, text.words, rng.integers(0, 6, g3)),
             pa.array([t[1] for t in _TEMPLATES]).take(pa.array(ti))),
    ]
    where = np.empty(n, dtype=np.int64)
    where[np.concatenate(groups)] = np.arange(n)
    prompt = pa.concat_arrays([x.cast(pa.large_string()) for x in parts]).take(
        pa.array(where))

    # messages: [system?] [user, assistant]? user  as list<struct<role, content>>
    has_sys = (rng.random(n) < 0.4) & ~camp
    has_hist = (rng.random(n) < 0.25) & ~camp
    cnt = 1 + has_sys + 2 * has_hist
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(cnt, out=offsets[1:])
    tot = int(offsets[-1])
    systems = pa.array(_SYSTEMS)
    hist_u = _sample(rng, text.turns, n)
    hist_a = _sample(rng, text.replies, n)
    pool = pa.concat_arrays([prompt, hist_u.cast(pa.large_string()),
                             hist_a.cast(pa.large_string()), systems.cast(pa.large_string())])
    src = np.empty(tot, dtype=np.int64)
    role = np.empty(tot, dtype=np.int8)      # 0 system, 1 user, 2 assistant
    rows = np.arange(n)
    pos = offsets[:-1].copy()
    s_rows = rows[has_sys]
    src[pos[has_sys]] = 3 * n + rng.integers(0, len(systems), len(s_rows))
    role[pos[has_sys]] = 0
    pos += has_sys
    src[pos[has_hist]] = n + rows[has_hist]
    role[pos[has_hist]] = 1
    src[pos[has_hist] + 1] = 2 * n + rows[has_hist]
    role[pos[has_hist] + 1] = 2
    pos += 2 * has_hist
    src[pos] = rows
    role[pos] = 1
    content = pool.take(pa.array(src)).cast(pa.string())
    roles = pa.array(np.array(["system", "user", "assistant"]), pa.string()).take(
        pa.array(role))
    messages = pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)),
        pa.StructArray.from_arrays([roles, content], names=["role", "content"]))

    ai = pa.array(a)
    model = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    new_ok = day >= NEW_MODEL_DAY
    model = np.where(new_ok & (rng.random(n) < np.where(camp, 0.9, 0.1)), 3, model)
    ip = pc.binary_join_element_wise(acc["ip_prefix"].take(ai), pa.array(
        rng.integers(1, 255, n)).cast(pa.string()), ".")
    key_no = rng.integers(0, 1 << 30, n) % acc["keys"][a]
    in_tok = (pc.binary_length(prompt).to_numpy(zero_copy_only=False) // 4 + 20).astype(np.int64)
    out_tok = np.where(camp, rng.integers(600, 4000, n), rng.integers(20, 900, n))
    status = np.where(rng.random(n) < 0.01, "429", "200")
    out_tok = np.where(status == "200", out_tok, 0)
    effort = np.where(camp, "high", np.array(["low", "medium", "high"])[rng.integers(0, 3, n)])
    return pa.table({
        "request_id": pc.binary_join_element_wise("req_", pa.array(
            np.arange(start, start + n)).cast(pa.string()), ""),
        "ts": pc.binary_join_element_wise(pc.strftime(
            pa.array(ts.astype("datetime64[ms]"), pa.timestamp("ms")),
            format="%Y-%m-%dT%H:%M:%S"), "Z", ""),
        "account_id": acc["ids"].take(ai),
        "model": pa.array(MODELS).take(pa.array(model)),
        "messages": messages,
        "org_id": acc["org"].take(ai),
        "api_key_id": pc.binary_join_element_wise(acc["ids"].take(ai), pa.array(
            key_no).cast(pa.string()), ":k"),
        "ip": ip,
        "user_agent": acc["ua"].take(ai),
        "payment_fingerprint": acc["payment"].take(ai),
        "signup_channel": acc["signup"].take(ai),
        "account_created": acc["created"].take(ai),
        "country": acc["country"].take(ai),
        "reasoning_effort": pa.array(effort),
        "input_tokens": pa.array(in_tok),
        "output_tokens": pa.array(out_tok.astype(np.int64)),
        "status": pa.array(status),
    })


def generate(n: int, out_dir: str | Path, seed: int = 7,
             rows_per_file: int = 1_000_000) -> tuple[list[Path], Path]:
    """Write ``n`` canonical requests as Parquet files; returns (files, labels.csv)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_acc = max(300, round(ACCOUNTS_AT_16M * n / 16_000_000))
    acc = _accounts(n_acc, rng)
    text = _Text()
    def one(k: int, start: int) -> Path:
        t = _chunk(min(rows_per_file, n - start), start, acc, text,
                   np.random.default_rng([seed, k]))
        path = out / f"requests-{k:04d}.parquet"
        pq.write_table(t, path, compression="zstd", compression_level=1,
                       row_group_size=128 * 1024)
        return path

    # Arrow kernels release the GIL: two chunks at a time use both cores.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        files = list(pool.map(one, *zip(*enumerate(range(0, n, rows_per_file)), strict=True)))
    kinds = acc["kinds"]
    labels = out / "labels.csv"
    pa_labels = pa.table({
        "account_id": acc["ids"],
        "label": pa.array(np.where(kinds > 0, "distill", "benign")),
        "campaign_id": pa.array(np.where(kinds > 0, np.char.add("c", kinds.astype(str)), "")),
        "kind": pa.array(np.where(kinds > 0, "hydra", "ordinary")),
    })
    import pyarrow.csv as pcsv

    pcsv.write_csv(pa_labels, labels)
    return files, labels


# --------------------------------------------------------------------------- measuring


class _StageRSS(PeakRSS):
    """Progress hook + sampler thread: peak RSS between consecutive stage ends (``peaks``),
    and over the whole block (``overall``)."""

    def __init__(self) -> None:
        from distillguard.api import Progress

        self.peaks: dict[str, int] = {}
        self.cpu: dict[str, float] = {}   # CPU seconds per stage, this process and its workers
        self._cpu0 = _cpu_seconds()
        self._cur = self._rss()
        outer = self

        class P(Progress):
            def done(self, name: str, seconds: float, note: str = "") -> None:
                cur = outer._rss()
                outer.peaks[name] = max(outer._cur, cur)
                outer._cur = cur
                cpu = _cpu_seconds()
                outer.cpu[name] = cpu - outer._cpu0
                outer._cpu0 = cpu

        self.progress = P()

    def __enter__(self) -> _StageRSS:
        super().__enter__()
        return self

    def _sample(self) -> None:
        r = self._rss()
        self.peak = max(self.peak, r)
        self._cur = max(self._cur, r)

    @property
    def overall(self) -> int:
        return self.peak


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the MinHash workers).

    Unlike wall time it does not grow when other jobs share the cores, so the two together
    say how much of a slow stage was the stage and how much was the machine.
    """
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def _detect_one(files: list[str], db: str, profile: str | None, q: Any) -> None:
    """Child process: one detection run; puts its figures on ``q``."""
    try:
        from distillguard.api import detect

        with _StageRSS() as m:
            t0 = time.perf_counter()
            if profile:
                import cProfile

                prof = cProfile.Profile()
                res = prof.runcall(detect, files, None, db=db, progress=m.progress)
                prof.dump_stats(profile)
            else:
                res = detect(files, None, db=db, progress=m.progress)
            total = time.perf_counter() - t0
        q.put({"timings": res.timings, "cpu_s": m.cpu, "load_avg": os.getloadavg(),
               "peak_rss": m.peaks, "overall_peak_rss": m.overall,
               "total_s": total, "accounts": res.accounts.height, "flagged": res.n_flagged,
               "campaigns": len(res.campaigns), "rows_ok": res.ingest.rows_ok,
               "rows_bad": res.ingest.rows_bad})
    except BaseException as exc:  # pragma: no cover - reported by the parent
        q.put({"error": f"{type(exc).__name__}: {exc}"})


def run_detect(files: Sequence[Path], db: Path, profile: Path | None = None) -> dict[str, Any]:
    """Detect in a fresh process (spawned, so its memory is its own)."""
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    return _in_child(_detect_one, [str(f) for f in files], str(db),
                     str(profile) if profile else None)


FORMATS = ("parquet", "jsonl.gz")


def write_jsonl(parquet_files: Sequence[Path], out_dir: Path) -> list[Path]:
    """The same requests as gzipped canonical JSONL, one file per Parquet file, in row
    order (DuckDB's JSON writer: columnar, and ``messages`` stays a list of objects)."""
    import duckdb

    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    files = []
    try:
        for f in parquet_files:
            dst = out_dir / (f.name.removesuffix(".parquet") + ".jsonl.gz")
            con.execute(f"COPY (SELECT * FROM read_parquet({_lit(str(f))})) TO {_lit(str(dst))} "
                        "(FORMAT json, COMPRESSION gzip)")
            files.append(dst)
    finally:
        con.close()
    return files


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def reader_sql(files: Sequence[Path], fmt: str) -> str:
    """DuckDB table function reading ``files`` as stored in format ``fmt``."""
    lst = "[" + ", ".join(_lit(str(f)) for f in files) + "]"
    if fmt == "parquet":
        return f"read_parquet({lst})"
    return f"read_json({lst}, format = 'newline_delimited')"


def floor_sql(con: Any, files: Sequence[Path], fmt: str) -> str:
    """The floor query: every column read, md5 of each request's message text, distinct
    digests counted per account. Any detector reading these logs pays at least this."""
    src = reader_sql(files, fmt)
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    rest = [f'"{c}"' for c in cols if c not in ("account_id", "messages")]
    text = ("array_to_string(list_transform(messages, lambda m: m.content), chr(10))"
            if "messages" in cols else "prompt")
    return f"""
SELECT count(*) AS accounts, sum(n) AS digests, bit_xor(h) AS h FROM (
  SELECT account_id, count(DISTINCT md5({text})) AS n, bit_xor(hash({", ".join(rest)})) AS h
  FROM {src} GROUP BY account_id)
"""


def _floor_one(files: list[str], fmt: str, q: Any) -> None:
    """Child process: time the floor query; puts wall and CPU seconds on ``q``."""
    try:
        from distillguard.store import connect

        con = connect(None)      # the store's DuckDB limits (memory, threads, temp dir)
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        row = con.execute(floor_sql(con, [Path(f) for f in files], fmt)).fetchone()
        q.put({"floor_s": time.perf_counter() - t0, "floor_cpu_s": _cpu_seconds() - cpu0,
               "floor_accounts": int(row[0]), "floor_digests": int(row[1])})
    except BaseException as exc:  # pragma: no cover - reported by the parent
        q.put({"error": f"{type(exc).__name__}: {exc}"})


def run_floor(files: Sequence[Path], fmt: str) -> dict[str, Any]:
    """The floor query on ``files`` in a fresh process (as detection runs)."""
    return _in_child(_floor_one, [str(f) for f in files], fmt)


def _in_child(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q))
    proc.start()
    while True:      # a child that dies without answering (killed, OOM) must not hang us
        try:
            out = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not proc.is_alive():
                try:
                    out = q.get_nowait()
                    break
                except queue.Empty:
                    raise RuntimeError(f"{target.__name__} exited with code "
                                       f"{proc.exitcode} and no result") from None
    proc.join()
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def growth_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Slope of log(seconds) on log(size) by least squares (1.0 = linear)."""
    pts = [(s, t) for s, t in zip(sizes, seconds, strict=True) if t and t > 0]
    if len(pts) < 2:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def _fmt_markdown(results: list[dict[str, Any]], exps: dict[str, float | None],
                  floors: dict[str, dict[str, float | None]] | None = None) -> str:
    gb = 1 << 30
    lines = ["| requests | format | accounts | stage | seconds | CPU seconds | requests/s | "
             "peak RSS (GB) |", "|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in results:
        cpu = r.get("cpu_s", {})
        subs = [k for k in r["timings"] if "." in k]
        for st in (*STAGES, *subs, "total"):
            sec = r["total_s"] if st == "total" else r["timings"].get(st, 0.0)
            rss = r["overall_peak_rss"] if st == "total" else r["peak_rss"].get(st, 0)
            c = sum(cpu.get(x, 0.0) for x in STAGES) if st == "total" else cpu.get(st)
            lines.append(f"| {r['n']:,} | {r.get('format', 'parquet')} | {r['accounts']:,} | "
                         f"{st} | {sec:.1f} | {'–' if c is None else f'{c:.1f}'} | "
                         f"{r['n'] / sec if sec else 0:,.0f} | "
                         f"{'–' if st in subs else f'{rss / gb:.2f}'} |")
    lines += ["", "Detection against the floor (one DuckDB query: every column read, md5 of "
              "each request's message text, distinct digests per account), same files, "
              "same run; wall seconds (CPU seconds):", "",
              "| requests | format | detection | floor | detection / floor | ingest | "
              "ingest / floor | load avg |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if "floor_s" not in r:
            continue
        cpu = r.get("cpu_s", {})
        tot_cpu = sum(cpu.get(x, 0.0) for x in STAGES)
        ing = r["timings"].get("ingest", 0.0)
        la = r.get("load_avg") or ()
        lines.append(
            f"| {r['n']:,} | {r['format']} | {r['total_s']:.1f} ({tot_cpu:.1f}) | "
            f"{r['floor_s']:.1f} ({r['floor_cpu_s']:.1f}) | {r['total_s'] / r['floor_s']:.1f}x | "
            f"{ing:.1f} ({cpu.get('ingest', 0.0):.1f}) | {ing / r['floor_s']:.2f}x | "
            f"{' '.join(f'{x:.1f}' for x in la)} |")
    lines += ["", "| stage | growth exponent (time ~ size^k) |", "|---|---:|"]
    for st, k in exps.items():
        lines.append(f"| {st} | {'n/a' if k is None else f'{k:.2f}'} |")
    for fmt, e in (floors or {}).items():
        k = e.get("floor")
        lines.append(f"| floor ({fmt}) | {'n/a' if k is None else f'{k:.2f}'} |")
    return "\n".join(lines) + "\n"


def perf(sizes: Sequence[float] = (1e6, 4e6, 16e6), out_dir: str | Path = "perf-out",
         seed: int = 7, *, keep: bool = False, profile: bool = False,
         formats: Sequence[str] = ("parquet",), floor: bool = True) -> dict[str, Any]:
    """Generate traffic at each size, run detection (and the floor) per input format,
    print and write the scaling table."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown format(s) {bad}; choose from {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # DuckDB's default is 80% of RAM; cap it so the run stays out of core (spilling) well
    # below the 8 GB budget. The detection child inherits the environment.
    os.environ.setdefault("DISTILLGUARD_MEMORY_LIMIT", "4GB")
    results: list[dict[str, Any]] = []
    for size in sizes:
        n = int(size)
        d = out / f"n{n}"
        t0 = time.perf_counter()
        files, _ = generate(n, d / "logs", seed)
        gen_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"[perf] generated {n:,} requests in {gen_s:.1f}s ({size_mb:,.0f} MB parquet)",
              flush=True)
        for fmt in formats:
            fmt_files, conv_s = files, 0.0
            if fmt == "jsonl.gz":
                t0 = time.perf_counter()
                fmt_files = write_jsonl(files, d / "jsonl")
                conv_s = time.perf_counter() - t0
                mb = sum(f.stat().st_size for f in fmt_files) / 1e6
                print(f"[perf] wrote {n:,} requests as gzipped JSONL in {conv_s:.1f}s "
                      f"({mb:,.0f} MB)", flush=True)
            fl = run_floor(fmt_files, fmt) if floor else {}
            if fl:
                print(f"[perf] n={n:,} {fmt:8s} floor {fl['floor_s']:8.1f}s "
                      f"(CPU {fl['floor_cpu_s']:7.1f}s)", flush=True)
            r = run_detect(fmt_files, d / "store.duckdb",
                           (d / f"profile-{fmt}.pstats") if profile else None)
            r.update(n=n, format=fmt, generate_s=gen_s + conv_s, parquet_mb=size_mb,
                     input_mb=sum(f.stat().st_size for f in fmt_files) / 1e6, **fl)
            results.append(r)
            _print_run(r)
            for p in d.glob("store.duckdb*"):
                if not keep:
                    p.unlink()
            (out / "perf.json").write_text(json.dumps({"seed": seed, "results": results},
                                                      indent=2))
        if not keep:
            shutil.rmtree(d / "logs", ignore_errors=True)
            shutil.rmtree(d / "jsonl", ignore_errors=True)
    exps: dict[str, float | None] = {}
    by_fmt: dict[str, dict[str, float | None]] = {}
    for fmt in formats:
        rs = [r for r in results if r["format"] == fmt]
        ns = [r["n"] for r in rs]
        e = {st: growth_exponent(ns, [r["timings"].get(st, 0.0) for r in rs]) for st in STAGES}
        e["total"] = growth_exponent(ns, [r["total_s"] for r in rs])
        if floor:
            e["floor"] = growth_exponent(ns, [r["floor_s"] for r in rs])
        by_fmt[fmt] = e
        if fmt == formats[0]:
            exps = {k: v for k, v in e.items() if k != "floor"}
    md = _fmt_markdown(results, exps, {f: {"floor": e.get("floor")} for f, e in by_fmt.items()})
    (out / "perf.json").write_text(json.dumps({"seed": seed, "formats": list(formats),
                                               "results": results, "growth_exponent": exps,
                                               "growth_exponent_by_format": by_fmt},
                                              indent=2))
    (out / "perf.md").write_text(md)
    print(md, flush=True)
    return {"results": results, "growth_exponent": exps, "growth_exponent_by_format": by_fmt}


def _print_run(r: dict[str, Any]) -> None:
    n, fmt = r["n"], r["format"]
    for st in (*STAGES, *(k for k in r["timings"] if "." in k)):
        sec = r["timings"].get(st, 0.0)
        # CPU and peak RSS are sampled per stage only, not per sub-stage
        cpu = f" (CPU {r['cpu_s'][st]:7.1f}s)" if st in r["cpu_s"] else " " * 16
        peak = (f" peak {r['peak_rss'][st] / (1 << 30):.2f} GB"
                if st in r["peak_rss"] else "")
        print(f"[perf] n={n:,} {fmt:8s} {st:18s} {sec:8.1f}s{cpu} "
              f"{n / sec if sec else 0:12,.0f} req/s{peak}", flush=True)
    print(f"[perf] n={n:,} {fmt:8s} total     {r['total_s']:8.1f}s  overall peak "
          f"{r['overall_peak_rss'] / (1 << 30):.2f} GB  accounts={r['accounts']:,} "
          f"flagged={r['flagged']:,} campaigns={r['campaigns']}", flush=True)
    if "floor_s" in r:
        print(f"[perf] n={n:,} {fmt:8s} detection / floor {r['total_s'] / r['floor_s']:.2f}x, "
              f"ingest / floor {r['timings'].get('ingest', 0.0) / r['floor_s']:.2f}x",
              flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m distillguard.bench.perf")
    ap.add_argument("out_dir", nargs="?", default="perf-out")
    ap.add_argument("--sizes", default="1e6,4e6,16e6")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep generated logs and stores")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile each run (profile-FORMAT.pstats)")
    ap.add_argument("--formats", default="parquet",
                    help=f"comma-separated input formats, of {', '.join(FORMATS)}")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor query")
    a = ap.parse_args(argv)
    perf([float(s) for s in a.sizes.split(",")], a.out_dir, a.seed, keep=a.keep,
         profile=a.profile, formats=a.formats.split(","), floor=not a.no_floor)


if __name__ == "__main__":
    main()
