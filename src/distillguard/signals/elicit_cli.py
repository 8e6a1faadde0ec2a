"""``distillguard elicit``: build the labelled set, train, evaluate and time the model."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Learned elicitation signal: labelled set, train, eval, bench.")
console = Console()

#: ``--min-families`` of ``train`` and ``eval``. None stands for
#: elicit_train.DEFAULT_MIN_FAMILIES, read inside the commands: the CLI imports the trainer
#: only when a command runs.
_MinFamilies = Annotated[int | None, typer.Option(
    help="Leave out n-gram buckets that are positive evidence in fewer training "
         "families than this (1: none; elicit_train.narrow_buckets) "
         "[default: elicit_train.DEFAULT_MIN_FAMILIES, 6]")]


def _data_path(name: str) -> Path:
    from distillguard.signals.elicit_data import data_dir

    return data_dir() / name if name != "model" else data_dir().parent / "elicit_model.npz"


@app.command("build-set")
def build_set(
    out: Annotated[Path | None, typer.Option(help="Output (default: the shipped "
                                                  "data/elicitation/labelled.jsonl.gz)")] = None,
) -> None:
    """Fill the family templates with bundled-corpus task text (deterministic)."""
    from distillguard.signals.elicit_data import SET_FILE, build_rows, write_set

    path = out or _data_path(SET_FILE)
    n = write_set(build_rows(), path)
    console.print(f"{n:,} rows -> {path} (sha256 {_sha(path)[:16]})")


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Labelled set (default: shipped)")] = None,
    out: Annotated[Path | None, typer.Option(help="Weights file (default: the shipped "
                                                  "data/elicit_model.npz)")] = None,
    all_splits: Annotated[bool, typer.Option(help="Train on the eval split too")] = False,
    budget: Annotated[float | None, typer.Option(
        help="Share of benign reasoning talk (eval split) the printed operating point may "
             "flag per prompt [default: elicit_train.OPERATING_BUDGET, 0.25%]")] = None,
    min_families: _MinFamilies = None,
) -> None:
    """Rebuild the model weights from the labelled set (same bytes on a rerun)."""
    from distillguard.signals.elicit_data import load_set
    from distillguard.signals.elicit_train import (
        DEFAULT_C,
        DEFAULT_HEADS,
        DEFAULT_MIN_FAMILIES,
        DEFAULT_SPEC,
        OPERATING_BUDGET,
        fit,
        operating_point,
    )

    rows = load_set(data)
    tr = rows if all_splits else [r for r in rows if r["split"] == "train"]
    t0 = time.perf_counter()
    model = fit(tr, DEFAULT_SPEC, DEFAULT_C, heads=DEFAULT_HEADS,
                min_families=DEFAULT_MIN_FAMILIES if min_families is None else min_families,
                meta={"trained_on": f"{len(tr)} rows of the elicitation labelled set "
                                    f"({'all splits' if all_splits else 'train split'})"})
    path = out or _data_path("model")
    model.save(path)
    console.print(f"trained on {len(tr):,} rows in {time.perf_counter() - t0:.1f}s -> {path} "
                  f"({path.stat().st_size / 1e6:.2f} MB, sha256 {_sha(path)[:16]})")
    if not all_splits:
        budget = OPERATING_BUDGET if budget is None else budget
        op = operating_point(model, rows, budget)
        console.print(f"operating point: elicit_p >= {op['threshold']:g} flags "
                      f"{op['fpr_reasoning_talk']:.2%} of benign reasoning talk (eval split; "
                      f"budget {budget:.2%}), {op['fpr_ordinary']:.2%} of ordinary prompts, "
                      f"{op['recall']:.3f} of elicitation (the config's "
                      "signals.elicit_model_threshold is set apart)")


@app.command("eval")
def evaluate(
    data: Annotated[Path | None, typer.Option(help="Labelled set (default: shipped)")] = None,
    fpr: Annotated[float, typer.Option(help="Budget on the benign reasoning-talk set")] = 0.01,
    family: Annotated[list[str] | None, typer.Option(
        help="Held-out families to run (default: every elicitation family, then all)")] = None,
    extra_benign: Annotated[Path | None, typer.Option(
        help="More ordinary prompts (JSONL with a 'text' field, or .jsonl.gz): their FPR at "
             "each threshold is reported too; used for evaluation only")] = None,
    extra_limit: Annotated[int, typer.Option(help="At most this many extra prompts")] = 20000,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the table as JSON")] = None,
    at: Annotated[list[float] | None, typer.Option(
        help="Also the held-out share caught at this fixed elicit_p (repeatable; e.g. the "
             "config's signals.elicit_model_threshold)")] = None,
    min_families: _MinFamilies = None,
) -> None:
    """Leave-one-family-out table: recall at <= FPR on benign reasoning talk, FPR on
    ordinary prompts, the rules' recall beside it; then throughput."""
    from distillguard.signals.elicit_data import load_set, scan_text
    from distillguard.signals.elicit_model import ElicitModel
    from distillguard.signals.elicit_train import (
        DEFAULT_C,
        DEFAULT_HEADS,
        DEFAULT_MIN_FAMILIES,
        DEFAULT_SPEC,
        lofo,
        throughput,
    )

    rows = load_set(data)
    extra = [scan_text(t, "") for t in _read_texts(extra_benign, extra_limit)] \
        if extra_benign else None
    t0 = time.perf_counter()
    res = lofo(rows, DEFAULT_SPEC, DEFAULT_C, fpr, family or None, extra, DEFAULT_HEADS,
               at=tuple(at or ()),
               min_families=DEFAULT_MIN_FAMILIES if min_families is None else min_families)
    tab = Table(title=f"leave-one-family-out, threshold at <= {fpr:.0%} of benign reasoning "
                      "talk (eval split)")
    for c in ("held-out family", "label", "n", "recall", "FPR ordinary",
              *(["FPR extra"] if extra else []), "rules recall"):
        tab.add_column(c, justify="left" if c in ("held-out family", "label") else "right")
    for r in res:
        tab.add_row(r["family"], r["label"], str(r["n"]), f"{r['recall']:.3f}",
                    f"{r['fpr_ordinary']:.4f}",
                    *([f"{r['fpr_extra']:.4f}"] if extra else []), f"{r['rules_recall']:.3f}")
    console.print(tab)
    held = [r for r in res if r["family"] != "(all)"]
    if held:
        console.print(f"mean held-out recall {sum(r['recall'] for r in held) / len(held):.3f}, "
                      f"families >= 0.90: {sum(r['recall'] >= 0.9 for r in held)}/{len(held)}; "
                      f"rules on benign reasoning talk flag "
                      f"{res[0]['rules_fpr_reasoning_talk']:.1%}, ordinary "
                      f"{res[0]['rules_fpr_ordinary']:.2%} ({time.perf_counter() - t0:.0f}s)")
    if at:
        _print_at(res, list(at), extra is not None)
    texts = [r["text"] + " " + r["system"] for r in rows]
    pps = throughput(ElicitModel.load(), texts)
    console.print(f"shipped model: {pps:,.0f} prompts/s on the labelled set's texts "
                  "(one process; `distillguard elicit bench` for realistic traffic)")
    if json_out:
        json_out.write_text(json.dumps(res, indent=1))


