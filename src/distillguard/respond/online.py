"""Online scorer: the batch evidence model, updated one request at a time.

Per request the scorer runs the prompt-signal regexes of ``data/signals.yaml`` (rewritten by
:func:`re2_semantics` so Python ``re`` matches what RE2 matches in batch: ASCII ``\\w \\d \\s
\\b``), updates the account's counters in a state store, then evaluates the *same*
``scoring.evidence`` items of ``data/config.yaml`` on features computed from the counters,
with the same damping (``min_requests``), the same Calibrator params and, with the latest
batch run's ``campaigns.json`` loaded (:meth:`OnlineScorer.load_campaigns`), the same
campaign lift. At the end of the same traffic the online score of every account equals the
batch score up to the approximations below (tested in ``tests/test_online_batch.py``: every
flag equal, scores within 0.005, on two simulated scenarios).

Each feature online against its batch SQL (``features/defs.py``):

======================  ==================================================================
n_requests, *_rate,     counters / requests: same definition (flags, capability and
single_turn, focus,     effort exactly as the batch rules)
tools, high_effort
novelty                 distinct prompt hashes / requests: exact set (MemoryState) or
                        Redis HyperLogLog (standard error 0.81 %)
n_elicit                distinct prompts with any elicitation flag: the flagged prompts'
                        hashes in a side set (``<account>\\x1felicit``; HyperLogLog in
                        Redis), its size cached in the account hash
elicit_model_rate,      requests (distinct prompts) whose learned ``elicit_p`` reaches
n_elicit_model          ``signals.elicit_model_threshold``: same model, same scan text, same
                        value as the batch ``signals.elicit_p``; distinct prompts in a side
                        set (``<account>\\x1femodel``) like n_elicit
hour_entropy            hour-of-day (UTC) histogram: same
pivot_share,            same windows (union of new models' first 24 h); "new" = first seen
pivot_window_requests   >= 24 h after ``t0``: batch ``t0`` = earliest logged request, online
                        = first request the state store saw (equal on a replay)
account_age_days        calendar days (UTC) from the latest ``account_created`` to the first
                        request, like ``date_diff('day', ...)``; unknown: 365
nonstandard_signup      any request with a subsidised channel: same
out_in_ratio            median of output / max(input, 1) over responses with output
                        tokens, from a histogram of log-ratios in 2 % bins beside the
                        account (``<account>\\x1fratio``): within ~1 % of the exact median
mean_output_tokens      mean over responses with output tokens: same
template_top_share      APPROXIMATE: the account's most sent first-six-word or
                        last-six-word key (batch's exact bands), counted once the account
                        itself sent it ``min_template_size`` times. Batch gives each request
                        one template, the largest bucket over all accounts among 16 MinHash
                        LSH bands and those two keys, counted when that global bucket has
                        ``min_template_size`` requests: needs every account's traffic to the
                        end of the window, so it cannot be evaluated per request. Online is
                        lower for an account sending a shared template fewer than 5 times,
                        and when paraphrases group only under MinHash.
partner_hits,           0: partner indicators are matched in batch only, so the ``partner``
partner_confidence      evidence never contributes online
======================  ==================================================================

Other differences: the online window is "since the account became active until idle for the
state TTL" (default 7 days), the batch window is the logs given; campaign membership and
campaign scores are those of the loaded batch run (an account the batch did not link is not
lifted; a member whose own raw score is below ``lift_min_raw`` is not lifted, as in batch).
With RedisState, concurrent requests of one account in several workers can leave the cached
``n_elicit`` / median off until that account's next flagged request / response.

A score read mid-stream reflects the traffic so far: an account may cross the threshold for a
while and end below it (transient alerts); ``replay`` counts these separately.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from distillguard.config import Config, load_config
from distillguard.features.defs import ALL_FEATURES
from distillguard.respond._errors import RespondError
from distillguard.respond.policy import Policy, PolicyDecision, PolicyInput
from distillguard.respond.state import AccountUpdate, MemoryState, StateStore, now_s
from distillguard.scoring import calibrator_from_config
from distillguard.scoring.calibrate import Calibrator
from distillguard.scoring.evidence import item_weight

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
    elicit_p: float = 0.0               # this request's learned elicitation probability


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
    campaigns : campaigns.json path or list, or mapping account_id → campaign_id, optional
        The latest batch run's campaigns (see :meth:`load_campaigns`). From campaigns.json
        (path or ``DetectResult.campaigns``) members are lifted to their campaign's score as
        in batch; a bare mapping only carries membership into decisions and alerts.
    """

    def __init__(self, state: StateStore | None = None, config: Config | None = None,
                 calibrator: Calibrator | None = None,
                 campaigns: Mapping[str, str] | Sequence[Mapping[str, Any]] | str | Path
                 | None = None) -> None:
        from distillguard.signals.rules import load_rules

        self.state = state if state is not None else MemoryState()
        self.cfg = config or load_config()
        self.calibrator = calibrator or calibrator_from_config(self.cfg)
        self.campaigns: dict[str, str] = {}
        self.campaign_scores: dict[str, float] = {}
        self._campaign_sizes: dict[str, int] = {}
        self.load_campaigns(campaigns)
        flags, caps = load_rules(self.cfg)
        self._flags = [(r.name, re.compile(re2_semantics(r.pattern))) for r in flags]
        self._caps = [(r.name, re.compile(re2_semantics(r.pattern))) for r in caps]
        # Literal prefilter (exact): a rule's regex runs only when the folded text contains
        # one of the literals that every match of it contains (see _required_literals).
        self._lits = {n: _required_literals(rx.pattern) for n, rx in (*self._flags, *self._caps)}
        sig = self.cfg["signals"]
        self._head, self._tail = int(sig["scan_head_chars"]), int(sig["scan_tail_chars"])
        self._sys = int(sig["scan_system_chars"])
        from distillguard.signals.elicit_model import default_model

        self._elicit = default_model()
        self._elicit_thr = float(sig["elicit_model_threshold"])
        sc, fc = self.cfg["scoring"], self.cfg["features"]
        self._min_req = float(sc["min_requests"])
        self.threshold = float(sc["threshold"])
        self._lift_min_raw = float(sc["lift_min_raw"])
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
            self._items.append((it, code, float(it["lo"]), float(it["hi"]),
                                item_weight(self.cfg, it)))

    def load_campaigns(self, campaigns: Mapping[str, str] | Sequence[Mapping[str, Any]] | str
                       | Path | None) -> None:
        """Replace the campaign memberships with those of a batch run.

        ``campaigns`` is the path of a batch ``campaigns.json``, its parsed list (or
        ``DetectResult.campaigns``), or a bare mapping account_id → campaign_id. With the
        campaign scores of campaigns.json a member's score becomes
        max(own score, campaign score) whenever its own raw score is >= ``lift_min_raw``: the
        batch lift (the batch already required the member's link degree). A gateway calls
        this after each batch run.
        """
        self.campaigns, self.campaign_scores, self._campaign_sizes = {}, {}, {}
        if campaigns is None:
            return
        where = str(campaigns) if isinstance(campaigns, str | Path) else "campaigns"
        try:
            if isinstance(campaigns, str | Path):
                campaigns = orjson.loads(Path(campaigns).read_bytes())
                if not isinstance(campaigns, list):
                    raise TypeError(f"a JSON {type(campaigns).__name__}, not a list")
            if isinstance(campaigns, Mapping):
                self.campaigns = {str(a): str(c) for a, c in campaigns.items()}
                return
            for c in campaigns:
                cid = str(c["campaign_id"])
                self.campaign_scores[cid] = float(c["score"])
                self._campaign_sizes[cid] = len(c["accounts"])
                for a in c["accounts"]:
                    self.campaigns[str(a)] = cid
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.campaigns, self.campaign_scores, self._campaign_sizes = {}, {}, {}
            raise RespondError(f"{where}: not a batch campaigns.json (a list of "
                               f"{{campaign_id, score, accounts}}): {exc}") from exc

    # ------------------------------------------------------------------ signals
    def _scan(self, prompt: str, system: str) -> str:
        p = prompt or ""
        if len(p) > self._head + self._tail:
            p = p[:self._head] + " " + p[-self._tail:]
        return p + " " + (system or "")[:self._sys]

    def signals(self, prompt: str, system: str = "", n_tools: int = 0, *,
                elicit: bool = False) -> Any:
        """(flags that fire, capability) for one prompt, exactly as the batch rules define.

        With ``elicit=True``: (flags, capability, elicit_p), ``elicit_p`` being the learned
        model's probability over the same scan text, the value of the batch
        ``signals.elicit_p`` column.
        """
        scan = self._scan(prompt, system)
        if elicit:
            return (*self.signals(prompt, system, n_tools),
                    float(self._elicit.predict_proba([scan])[0]))
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
        flags, cap, elicit_p = self.signals(req.prompt, req.system, req.n_tools, elicit=True)
        elicit_m = elicit_p >= self._elicit_thr
        t0, models = self.state.globals(req.model, req.ts)
        new_models = {m: fs for m, fs in models.items() if fs >= t0 + self._new_age_s}
        in_window = any(fs <= req.ts < fs + self._pivot_s for fs in new_models.values())
        on_new = req.model in new_models and req.ts < new_models[req.model] + self._pivot_s
        hour = datetime.fromtimestamp(req.ts, UTC).hour
        incr = {"n": 1, f"h{hour:02d}": 1}
        for name in flags:
            incr[name] = 1
        if elicit_m:
            incr["elicit_model"] = 1
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
        if req.signup_channel is not None and req.signup_channel.lower() in _SUBSIDISED:
            incr["subs_n"] = 1                    # batch: max over the account's requests
        sets: dict[str, float] = {"first_ts": req.ts}
        if req.account_created is not None:
            sets["created"] = req.account_created
        ph = _h(req.prompt or "")
        upd = AccountUpdate(incr, sets, ph, self._template_keys(req.prompt), req.ts)
        acct = req.account_id
        st = self.state.update(acct, upd)
        # account_created: the batch reads the latest value (max); "created" is write-once, so
        # a later, larger value is added as a difference (rare: attributes seldom change).
        if req.account_created is not None and req.account_created > st.get("created", math.inf):
            self.state.add_float(acct, "created", req.account_created - st["created"])
            st["created"] = req.account_created
        if flags:
            # n_elicit = distinct prompts with any elicitation flag: the flagged prompts'
            # hashes go to a side set; its size is cached in the account hash ("ne") so
            # unflagged requests read it for free (set, as a difference, to the side count).
            side = self.state.update(acct + _ELICIT, AccountUpdate({"n": 1}, {}, ph, (), req.ts))
            d = float(side["distinct"]) - float(st.get("ne", 0.0))
            if d:
                self.state.add_float(acct, "ne", d)
                st["ne"] = float(side["distinct"])
        if elicit_m:                 # n_elicit_model: the same, for the learned signal
            side = self.state.update(acct + _ELICIT_MODEL,
                                     AccountUpdate({"n": 1}, {}, ph, (), req.ts))
            d = float(side["distinct"]) - float(st.get("nem", 0.0))
            if d:
                self.state.add_float(acct, "nem", d)
                st["nem"] = float(side["distinct"])
        out = self._score(acct, st, flags, cap)
        out.elicit_p = elicit_p
        return out

    def observe_response(self, account_id: str, input_tokens: int | None,
                         output_tokens: int | None, ts: float | None = None) -> None:
        """Feed token usage after a response (long-output and short-answer evidence).

        As in batch, a response without ``output_tokens`` is not counted and a missing
        ``input_tokens`` counts as 1. The median output/input ratio comes from a histogram of
        log-ratios (bins of ``_RATIO_BIN``) kept beside the account; the median (``oir``),
        the response count (``lr_n``) and the output-token sum are in the account hash.
        ``ts`` (default: now) is the response time, for idle expiry.
        """
        if output_tokens is None:
            return
        ts = now_s() if ts is None else ts
        ratio = output_tokens / max(input_tokens if input_tokens is not None else 1, 1)
        key = "z" if ratio <= 0 else f"b{math.floor(math.log(ratio) / _RATIO_BIN)}"
        hist = self.state.update(account_id + _RATIOS, AccountUpdate({key: 1}, ts=ts))
        st = self.state.update(account_id, AccountUpdate(
            {"lr_n": 1, "out_sum": int(output_tokens)}, ts=ts))
        d = _hist_median(hist) - float(st.get("oir", 0.0))
        if d:
            self.state.add_float(account_id, "oir", d)

    def features(self, st: Mapping[str, float]) -> dict[str, float]:
        """Online equivalents of the batch features the evidence items read."""
        n = max(float(st.get("n", 0)), 1.0)
        hours = [float(st.get(f"h{h:02d}", 0)) for h in range(24)]
        ent = -sum((c / n) * math.log(c / n) for c in hours if c > 0) / math.log(24)
        tpl = float(st.get("tpl_top", 0))
        first = st.get("first_ts")
        created = st.get("created")
        # date_diff('day', created, first request): calendar days (UTC) apart, not 24 h units
        age = 365 if created is None or first is None else \
            math.floor(first / 86400) - math.floor(created / 86400)
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
            "account_age_days": age,
            "nonstandard_signup": 1.0 if st.get("subs_n") else 0.0,
            # Batch: NULL without token counts, and the evidence contributes nothing; 0 does
            # the same here (below the ramp).
            "out_in_ratio": float(st.get("oir", 0.0)) if lr_n else 0.0,
            "high_effort_share": st.get("high_effort", 0) / n,
            "tools_share": st.get("tools", 0) / n,
            "n_elicit": float(st.get("ne", 0.0)),
            "elicit_model_rate": st.get("elicit_model", 0) / n,
            "n_elicit_model": float(st.get("nem", 0.0)),
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
        cid = self.campaigns.get(account_id)
        cs = self.campaign_scores.get(cid) if cid is not None else None
        if cs is not None and raw >= self._lift_min_raw and cs > score:
            score = cs                        # lifted by its batch campaign, as in batch
            reasons.append(f"member of campaign {cid} ({self._campaign_sizes[cid]} linked "
                           "accounts)")
        for _, it in top:
            feat = ALL_FEATURES.get(it["show"])
            val = f.get(it["show"])
            reasons.append(it["reason"].format(feat.fmt.format(val) if feat and val is not None
                                               else val))
        return OnlineScore(account_id, score, raw, int(n), flags, cap,
                           reasons[: self._max_reasons], ev)

    def account_score(self, account_id: str, ts: float | None = None) -> OnlineScore:
        """The account's score from its current counters, without recording a request.

        What a deployment compares with batch: the score after all traffic so far (with
        the loaded campaigns). ``ts`` (default: now) is the time of the reading; the state
        store treats it as activity (it refreshes the idle TTL; an account idle longer
        than the TTL before ``ts`` reads as new).
        """
        st = self.state.update(account_id, AccountUpdate(ts=now_s() if ts is None else ts))
        return self._score(account_id, st, (), "chat")


