"""Attacker tactics the default scenario does not use, each as a set of simulator knobs.

The default benchmark plants campaigns the way the public reports describe them: elicitation
phrasing, templates, shared cards and proxy pools, round-the-clock streams. An adapting
attacker drops what gives it away. Each tactic below changes the *campaigns only* (benign
traffic is the same), the threshold is still calibrated on benign tuning traffic, and the
table shows what is left of recall, flag for flag, with the bench's fit and as shipped.

>>> from distillguard.bench.tactics import run_tactics
>>> run_tactics("tactics-out", ["no_elicitation"], scenario="demo")     # doctest: +SKIP

Run: ``distillguard bench --shared-data ../shared/data --tactics all``
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillguard.errors import ConfigError

_PLAIN = {"plain": 1.0}
_NO_ELICITATION = {
    "reasoning_hydra__families": _PLAIN, "proxy_reseller__families": _PLAIN,
    "low_and_slow__families": _PLAIN, "agentic_hydra__families": {"agentic": 1.0},
    "agentic_hydra__cot_suffix": 0.0}
_OWN_INFRA = {
    "reasoning_hydra__pay_group": 1, "agentic_hydra__pay_group": 1,
    "proxy_reseller__pay_group": 1, "ip_pool": 5000,
    "reasoning_hydra__sticky_minutes": 0, "agentic_hydra__sticky_minutes": 0}

#: name -> (what the attacker does, simulator knobs)
TACTICS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("the default scenario's campaigns, unchanged", {}),
    "no_elicitation": (
        "no chain-of-thought, rubric or censorship phrasing: plain instruction prompts only",
        _NO_ELICITATION),
    "paraphrased": ("every prompt paraphrased: no stable template wording",
                    {"paraphrase": 1.0}),
    "own_infra": (
        "one card and a large exit pool per account: no shared payment or IP prefix",
        _OWN_INFRA),
    "camouflaged": ("half of every campaign's traffic is replayed ordinary prompts",
                    {"camouflage": 0.5}),
    "slow": ("a third of the per-account rate (more accounts' worth of evasion)",
             {"rate": 0.33}),
    "all_of_the_above": (
        "plain prompts, paraphrased, own infrastructure, 30% camouflage, a third of the rate",
        {**_NO_ELICITATION, "paraphrase": 1.0, **_OWN_INFRA, "camouflage": 0.3,
         "rate": 0.33}),
}


def resolve(names: str | Sequence[str]) -> list[str]:
    """``"all"`` or a comma-separated / listed subset of :data:`TACTICS`, in table order."""
    if isinstance(names, str):
        names = list(TACTICS) if names.strip() == "all" else [
            n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in TACTICS]
    if unknown:
        raise ConfigError(f"unknown tactic(s) {unknown}; known: {', '.join(TACTICS)}")
    return list(names)


def run_tactics(out_dir: str | Path, names: str | Sequence[str], **kw: Any) -> dict[str, Any]:
    """One benchmark per tactic; writes ``tactics.json`` and ``tactics.md`` in ``out_dir``."""
    from distillguard.bench.run import bench

    out = Path(out_dir)
    base = dict(kw.pop("knobs", None) or {})
    rows: dict[str, Any] = {}
    for name in resolve(names):
        desc, knobs = TACTICS[name]
        res = bench(out / name, knobs={**base, **knobs}, **kw)
        rows[name] = {"description": desc, "knobs": knobs, "detectors": {
            d: _row(m) for d, m in res["detectors"].items()}}
    (out / "tactics.json").write_text(json.dumps(rows, indent=2, default=str))
    (out / "tactics.md").write_text(markdown(rows))
    return rows


def _row(m: dict[str, Any]) -> dict[str, Any]:
    worst = max((k["fpr"] for k in m["fpr_by_kind"]
                 if k["fpr"] is not None and k["kind"] != "ordinary"), default=None)
    return {"pr_auc": m["pr_auc"],
            "recall@0.1%fpr": m["recall_at_fpr"]["0.001"]["recall"],
            "flag_recall": m["flagged"]["recall"], "flag_precision": m["flagged"]["precision"],
            "worst_hard_neg_fpr": worst,
            "by_campaign": {c["campaign_id"]: c["flagged_share"] for c in m["campaigns"]}}


def markdown(rows: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    out = ["| tactic | detector | PR-AUC | recall @0.1% FPR | flag recall | flag precision | "
           "worst hard-neg FPR | flagged share per campaign |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        for d, m in r["detectors"].items():
            camp = ", ".join(f"{c.rsplit('-', 1)[0]} {f(v)}" for c, v in
                             sorted(m["by_campaign"].items()))
            out.append(f"| {name} | {d} | {f(m['pr_auc'])} | {f(m['recall@0.1%fpr'])} | "
                       f"{f(m['flag_recall'])} | {f(m['flag_precision'])} | "
                       f"{f(m['worst_hard_neg_fpr'])} | {camp} |")
    out += ["", "Tactics:", ""] + [f"- `{n}`: {r['description']}" for n, r in rows.items()]
    return "\n".join(out) + "\n"