def _print_at(res: list[dict], at: list[float], extra: bool) -> None:
    """Held-out share caught at each fixed threshold, and the benign rates there."""
    tab = Table(title="share of each held-out family's eval prompts with elicit_p >= t")
    tab.add_column("held-out family")
    for a in at:
        tab.add_column(f">= {a:g}", justify="right")
    for r in res:
        tab.add_row(r["family"], *(f"{r['at'][str(a)]['recall']:.2f}" for a in at))
    held = [r for r in res if r["family"] != "(all)"]
    rows = [("mean held-out", "recall", "{:.3f}"),
            ("benign reasoning talk", "fpr_reasoning_talk", "{:.2%}"),
            ("ordinary", "fpr_ordinary", "{:.2%}")] + (
        [("extra benign", "fpr_extra", "{:.2%}")] if extra else [])
    for name, key, fmt in rows:
        if held:
            tab.add_row(f"[b]{name}[/b]" if key == "recall" else f"{name} (mean FPR)",
                        *(fmt.format(sum(r["at"][str(a)][key] for r in held) / len(held))
                          for a in at))
    console.print(tab)


@app.command()
def bench(
    store: Annotated[Path | None, typer.Option(
        help="A detect store (OUT/store.duckdb): time the scan texts of its requests")] = None,
    n: Annotated[int, typer.Option(help="Prompts to time")] = 100_000,
    repeat: Annotated[int, typer.Option(help="Best of this many passes")] = 3,
) -> None:
    """Prompts per second of the shipped model on realistic scan texts (this process, one
    thread; pin it to one core with ``taskset -c 0``)."""
    from distillguard.signals.elicit_data import load_set, scan_text
    from distillguard.signals.elicit_model import ElicitModel
    from distillguard.signals.elicit_train import throughput

    if store is not None:
        import duckdb

        from distillguard.config import load_config
        from distillguard.signals.sql import scan_text_sql

        con = duckdb.connect(str(store), read_only=True)
        texts = [r[0] for r in con.sql(
            f"SELECT {scan_text_sql(load_config())} FROM requests "
            f"USING SAMPLE {int(n)} ROWS (reservoir, 7)").fetchall()]
        con.close()
        where = str(store)
    else:
        rows = load_set()
        texts = [scan_text(r["text"], r["system"]) for r in rows]
        texts = (texts * (n // max(len(texts), 1) + 1))[:n]
        where = "the labelled set (repeated)"
    model = ElicitModel.load()
    pps = throughput(model, texts, repeat=repeat)
    chars = sum(map(len, texts)) / max(len(texts), 1)
    console.print(f"{len(texts):,} scan texts from {where}, mean {chars:.0f} characters: "
                  f"{pps:,.0f} prompts/s ({pps * chars / 1e6:.1f} M characters/s)")


def _read_texts(path: Path, limit: int) -> list[str]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            t = json.loads(line).get("text")
            if t:
                out.append(t)
            if len(out) >= limit:
                break
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