#: Side keys beside an account's state: flagged prompts (n_elicit), output/input histogram.
_ELICIT, _RATIOS = "\x1felicit", "\x1fratio"
_ELICIT_MODEL = "\x1femodel"
#: Width of a log(output/input) histogram bin: the median is within ~1% of the exact one.
_RATIO_BIN = 0.02


def _hist_median(hist: Mapping[str, float]) -> float:
    """Median (interpolated, like SQL ``median``) of the ratios binned in ``hist``.

    ``z`` counts zero ratios; ``b<k>`` those with log(ratio) in [k, k + 1) x _RATIO_BIN,
    taken as spread evenly over the bin (in log space).
    """
    bins = sorted((int(k[1:]), int(v)) for k, v in hist.items() if k[:1] == "b" and v)
    zeros = int(hist.get("z", 0))
    n = zeros + sum(c for _, c in bins)
    if n == 0:
        return 0.0

    def at(r: int) -> float:          # r-th smallest (0-based)
        if r < zeros:
            return 0.0
        r -= zeros
        for k, c in bins:
            if r < c:
                return math.exp(_RATIO_BIN * (k + (r + 0.5) / c))
            r -= c
        return math.exp(_RATIO_BIN * (bins[-1][0] + 1))   # not reached

    pos = (n - 1) / 2
    lo = math.floor(pos)
    v = at(lo)
    return v + (pos - lo) * (at(lo + 1) - v) if pos > lo else v


