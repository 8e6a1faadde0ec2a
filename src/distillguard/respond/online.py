"""Online scorer: the batch evidence model, updated one request at a time.

Per request the scorer runs the prompt-signal regexes of ``data/signals.yaml`` (Python ``re``
accepts the same ``(?i)`` patterns), updates the account's counters in a state store, then
evaluates the *same* ``scoring.evidence`` items of ``data/config.yaml`` on features computed
from the counters, with the same damping (``min_requests``) and the same Calibrator params.

Evidence computed online (feature → how):

=================  ==============================================================
cot/rubric/censor  flag counts / requests
harvest            single-turn share × novelty (distinct prompts: exact set or
                   Redis HyperLogLog) × volume term
volume             ln(requests)
machine_hours      hour-of-day histogram entropy / ln 24
focus              share of coding/math/agentic/reasoning (first matching capability)
template           top share of the first/last-six-word template keys (the batch
                   "exact bands"; MinHash LSH clusters are not computed online)
pivot              share of traffic inside a new model's first 24 h that went to it;
                   "new" = first seen >= 24 h after the state store started
new_account        account_created from the account attributes (unknown: 365 days)
signup             subsidised signup channel from the account attributes
long_outputs       geometric mean of output/input tokens (batch: median), after
                   each response
high_effort        share of reasoning_effort high/xhigh/max
repeats            1 − novelty
conversational     1 − single-turn share
=================  ==============================================================

Not online: campaign lift (needs the account graph; batch ``scores.campaign_id`` can be fed
in via ``campaigns=``), and the batch-only features not named by an evidence item.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from distillguard.config import Config, load_config
from distillguard.features.defs import ALL_FEATURES
from distillguard.respond.policy import Policy, PolicyDecision, PolicyInput
from distillguard.respond.state import AccountUpdate, MemoryState, StateStore
from distillguard.scoring import calibrator_from_config
from distillguard.scoring.calibrate import Calibrator

__all__ = ["OnlineScore", "OnlineScorer", "RequestView", "replay"]

_FOCUS = ("coding", "math", "agentic", "reasoning")
_HIGH_EFFORT = ("high", "xhigh", "max")
_SUBSIDISED = ("education", "startup", "research", "trial", "free_credits")
_ALLOWED_FUNCS = {"ln": lambda x: math.log(max(x, 1e-12)), "least": min, "greatest": max}
_URL = re.compile(r"https?://\S+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_DIGITS = re.compile(r"\d+")


@dataclass
class RequestView:
    """The request fields the scorer reads (a gateway request or a stored row)."""

    account_id: str
    model: str
    ts: float                          # epoch seconds
    prompt: str = ""
    system: str = ""
    n_user_turns: int = 1
    context_chars: int = 0
    n_tools: int = 0
    reasoning_effort: str | None = None
    account_created: float | None = None   # epoch seconds
    signup_channel: str | None = None


@dataclass
class OnlineScore:
    """Score of the account after this request, plus this request's signals."""

    account_id: str
    score: float
    raw: float
    n_requests: int
    signals: tuple[str, ...]
    capability: str
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, float] = field(default_factory=dict)


def _compile_expr(expr: str) -> Any:
    """Compile an evidence SQL expression (ln/least/greatest, arithmetic) to Python safely."""
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _ALLOWED_FUNCS):
                raise ValueError(f"function not allowed in evidence expr {expr!r}")
        elif not isinstance(node, ast.Expression | ast.BinOp | ast.UnaryOp | ast.Constant
                            | ast.Name | ast.Load | ast.operator | ast.unaryop):
            raise ValueError(f"construct {type(node).__name__} not allowed in {expr!r}")
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(_ALLOWED_FUNCS)
    return compile(tree, "<evidence>", "eval"), names


