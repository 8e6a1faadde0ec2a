"""The benchmark: distillguard and published baselines on the same simulated traffic.

Protocol (what makes the figures honest):

1. Traffic for *tuning* and for *reporting* is simulated from disjoint halves of every corpus
   (split by conversation) with different seeds.
2. Every detector's threshold, ours included, is calibrated on the **benign accounts of the
   tuning traffic only**, for the same false-positive budget.
3. All metrics are computed on the reporting traffic, which no threshold has seen.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from distillguard.api import Progress, analyse, calibrate_store
from distillguard.bench.metrics import evaluate
from distillguard.config import Config, load_config
from distillguard.ingest import ingest_files
from distillguard.scoring import Calibrator, score_accounts
from distillguard.store import connect, scalar

BASELINES = ("volume", "prada", "knn", "mmd")


def current_rss() -> int:
    """Resident memory of this process in bytes (Linux /proc)."""
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every
    ``interval`` seconds on a thread, and once more at the end). Subclasses sample more
    in :meth:`_sample`."""

    interval = 0.05

    def __enter__(self) -> PeakRSS:
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    _rss = staticmethod(current_rss)

    def _sample(self) -> None:
        self.peak = max(self.peak, self._rss())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


@dataclass
class Traffic:
    logs: list[Path]
    labels: pl.DataFrame


@dataclass
class DetectorRun:
    name: str
    accounts: pl.DataFrame           # account_id, score, flagged[, campaign_id]
    seconds: float
    peak_rss: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    model: Any = None                # the fitted baseline (reused for time to detect)


def simulate_pair(out_dir: Path, scenario: str, seed: int, legit: Any, distill: Any,
                  timing: Any, knobs: dict[str, Any]) -> tuple[Traffic, Traffic]:
    """Tuning traffic (benign calibration) and reporting traffic, from disjoint corpus halves."""
    from distillguard.sim import simulate

    out = []
    for split, s in (("tune", seed + 1000), ("report", seed)):
        res = simulate(out_dir / split, scenario=scenario, seed=s, legit_corpus=legit,
                       distill_corpus=distill, timing=timing, split=split, **knobs)
        out.append(Traffic(list(res.logs), pl.read_csv(res.labels, infer_schema_length=0)))
    return out[0], out[1]


def _store(traffic: Traffic, cfg: Config, db: Path | None):
    con = connect(db)
    ingest_files(traffic.logs, con, limits=cfg["ingest"])
    return con


def calibrate_ours(con, cfg: Config, labels: pl.DataFrame) -> Calibrator:
    """Run the pipeline on tuning traffic; fit the calibrator on its benign accounts."""
    benign = labels.filter(pl.col("label") != "distill")["account_id"].to_list()
    return calibrate_store(con, cfg, benign)


def requests_frame(con) -> pl.DataFrame:
    return con.sql("SELECT account_id, ts, prompt FROM requests").pl()


def make_baseline(name: str, contamination: float):
    from distillguard.bench import baselines as b

    return {"volume": b.VolumeBaseline, "prada": b.PRADA, "knn": b.StatefulKNN,
            "mmd": b.MMDWindow}[name](contamination=contamination)