_ONLINE_FEATURES = ("n_requests", "cot_rate", "rubric_rate", "censor_rate", "single_turn_share",
                    "novelty", "hour_entropy", "focus_rate", "template_top_share", "pivot_share",
                    "account_age_days", "nonstandard_signup", "out_in_ratio",
                    "high_effort_share", "tools_share", "pivot_window_requests", "n_elicit",
                    "mean_output_tokens", "partner_hits", "partner_confidence",
                    "elicit_model_rate", "n_elicit_model")


def _h(s: str) -> str:
    return hashlib.blake2b(s.encode("utf-8", "replace"), digest_size=8).hexdigest()


# RE2 (DuckDB's regexp_matches, Spark's rlike) reads \w \d \s \b as ASCII classes; Python's
# ``re`` reads them as Unicode. Rewritten so both match the same text (``(?i)`` still folds
# Unicode case in both). Inside a character class only \w \d \s are rewritten.
_RE2_OUT = {"w": r"(?a:\w)", "W": r"(?a:\W)", "b": r"(?a:\b)", "B": r"(?a:\B)",
            "d": "[0-9]", "D": "[^0-9]", "s": r"[\t\n\f\r ]", "S": r"[^\t\n\f\r ]"}
_RE2_IN_CLASS = {"w": "0-9A-Za-z_", "d": "0-9", "s": r"\t\n\f\r "}