class OnlineScorer:
    """Incremental per-account scorer.

    Parameters
    ----------
    state : StateStore, default MemoryState()
        Where counters live (``RedisState`` to share them across gateway workers).
    config : Config, optional
        Detection config (signal rules, evidence items, calibration); packaged default.
    calibrator : Calibrator, optional
        Defaults to the config's ``scoring.calibration`` params, as in batch scoring.
    campaigns : mapping account_id → campaign_id, optional
        Batch campaign membership to carry into decisions and alerts.
    """

    def __init__(self, state: StateStore | None = None, config: Config | None = None,
                 calibrator: Calibrator | None = None,
                 campaigns: Mapping[str, str] | None = None) -> None:
        from distillguard.signals.rules import load_rules

        self.state = state if state is not None else MemoryState()
        self.cfg = config or load_config()
        self.calibrator = calibrator or calibrator_from_config(self.cfg)
        self.campaigns = dict(campaigns or {})
        flags, caps = load_rules(self.cfg)
        self._flags = [(r.name, re.compile(r.pattern)) for r in flags]
        self._caps = [(r.name, re.compile(r.pattern)) for r in caps]
        # Literal prefilter (exact): a rule's regex runs only when the folded text contains
        # one of the literals that every match of it contains (see _required_literals).
        self._lits = {n: _required_literals(rx.pattern) for n, rx in (*self._flags, *self._caps)}
        sig = self.cfg["signals"]
        self._head, self._tail = int(sig["scan_head_chars"]), int(sig["scan_tail_chars"])
        self._sys = int(sig["scan_system_chars"])
        sc, fc = self.cfg["scoring"], self.cfg["features"]
        self._min_req = float(sc["min_requests"])
        self._max_reasons = int(sc["max_reasons"])
        self._min_tpl = int(fc["min_template_size"])
        self._pivot_s = float(fc["pivot_window_hours"]) * 3600
        self._new_age_s = float(fc["new_model_min_age_hours"]) * 3600
        self._items = []
        self.skipped: list[str] = []
        for it in sc["evidence"]:
            code, names = _compile_expr(str(it["expr"]))
            if names - set(_ONLINE_FEATURES):
                self.skipped.append(it["name"])   # needs a feature we cannot compute online
                continue
            self._items.append((it, code, float(it["lo"]), float(it["hi"]), float(it["weight"])))

    # ------------------------------------------------------------------ signals
    def _scan(self, prompt: str, system: str) -> str:
        p = prompt or ""
        if len(p) > self._head + self._tail:
            p = p[:self._head] + " " + p[-self._tail:]
        return p + " " + (system or "")[:self._sys]

    def signals(self, prompt: str, system: str = "", n_tools: int = 0) -> tuple[tuple[str, ...], str]:
        """(flags that fire, capability) for one prompt, exactly as the batch rules define."""
        scan = self._scan(prompt, system)
        low, lits = _fold(scan), self._lits
        flags = tuple(n for n, rx in self._flags if _may_match(lits[n], low) and rx.search(scan))
        cap = "chat"
        for name, rx in self._caps:
            if (name == "agentic" and n_tools > 0) or (_may_match(lits[name], low)
                                                       and rx.search(scan)):
                cap = name
                break
        return flags, cap

    def _template_keys(self, prompt: str) -> tuple[str, ...]:
        p = prompt or ""
        if len(p) > self._head + self._tail:
            p = p[:self._head] + " " + p[-self._tail:]
        p = _DIGITS.sub("0", _EMAIL.sub(" <email> ", _URL.sub(" <url> ", p.lower())))
        words = p.split()
        if len(words) < 10:
            return ()
        return ("h:" + _h(" ".join(words[:6])), "t:" + _h(" ".join(words[-6:])))

    # ------------------------------------------------------------------ update
    def observe(self, req: RequestView) -> OnlineScore:
        """Record one request and return the account's score including it."""
        flags, cap = self.signals(req.prompt, req.system, req.n_tools)
        t0, models = self.state.globals(req.model, req.ts)
        new_models = {m: fs for m, fs in models.items() if fs >= t0 + self._new_age_s}
        in_window = any(fs <= req.ts < fs + self._pivot_s for fs in new_models.values())
        on_new = req.model in new_models and req.ts < new_models[req.model] + self._pivot_s
        hour = datetime.fromtimestamp(req.ts, UTC).hour
        incr = {"n": 1, f"h{hour:02d}": 1}
        for name in flags:
            incr[name] = 1
        if req.n_user_turns <= 1 and req.context_chars == 0:
            incr["single"] = 1
        if cap in _FOCUS:
            incr["focus"] = 1
        if (req.reasoning_effort or "").lower() in _HIGH_EFFORT:
            incr["high_effort"] = 1
        if req.n_tools > 0:
            incr["tools"] = 1
        if in_window:
            incr["pin"] = 1
            if on_new:
                incr["pnew"] = 1
        sets: dict[str, float] = {"first_ts": req.ts}
        if req.account_created is not None:
            sets["created"] = req.account_created
        if req.signup_channel is not None:
            sets["subsidised"] = float(req.signup_channel.lower() in _SUBSIDISED)
        upd = AccountUpdate(incr, sets, _h(req.prompt or ""), self._template_keys(req.prompt),
                            req.ts)
        st = self.state.update(req.account_id, upd)
        return self._score(req.account_id, st, flags, cap)

    def observe_response(self, account_id: str, input_tokens: int | None,
                         output_tokens: int | None) -> None:
        """Feed token usage after a response (long-output evidence)."""
        if input_tokens is None or output_tokens is None:
            return
        self.state.add_float(account_id, "lr_sum", math.log((output_tokens + 1e-9)
                                                            / max(input_tokens, 1)))
        self.state.add_float(account_id, "lr_n", 1.0)
        self.state.add_float(account_id, "out_sum", float(output_tokens))

    def features(self, st: Mapping[str, float]) -> dict[str, float]:
        """Online equivalents of the batch features the evidence items read."""
        n = max(float(st.get("n", 0)), 1.0)
        hours = [float(st.get(f"h{h:02d}", 0)) for h in range(24)]
        ent = -sum((c / n) * math.log(c / n) for c in hours if c > 0) / math.log(24)
        tpl = float(st.get("tpl_top", 0))
        first = st.get("first_ts")
        created = st.get("created")
        age = 365.0 if created is None or first is None else (first - created) / 86400
        lr_n = float(st.get("lr_n", 0))
        return {
            "n_requests": n,
            "cot_rate": st.get("cot_elicit", 0) / n,
            "rubric_rate": st.get("rubric_grading", 0) / n,
            "censor_rate": st.get("censorship_safe", 0) / n,
            "single_turn_share": st.get("single", 0) / n,
            "novelty": min(float(st.get("distinct", n)) / n, 1.0),
            "hour_entropy": ent,
            "focus_rate": st.get("focus", 0) / n,
            "template_top_share": tpl / n if tpl >= self._min_tpl else 0.0,
            "pivot_share": (st.get("pnew", 0) / st["pin"]) if st.get("pin") else 0.0,
            "account_age_days": math.floor(age),
            "nonstandard_signup": float(st.get("subsidised", 0.0)),
            "out_in_ratio": math.exp(st.get("lr_sum", 0.0) / lr_n) if lr_n else 0.0,
            "high_effort_share": st.get("high_effort", 0) / n,
            "tools_share": st.get("tools", 0) / n,
            # Requests with two flags count twice here (batch counts them once).
            "n_elicit": float(st.get("cot_elicit", 0) + st.get("rubric_grading", 0)
                              + st.get("censorship_safe", 0)),
            "pivot_window_requests": float(st.get("pin", 0)),
            # Unknown until token counts arrive: the batch feature is NULL then, and its
            # evidence contributes nothing; a large value makes the ramp contribute nothing.
            "mean_output_tokens": (float(st.get("out_sum", 0.0)) / lr_n) if lr_n else 1e9,
            # Partner indicators are matched in batch; online they contribute nothing.
            "partner_hits": 0.0,
            "partner_confidence": 0.0,
        }

    def _score(self, account_id: str, st: Mapping[str, float], flags: tuple[str, ...],
               cap: str) -> OnlineScore:
        f = self.features(st)
        n = f["n_requests"]
        damp = min(n / self._min_req, 1.0)
        ev: dict[str, float] = {}
        for it, code, lo, hi, w in self._items:
            try:
                val = float(eval(code, {"__builtins__": {}, **_ALLOWED_FUNCS}, f))  # noqa: S307 - AST-checked
            except (ArithmeticError, ValueError):
                val = 0.0
            ramp = min(max((val - lo) / (hi - lo), 0.0), 1.0)
            ev[it["name"]] = w * ramp * damp
        raw = sum(ev.values())
        score = float(self.calibrator.transform([raw])[0])
        top = sorted(((v, it) for it, *_ in self._items if (v := ev[it["name"]]) > 0.05),
                     key=lambda t: -t[0])[: self._max_reasons]
        reasons = []
        for _, it in top:
            feat = ALL_FEATURES.get(it["show"])
            val = f.get(it["show"])
            reasons.append(it["reason"].format(feat.fmt.format(val) if feat and val is not None
                                               else val))
        return OnlineScore(account_id, score, raw, int(n), flags, cap, reasons, ev)