def _with_embeddings(frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Embed every prompt once so all baselines see the same vectors."""
    from distillguard.bench.embed import embed

    texts = pl.concat([f["prompt"] for f in frames]).fill_null("").to_list()
    vec = embed(texts)
    out, i = [], 0
    for f in frames:
        out.append(f.with_columns(pl.Series("embedding", vec[i:i + f.height])))
        i += f.height
    return out


def run_baselines(names: Sequence[str], tune_req: pl.DataFrame, tune_labels: pl.DataFrame,
                  rep_req: pl.DataFrame, contamination: float) -> list[DetectorRun]:
    benign = tune_labels.filter(pl.col("label") != "distill").select("account_id")
    fit_req = tune_req.join(benign, on="account_id")
    runs = []
    for name in names:
        det = make_baseline(name, contamination)
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            det.fit(fit_req)
            pred = det.predict(rep_req)
        runs.append(DetectorRun(name, pred.select("account_id", "score", "flagged"),
                                time.perf_counter() - t0, mem.peak, model=det))
    return runs


def bench(
    out_dir: str | Path,
    *,
    scenario: str = "default",
    seed: int = 7,
    legit: Any = None,
    distill: Any = None,
    timing: Any = None,
    knobs: dict[str, Any] | None = None,
    baselines: Sequence[str] = BASELINES,
    config: Config | None = None,
    traffic: tuple[Traffic, Traffic] | None = None,
    progress: Progress | None = None,
    time_to_detect: bool = False,
) -> dict[str, Any]:
    """Run the whole benchmark; returns (and writes to ``out_dir/bench.json``) the results."""
    cfg = config or load_config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress.done if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    tune, rep = traffic or simulate_pair(out / "traffic", scenario, seed, legit, distill,
                                         timing, knobs or {})
    say("simulate", time.perf_counter() - t0)

    t0 = time.perf_counter()
    tune_con = _store(tune, cfg, None)
    cal = calibrate_ours(tune_con, cfg, tune.labels)
    say("calibrate", time.perf_counter() - t0)

    # Ours on the reporting traffic, timed end to end from the raw log files.
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        rep_con = _store(rep, cfg, None)
        scores, campaigns = analyse(rep_con, cfg, calibrator=cal)
    ours = DetectorRun("distillguard", scores.select("account_id", "score", "flagged",
                                                     "campaign_id"),
                       time.perf_counter() - t0, mem.peak)
    n_requests = scalar(rep_con, "SELECT count(*) FROM requests")
    say("detect", ours.seconds)
    # The same scores flagged at the calibration shipped in the config, i.e. what
    # `distillguard detect` does out of the box; drift from the bench's fit shows here.
    t0 = time.perf_counter()
    shipped, _ = score_accounts(rep_con, cfg, None)
    as_shipped = DetectorRun("as-shipped", shipped.select("account_id", "score", "flagged",
                                                          "campaign_id"),
                             time.perf_counter() - t0 + ours.seconds, mem.peak)

    base_runs: list[DetectorRun] = []
    if baselines:
        t0 = time.perf_counter()
        tune_req, rep_req = _with_embeddings([requests_frame(tune_con), requests_frame(rep_con)])
        say("embed", time.perf_counter() - t0)
        base_runs = run_baselines(baselines, tune_req, tune.labels, rep_req,
                                  float(cfg["scoring"]["target_fpr"]))
        say("baselines", sum(r.seconds for r in base_runs))
    runs = [ours, as_shipped, *base_runs]
    for r in runs:
        r.metrics = evaluate(rep.labels, r.accounts)
    ttd = None
    if time_to_detect:
        from distillguard.bench.ttd import time_to_detect as _ttd

        t0 = time.perf_counter()
        # every baseline replays with the model (threshold) fitted above
        fitted = {r.name: r.model for r in base_runs}
        vol = fitted.pop("volume", None)
        if vol is None:
            benign = tune.labels.filter(pl.col("label") != "distill").select("account_id")
            vol = make_baseline("volume", float(cfg["scoring"]["target_fpr"])).fit(
                requests_frame(tune_con).join(benign, on="account_id"))
        models = fitted
        ttd = _ttd(rep.logs, rep.labels, out / "replay", volume_threshold=vol.threshold_,
                   baselines=models, requests=rep_req if models else None, config=cfg)
        say("time-to-detect", time.perf_counter() - t0)
    result = {
        "scenario": scenario if traffic is None else "given",
        "seed": seed,
        "knobs": knobs or {},
        "config_version": cfg.version,
        "calibration": {**cal.params(), "n_benign": cal.n_benign_,
                        "target_fpr": cal.target_fpr},
        "shipped_calibration": dict(cfg["scoring"]["calibration"]),
        "n_requests": n_requests,
        "n_accounts": rep.labels.height,
        "n_campaigns_found": len(campaigns),
        "time_to_detect": ttd,
        "detectors": {r.name: {**r.metrics, "seconds": round(r.seconds, 2),
                               "requests_per_second": round(n_requests / max(r.seconds, 1e-9)),
                               "peak_rss_mb": round(r.peak_rss / 2**20)} for r in runs},
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "bench.md").write_text(markdown(result))
    scores.join(rep.labels, on="account_id", how="left").write_csv(out / "accounts_scored.csv")
    return result


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per detector for the printed table."""
    rows = []
    for name, m in result["detectors"].items():
        r = m["recall_at_fpr"]
        worst_hn = max((k["fpr"] for k in m["fpr_by_kind"] if k["fpr"] is not None
                        and k["kind"] != "ordinary"), default=None)
        rows.append({
            "detector": name,
            "pr_auc": m["pr_auc"],
            "recall@0.1%fpr": r.get("0.001", {}).get("recall"),
            "recall@1%fpr": r.get("0.01", {}).get("recall"),
            "flag_precision": m["flagged"]["precision"],
            "flag_recall": m["flagged"]["recall"],
            "flag_fpr": m["flagged"]["fpr"],
            "worst_hard_neg_fpr": worst_hn,
            "campaigns_recovered": f"{m['n_campaigns_recovered']}/{m['n_campaigns']}",
            "req/s": m["requests_per_second"],
            "peak_mb": m["peak_rss_mb"],
        })
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The benchmark table as Markdown (for the README and closing notes)."""
    rows = summary_rows(result)
    keys = list(rows[0])[1:]

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))

    out = [f"{result['n_requests']:,} requests, {result['n_accounts']:,} accounts "
           f"(scenario {result['scenario']}, seed {result['seed']}, config "
           f"{result['config_version']}):", "",
           "| metric | " + " | ".join(r["detector"] for r in rows) + " |",
           "|---|" + "---:|" * len(rows)]
    out += [f"| {k} | " + " | ".join(fmt(r[k]) for r in rows) + " |" for k in keys]
    m = result["detectors"]["distillguard"]
    out += ["", "distillguard per planted campaign:", "",
            "| campaign | accounts | flagged share | purity | recovered as one |",
            "|---|---:|---:|---:|---|"]
    out += [f"| {c['campaign_id']} | {c['n_accounts']} | {fmt(c['flagged_share'])} | "
            f"{fmt(c['purity'])} | {c['recovered_as_one']} |" for c in m["campaigns"]]
    out += ["", "False-positive rate per legitimate kind (distillguard):", "",
            "| kind | accounts | flagged | fpr |", "|---|---:|---:|---:|"]
    out += [f"| {k['kind']} | {k['n']} | {k['n_flagged']} | {fmt(k['fpr'])} |"
            for k in m["fpr_by_kind"]]
    ttd = result.get("time_to_detect")
    if ttd:
        base = ttd.get("baselines") or {}
        cols = {"distillguard": ttd["online"]}
        if "volume" in ttd:
            cols["volume"] = ttd["volume"]
        cols.update({name: b["campaigns"] for name, b in base.items()})
        by = {name: {c["campaign_id"]: c for c in rows} for name, rows in cols.items()}
        every = ", ".join(f"{n} every {b['checkpoint_every']}" for n, b in base.items())
        out += ["", "Time to detect (share of a campaign's requests served before its first "
                "alert, and hours from its first request; – = never). distillguard: the online "
                "scorer replaying the week in time order; volume: running request count "
                "passing its benign-calibrated threshold"
                + (f"; {', '.join(base)}: account score on the request prefix at checkpoints "
                   f"({every} requests, and each account's last request) passing the "
                   "threshold calibrated on benign tuning traffic" if base else "") + "):", "",
                "| campaign | requests | "
                + " | ".join(f"{n}: share before | hours" for n in cols) + " |",
                "|---|---:|" + "---:|---:|" * len(cols)]
        for c in ttd["online"]:
            cid = c["campaign_id"]
            cells = []
            for name in cols:
                v = by[name].get(cid, {})
                cells += [fmt(v.get("share_served_before")), fmt(v.get("hours_to_detect"))]
            out.append(f"| {cid} | {c['requests']:,} | " + " | ".join(cells) + " |")
        out += ["", f"Legitimate accounts that crossed the threshold at some point of the "
                    f"online replay: {ttd['online_benign_alerted']} of {ttd['n_benign']}"
                + "".join(f"; {n}: {b['benign_alerted']}" for n, b in base.items()) + "."]
    return "\n".join(out) + "\n"


def sweep(out_dir: str | Path, knob: str, values: Sequence[float], **kw: Any) -> dict[str, Any]:
    """Recall against attack strength: one benchmark per knob value, plus a PNG plot."""
    out = Path(out_dir)
    results = {}
    base_knobs = dict(kw.pop("knobs", None) or {})
    for v in values:
        res = bench(out / f"{knob}={v}", knobs={**base_knobs, knob: v}, **kw)
        results[v] = res
    _plot_sweep(out / f"sweep-{knob}.png", knob, results)
    table = {str(v): {d: {"recall@0.1%fpr": m["recall_at_fpr"]["0.001"]["recall"],
                          "recall@1%fpr": m["recall_at_fpr"]["0.01"]["recall"],
                          "pr_auc": m["pr_auc"]}
                      for d, m in r["detectors"].items()} for v, r in results.items()}
    (out / f"sweep-{knob}.json").write_text(json.dumps(table, indent=2))
    return table


def _plot_sweep(path: Path, knob: str, results: dict[float, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = list(results)
    names = list(next(iter(results.values()))["detectors"])
    for name in names:
        ys = [results[x]["detectors"][name]["recall_at_fpr"]["0.001"]["recall"] or 0.0
              for x in xs]
        ax.plot(xs, ys, marker="o", lw=2.5 if name == "distillguard" else 1.2, label=name)
    ax.set_xlabel(knob)
    ax.set_ylabel("recall of campaign accounts at 0.1% FPR")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Recall as the attacker adapts ({knob})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