def re2_semantics(pattern: str) -> str:
    """``pattern`` rewritten so Python ``re`` matches what RE2 (the batch engines) matches."""
    out: list[str] = []
    i, n = 0, len(pattern)
    cls_first = -1          # inside [...]: index where a "]" is still a literal; -1: outside
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            table = _RE2_IN_CLASS if cls_first >= 0 else _RE2_OUT
            out.append(table.get(e, c + e))
            i += 2
            continue
        if cls_first >= 0:
            if c == "]" and i != cls_first:
                cls_first = -1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            cls_first = j
        out.append(c)
        i += 1
    return "".join(out)


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
    from distillguard.features.defs import OUTPUT_TOKENS_SQL

    reader = con.sql(f"""
        SELECT request_id, ts, account_id, model, prompt, system, n_user_turns, context_chars,
               n_tools, reasoning_effort, account_created, signup_channel, input_tokens,
               {OUTPUT_TOKENS_SQL} AS output_tokens
        FROM requests r ORDER BY ts, request_id""").to_arrow_reader(batch_rows)
    for batch in reader:
        yield from batch.to_pylist()


def replay(logs: list[str | Path] | str | Path, out_dir: str | Path, *,
           policy: Policy | None = None, scorer: OnlineScorer | None = None,
           config: Config | None = None,
           campaigns: Sequence[Mapping[str, Any]] | str | Path | None = None) -> dict[str, Any]:
    """Score logs as if they arrived live; write ``alerts.jsonl`` and ``online_accounts.csv``.

    Each ``alerts.jsonl`` line is ``{ts, account_id, campaign_id, score, action, reasons}``
    for a request at which the account's policy action *escalated* (so the first line per
    account is its time-to-detection, and the file stays small). Suspensions are sticky, as
    in the gateway. ``online_accounts.csv`` holds each account's end-of-stream online score
    (after its last request and response), flag, campaign and peak score: the figures to
    compare with the batch ``accounts.csv`` of the same traffic.

    ``campaigns``: a batch ``campaigns.json`` (path or list) loaded into the scorer first, as
    a gateway loads the latest batch run's campaigns.

    Returns a summary: requests, accounts, alerts, accounts per final action, accounts
    flagged at the end (``flagged``), and ``transient`` accounts whose score crossed the
    threshold during the stream but ended below it.
    """
    from distillguard.ingest import ingest_files
    from distillguard.respond.policy import ACTIONS, load_policy
    from distillguard.store import connect

    cfg = config or (scorer.cfg if scorer else load_config())
    policy = policy or load_policy()
    scorer = scorer or OnlineScorer(config=cfg)
    if campaigns is not None:
        scorer.load_campaigns(campaigns)
    paths = [logs] if isinstance(logs, str | Path) else list(logs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = connect(None)
    level: dict[str, int] = {}
    final: dict[str, str] = {}
    last_ts: dict[str, float] = {}
    peak: dict[str, float] = {}
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
                scorer.observe_response(acct, row["input_tokens"], row["output_tokens"], ts)
                last_ts[acct] = ts
                if s.score > peak.get(acct, -1.0):
                    peak[acct] = s.score
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
    n_flagged = n_transient = 0
    with (out / "online_accounts.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["account_id", "score", "flagged", "campaign_id", "raw", "n_requests",
                    "peak_score", "reasons"])
        for acct in sorted(last_ts):
            e = scorer.account_score(acct, last_ts[acct])
            flagged = e.score >= scorer.threshold
            n_flagged += flagged
            n_transient += (not flagged) and peak[acct] >= scorer.threshold
            w.writerow([acct, f"{e.score:.6f}", "true" if flagged else "false",
                        scorer.campaigns.get(acct, ""), f"{e.raw:.6f}", e.n_requests,
                        f"{max(peak[acct], e.score):.6f}", "; ".join(e.reasons)])
    by_action: dict[str, int] = {}
    for a in final.values():
        by_action[a] = by_action.get(a, 0) + 1
    return {"requests": n_req, "accounts": len(final), "alerts": n_alerts,
            "final_actions": by_action, "flagged": n_flagged, "transient": n_transient,
            "campaigns_loaded": len(scorer.campaign_scores),
            "policy_version": policy.version, "skipped_evidence": scorer.skipped}


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