_ONLINE_FEATURES = ("n_requests", "cot_rate", "rubric_rate", "censor_rate", "single_turn_share",
                    "novelty", "hour_entropy", "focus_rate", "template_top_share", "pivot_share",
                    "account_age_days", "nonstandard_signup", "out_in_ratio",
                    "high_effort_share", "tools_share", "pivot_window_requests", "n_elicit",
                    "mean_output_tokens", "partner_hits", "partner_confidence")


def _h(s: str) -> str:
    return hashlib.blake2b(s.encode("utf-8", "replace"), digest_size=8).hexdigest()


# ------------------------------------------------------- literal prefilter (speed only)
# A rule's regex can only match text that contains, case-insensitively, one of the literals
# _required_literals finds in its parsed pattern; testing those with ``in`` on folded text is
# ~10x cheaper than the (?i) regex. Folding reproduces re's case-insensitive equality: simple
# lowercase (str.lower() but İ → i) plus re's extra equivalences (ſ ~ s, ς ~ σ, ᲀ ~ в ...),
# mapped to one representative, so the prefilter never hides a match. Without CPython's
# parser modules the regexes simply always run.
try:
    import re._casefix as _casefix
    import re._constants as _sc
    import re._parser as _sre_parse
    _PRE = {cp: chr(cp).lower()[0] for cp in range(0x80, 0x10000) if len(chr(cp).lower()) != 1}
    _CANON = {cp: min((k, *vs)) for k, vs in _casefix._EXTRA_CASES.items() for cp in (k, *vs)
              if cp != min((k, *vs))}
except (ImportError, AttributeError):  # pragma: no cover - other Pythons
    _sre_parse = None
    _PRE, _CANON = {}, {}


def _fold(s: str) -> str:
    return s.lower() if s.isascii() else s.translate(_PRE).lower().translate(_CANON)


def _may_match(lits: tuple[str, ...] | None, low: str) -> bool:
    return lits is None or any(x in low for x in lits)


def _lits(items: Any) -> frozenset[str] | None:
    """Literals one of which every match of the parsed sequence ``items`` contains, or None."""
    best: frozenset[str] | None = None
    run: list[str] = []

    def consider(cand: frozenset[str] | None) -> None:
        nonlocal best
        if cand and (best is None or min(map(len, cand)) > min(map(len, best))):
            best = cand

    for op, av in [*items, (None, None)]:
        if op is _sc.LITERAL:
            run.append(chr(av))
            continue
        if run:                                   # a run of literals ends here
            consider(frozenset(["".join(run)]))
            run = []
        if op is _sc.SUBPATTERN:
            consider(_lits(av[-1]))
        elif op is _sc.ATOMIC_GROUP:
            consider(_lits(av))
        elif op is _sc.BRANCH:
            subs = [_lits(b) for b in av[1]]
            if all(subs):
                consider(frozenset().union(*subs))  # type: ignore[arg-type]
        elif op in (_sc.MAX_REPEAT, _sc.MIN_REPEAT, _sc.POSSESSIVE_REPEAT) and av[0] >= 1:
            consider(_lits(av[2]))
    return best


def _required_literals(pattern: str) -> tuple[str, ...] | None:
    """Folded literals of which any match of ``pattern`` contains one; None: no prefilter."""
    if _sre_parse is None:
        return None
    try:
        lits = _lits(list(_sre_parse.parse(pattern)))
    except Exception:  # noqa: BLE001 - unparseable here: fall back to the full regex
        return None
    return tuple(sorted({_fold(x) for x in lits})) if lits else None


# ---------------------------------------------------------------------- replay

def _epoch(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    return float(v)


def iter_store_rows(con: Any, batch_rows: int = 50_000) -> Iterator[dict[str, Any]]:
    """Stored requests in time order, streamed in Arrow record batches (bounded memory)."""
    reader = con.sql("""
        SELECT request_id, ts, account_id, model, prompt, system, n_user_turns, context_chars,
               n_tools, reasoning_effort, account_created, signup_channel, input_tokens,
               output_tokens
        FROM requests ORDER BY ts, request_id""").to_arrow_reader(batch_rows)
    for batch in reader:
        yield from batch.to_pylist()


def replay(logs: list[str | Path] | str | Path, out_dir: str | Path, *,
           policy: Policy | None = None, scorer: OnlineScorer | None = None,
           config: Config | None = None) -> dict[str, Any]:
    """Score logs as if they arrived live; write ``alerts.jsonl`` into ``out_dir``.

    Each line is ``{ts, account_id, campaign_id, score, action, reasons}`` for a request at
    which the account's policy action *escalated* (so the first line per account is its
    time-to-detection, and the file stays small). Suspensions are sticky, as in the gateway.
    Returns a summary (requests, accounts, alerts, accounts per final action).
    """
    from distillguard.ingest import ingest_files
    from distillguard.respond.policy import ACTIONS, load_policy
    from distillguard.store import connect

    cfg = config or (scorer.cfg if scorer else load_config())
    policy = policy or load_policy()
    scorer = scorer or OnlineScorer(config=cfg)
    paths = [logs] if isinstance(logs, str | Path) else list(logs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = connect(None)
    level: dict[str, int] = {}
    final: dict[str, str] = {}
    n_req = n_alerts = 0
    try:
        ingest_files([Path(p) for p in paths], con, limits=cfg["ingest"])
        with (out / "alerts.jsonl").open("wb") as fh:
            for row in iter_store_rows(con):
                n_req += 1
                acct = row["account_id"]
                ts = _epoch(row["ts"]) or 0.0
                s = scorer.observe(RequestView(
                    acct, row["model"], ts, row["prompt"] or "", row["system"] or "",
                    int(row["n_user_turns"] or 0), int(row["context_chars"] or 0),
                    int(row["n_tools"] or 0), row["reasoning_effort"],
                    _epoch(row["account_created"]), row["signup_channel"]))
                scorer.observe_response(acct, row["input_tokens"], row["output_tokens"])
                d = decide(policy, scorer, s, acct, ts)
                final[acct] = d.action
                sev = ACTIONS.index(d.action)
                if sev > level.get(acct, 0):
                    level[acct] = sev
                    n_alerts += 1
                    fh.write(orjson.dumps({
                        "ts": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
                        "account_id": acct, "campaign_id": scorer.campaigns.get(acct),
                        "score": round(s.score, 6), "action": d.action,
                        "reasons": s.reasons}) + b"\n")
    finally:
        con.close()
    by_action: dict[str, int] = {}
    for a in final.values():
        by_action[a] = by_action.get(a, 0) + 1
    return {"requests": n_req, "accounts": len(final), "alerts": n_alerts,
            "final_actions": by_action, "policy_version": policy.version,
            "skipped_evidence": scorer.skipped}


def decide(policy: Policy, scorer: OnlineScorer, s: OnlineScore, account_id: str,
           ts: float) -> PolicyDecision:
    """Policy decision for a scored request, with sticky suspension (shared with the gateway)."""
    susp = scorer.state.suspended(account_id)
    if susp is not None:
        return PolicyDecision("suspend", (str(susp.get("rule", "suspended")),), "suspend",
                              str(susp.get("rule", "suspended")), {}, actions=("suspend",))
    d = policy.decide(PolicyInput(s.score, s.n_requests, s.signals,
                                  scorer.campaigns.get(account_id)))
    if d.blocking == "suspend":
        scorer.state.suspend(account_id, {"rule": d.blocking_rule, "ts": ts,
                                          "score": round(s.score, 6),
                                          "policy_version": policy.version})
    return d
