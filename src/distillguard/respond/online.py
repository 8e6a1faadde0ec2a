"""Online scorer: the batch evidence model, updated one request at a time.

Per request the scorer runs the prompt-signal rules of ``data/signals.yaml`` with RE2 (the
engine DuckDB's ``regexp_matches`` and Spark's ``rlike`` use, so online and batch flag the
same prompts: one ``re2.Set`` pass over the scan text), the learned elicitation model
(``signals(..., elicit=True)``), updates the account's counters, distinct sets and the
cross-account sets in a state store, then evaluates the *same* ``scoring.evidence`` items of
``data/config.yaml`` (compiled into one Python function, SQL NULL semantics) with the same
damping (``min_requests``). With the latest batch run loaded (:meth:`OnlineScorer.load_groups`:
``groups.parquet`` and ``calibration.json`` of ``distillguard detect``, or the batch store)
the group items read the account's link community and the score uses that run's calibration.
At the end of the same traffic the online score of every account equals the batch score up
to the approximations below (``tests/test_online_batch.py``).

Each feature online against its batch SQL (``features/defs.py``):

=======================  ================================================================
n_requests, single_turn  counters / requests: same definition (capability and effort
_share, followup_share,  exactly as the batch rules)
tools_share, focus_rate,
high_effort_share
novelty                  distinct prompt hashes / requests: exact set (MemoryState) or
                         Redis HyperLogLog (standard error 0.81 %)
rerun_share              1 - distinct (prompt hash, n_user_turns, context_chars) /
                         requests: distinct set ``rerun`` (HyperLogLog in Redis)
cot_rate, rubric_rate,   distinct flagged prompts / distinct prompts: one distinct set of
censor_rate,             prompt hashes per flag (``cot_elicit``, ``rubric_grading``,
elicit_model_rate        ``censorship_safe``, ``emodel`` for ``elicit_p`` >=
                         ``signals.elicit_model_threshold``); same value as batch
elicit_soft_rate         as elicit_model_rate, set ``esoft`` for ``elicit_p`` >=
                         ``signals.elicit_soft_threshold``; same value as batch
n_elicit, n_elicit_model distinct prompts with any rule flag (set ``elicit``) / with the
                         learned flag (set ``emodel``)
sys_elicit_rate          distinct learned-flag prompts whose user part alone scores below
                         the threshold (``signals.elicit_user``; set ``emsys``): same
n_system_prompts         distinct system-prompt keys (set ``sysk``): same
hour_entropy             hour-of-day (UTC) histogram: same
pivot_share,             same windows (union of new models' first 24 h); "new" = first seen
pivot_window_requests    >= 24 h after ``t0``: batch ``t0`` = earliest logged request, online
                         = first request the state store saw (equal on a replay)
account_age_days         calendar days (UTC) from the latest ``account_created`` to the first
                         request, like ``date_diff('day', ...)``; unknown: 365
created_day              latest ``account_created`` / 86400 (NULL when never logged)
nonstandard_signup       any request with a subsidised channel: same
out_in_ratio             median of output / max(input, 1) over responses with output
                         tokens, from a histogram of log-ratios in 2 % bins beside the
                         account (``<account>\\x1fratio``): within ~1 % of the exact median;
                         NULL before the first response, as in batch
mean_output_tokens       mean over responses with output tokens (NULL before): same
n_prefixes               distinct network prefixes (``features.defs.ip_prefix_sql`` ported
                         exactly: IPv4 /24, IPv6 /48, else the address): set ``pfx``
card_accounts,           cross-account sets keyed by payment fingerprint / system-prompt
system_accounts          key (``SYSTEM_KEY_SQL``: md5 of the first 2,000 characters,
                         lower-cased, whitespace collapsed) holding the accounts seen with
                         it; the account keeps its own keys and reads the largest set among
                         them on every update: equal to batch at the end of the stream
                         (HyperLogLog in Redis)
shared_ip_share,         APPROXIMATE (causal): per request, the number of accounts seen with
ip_accounts_median       its address *so far* (cross-account set keyed by address); batch
                         counts every account of the window, including later ones, so online
                         is lower for requests sent before other accounts used the address.
                         The median's histogram is kept only when an evidence item reads it
template_top_share       APPROXIMATE: the account's most sent first-six-word or
                         last-six-word key of the batch's ``prompt_ends`` (the batch's exact
                         bands), counted once the account itself sent it
                         ``min_template_size`` times. Batch gives each request one template,
                         the largest bucket over all accounts among 16 MinHash LSH bands and
                         those two keys: needs every account's traffic to the end of the
                         window. Online is lower for an account sending a shared template
                         fewer than 5 times, and when paraphrases group only under MinHash.
g_* group columns,       from the latest batch run loaded with :meth:`load_groups` (the
g_attach, g_ties,        account's community row of ``_score_in``); an account not in it gets
g_coord_own              NULL group columns, ``g_attach``, ``g_ties`` and ``g_coord_own`` 0 and
                         ``g_size`` 1, so its group
                         evidence is 0, as in batch for an account in no community
partner_hits,            0: partner indicators are matched in batch only, so the ``partner``
partner_confidence       evidence never contributes online
active_days,             kept only when an evidence item reads them (None otherwise):
req_per_active_hour,     distinct UTC days / hours (sets ``day``, ``hr``), distinct
n_ips, n_api_keys,       addresses / API keys (sets ``ip``, ``key``), per-capability
capability_top_share     counters: same as batch
gap_cv, median_gap_s     not online (no evidence item reads them)
=======================  ================================================================

Expressions: ``+ - * /``, unary minus, ``coalesce``, ``least`` / ``greatest`` (NULLs
skipped, as in DuckDB and Spark), ``ln``, ``log`` (base 10), ``exp``, ``sqrt``, ``abs``,
``power``, ``nullif``. A NULL operand makes the result NULL, a NULL ramp contributes 0 (the
batch ``coalesce(ramp, 0)``); division by zero gives +-inf / NaN like DuckDB's double division.

Other differences: the online window is "since the account became active until idle for the
state TTL" (default 7 days), the batch window is the logs given; group evidence and the
calibration are those of the loaded batch run (``replay(refresh_hours=H)`` re-runs the batch
pipeline every H hours of stream time, as a deployment re-running detection on a schedule
would). With RedisState, distinct counts are HyperLogLog estimates (0.81 %), and concurrent
requests of one account in several workers can leave the cached median off until that
account's next response.

A score read mid-stream reflects the traffic so far: an account may cross the threshold for a
while and end below it (transient alerts); ``replay`` counts these separately.
"""

from __future__ import annotations

import ast
import bisect
import csv
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from xxhash import xxh3_64_hexdigest as _xxh
from xxhash import xxh3_64_intdigest as _xxh64

from distillguard.config import Config, load_config
from distillguard.respond._errors import RespondError
from distillguard.respond.policy import ACTIONS, Policy, PolicyDecision, PolicyInput
from distillguard.respond.state import AccountUpdate, MemoryState, StateStore, now_s
from distillguard.scoring import calibrator_from_config
from distillguard.scoring.calibrate import Calibrator
from distillguard.scoring.evidence import REASON_MIN, item_weight, reasons_for

__all__ = ["OnlineScore", "OnlineScorer", "RequestView", "compile_evidence", "ip_prefix",
           "replay", "system_key", "write_batch_context"]

_FOCUS = frozenset(("coding", "math", "agentic", "reasoning"))
_HIGH_EFFORT = frozenset(("high", "xhigh", "max"))
_SUBSIDISED = frozenset(("education", "startup", "research", "trial", "free_credits"))
_URL = re.compile(r"https?://\S+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_DIGITS = re.compile(r"\d+")
_HOURS = tuple(f"h{h:02d}" for h in range(24))
_LOG24 = math.log(24)
#: What a batch results folder holds for the online scorer (``write_batch_context``).
GROUPS_FILE, CALIBRATION_FILE = "groups.parquet", "calibration.json"


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
    ip: str | None = None                  # client address (n_prefixes, shared addresses)
    payment_fingerprint: str | None = None  # card_accounts
    api_key_id: str | None = None          # n_api_keys


@dataclass
class OnlineScore:
    """Score of the account after this request, plus this request's signals.

    ``raw`` is the account's own evidence, ``final_raw`` adds its group's (the calibrated
    ``score`` is of ``final_raw``), as the batch ``raw`` / ``final_raw`` columns.
    ``reasons`` are built on first read (the hot path does not need them).
    """

    account_id: str
    score: float
    raw: float
    n_requests: int
    signals: tuple[str, ...]
    capability: str
    evidence: dict[str, float] = field(default_factory=dict)
    elicit_p: float = 0.0               # this request's learned elicitation probability
    final_raw: float = 0.0
    _reasons: list[str] | None = field(default=None, repr=False)
    _why: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False)

    @property
    def reasons(self) -> list[str]:
        if self._reasons is None:
            self._reasons = self._why() if self._why is not None else []
        return self._reasons

    @reasons.setter
    def reasons(self, value: list[str]) -> None:
        self._reasons = list(value)


# ---------------------------------------------------------------- evidence compiler

#: Feature → Python expression over the state hash ``st`` (``n``: requests, ``nd``:
#: distinct prompts) and the loaded group row ``g``. None is SQL NULL.
FEATURE_SRC: dict[str, str] = {
    "n_requests": "n",
    "novelty": "min(nd / n, 1.0)",
    "rerun_share": "max(1.0 - st.get('d:rerun', n) / n, 0.0)",
    "single_turn_share": "st.get('single', 0) / n",
    "followup_share": "st.get('fu', 0) / n",
    "tools_share": "st.get('tools', 0) / n",
    "cot_rate": "st.get('d:cot_elicit', 0) / nd",
    "rubric_rate": "st.get('d:rubric_grading', 0) / nd",
    "censor_rate": "st.get('d:censorship_safe', 0) / nd",
    "elicit_model_rate": "st.get('d:emodel', 0) / nd",
    "n_elicit": "float(st.get('d:elicit', 0))",
    "elicit_soft_rate": "st.get('d:esoft', 0) / nd",
    "n_elicit_model": "float(st.get('d:emodel', 0))",
    "sys_elicit_rate": "st.get('d:emsys', 0) / nd",
    "n_system_prompts": "float(st.get('d:sysk', 0))",
    "focus_rate": "st.get('focus', 0) / n",
    "high_effort_share": "st.get('high_effort', 0) / n",
    "hour_entropy": "_entropy(st, n)",     # from the running sum of c ln c (``hcl``)
    "template_top_share": "(st.get('tpl_top', 0) / n) if st.get('tpl_top', 0) >= MIN_TPL "
                          "else 0.0",
    "pivot_share": "(st.get('pnew', 0) / st['pin']) if st.get('pin') else 0.0",
    "pivot_window_requests": "float(st.get('pin', 0))",
    "account_age_days": "_age(st)",
    "created_day": "(st['created'] / 86400.0) if 'created' in st else None",
    "nonstandard_signup": "1.0 if st.get('subs_n') else 0.0",
    "out_in_ratio": "float(st.get('oir', 0.0)) if st.get('lr_n') else None",
    "mean_output_tokens": "(st.get('out_sum', 0.0) / st['lr_n']) if st.get('lr_n') else None",
    "n_prefixes": "float(st.get('d:pfx', 0))",
    "shared_ip_share": "st.get('xs:ip', 0) / n",
    "ip_accounts_median": "_ipmed(st)",
    "card_accounts": "float(st.get('xm:card', 0))",
    "system_accounts": "float(st.get('xm:sys', 0))",
    "partner_hits": "0.0",
    "partner_confidence": "0.0",
    # Kept only when an evidence item reads them (each costs a distinct set or counters per
    # request): None otherwise.
    "active_days": "float(st.get('d:day', 0))",
    "req_per_active_hour": "n / (st.get('d:hr', 0) or 1.0)",
    "n_ips": "float(st.get('d:ip', 0))",
    "n_api_keys": "float(st.get('d:key', 0))",
    "capability_top_share": "max([st.get(k, 0) for k in CAP_KEYS]) / n",
}
#: Features kept only when an evidence item reads them (see FEATURE_SRC).
_OPTIONAL = frozenset(("active_days", "req_per_active_hour", "n_ips", "n_api_keys",
                       "capability_top_share", "ip_accounts_median"))
#: Online features that may be NULL (as in batch).
_NULLABLE = frozenset(("created_day", "out_in_ratio", "mean_output_tokens"))
_FUNCS = frozenset(("coalesce", "least", "greatest", "ln", "log", "exp", "sqrt", "abs",
                    "power", "pow", "nullif"))


#: Per-account columns of the group context (how the account is tied into its community):
#: 0 for an account in no community, never NULL.
_ACCOUNT_G = ("g_attach", "g_ties", "g_coord_own")


def _is_group(name: str) -> bool:
    return name.startswith("g_")


def _group_src(name: str) -> str:
    if name in _ACCOUNT_G:
        return f"((g.get({name!r}) or 0.0) if g is not None else 0.0)"
    if name == "g_size":
        return "((g.get('g_size') or 1.0) if g is not None else 1.0)"
    return f"(g.get({name!r}) if g is not None else None)"


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b == 0:
        return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * (
            math.copysign(1.0, b))
    return a / b


def _ln(x: float | None) -> float | None:
    if x is None:
        return None
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def _log10(x: float | None) -> float | None:
    v = _ln(x)
    return None if v is None else v / math.log(10)


def _sqrt(x: float | None) -> float | None:
    return None if x is None else (math.sqrt(x) if x >= 0 else math.nan)


def _exp(x: float | None) -> float | None:
    return None if x is None else math.exp(x)


def _abs(x: float | None) -> float | None:
    return None if x is None else abs(x)


def _pow(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) ** b


def _coalesce(*xs: float | None) -> float | None:
    for x in xs:
        if x is not None:
            return x
    return None


def _least(*xs: float | None) -> float | None:
    vs = [x for x in xs if x is not None]
    return min(vs) if vs else None


def _greatest(*xs: float | None) -> float | None:
    vs = [x for x in xs if x is not None]
    return max(vs) if vs else None


def _nullif(a: float | None, b: float | None) -> float | None:
    return None if a is None or (b is not None and a == b) else a


def _nop(op: str) -> Callable[[float | None, float | None], float | None]:
    f = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__}[op]

    def g(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else f(float(a), b)
    return g


_HELPERS: dict[str, Any] = {
    "_div": _div, "_ln": _ln, "_log10": _log10, "_sqrt": _sqrt, "_exp": _exp, "_abs": _abs,
    "_pow": _pow, "_coalesce": _coalesce, "_least": _least, "_greatest": _greatest,
    "_nullif": _nullif, "_add": _nop("+"), "_sub": _nop("-"), "_mul": _nop("*"),
}
_CALL = {"ln": "_ln", "log": "_log10", "exp": "_exp", "sqrt": "_sqrt", "abs": "_abs",
         "power": "_pow", "pow": "_pow", "nullif": "_nullif", "coalesce": "_coalesce",
         "least": "_least", "greatest": "_greatest"}


def _expr_names(expr: str) -> set[str]:
    tree = ast.parse(expr, mode="eval")
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - _FUNCS


def _to_py(node: ast.AST, nullable: Callable[[str], bool], expr: str) -> tuple[str, bool]:
    """(Python source, may be None) of an evidence SQL expression node."""
    if isinstance(node, ast.Expression):
        return _to_py(node.body, nullable, expr)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        return repr(float(node.value)), False
    if isinstance(node, ast.Name):
        return node.id, nullable(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        s, nl = _to_py(node.operand, nullable, expr)
        if isinstance(node.op, ast.UAdd):
            return s, nl
        return (f"_mul(-1.0, {s})" if nl else f"(-{s})"), nl
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult
                                                  | ast.Div):
        a, na = _to_py(node.left, nullable, expr)
        b, nb = _to_py(node.right, nullable, expr)
        if isinstance(node.op, ast.Div):
            const = isinstance(node.right, ast.Constant) and float(node.right.value) != 0
            if const and not na:
                return f"({a} / {b})", False
            return f"_div({a}, {b})", True
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}[type(node.op)]
        if na or nb:
            return f"{ {'+': '_add', '-': '_sub', '*': '_mul'}[op]}({a}, {b})", True
        return f"({a} {op} {b})", False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id.lower() in _FUNCS and not node.keywords:
        fn = node.func.id.lower()
        args = [_to_py(a, nullable, expr) for a in node.args]
        srcs = ", ".join(s for s, _ in args)
        any_null = any(nl for _, nl in args)
        if fn in ("least", "greatest") and not any_null and len(args) >= 2:
            return f"{'min' if fn == 'least' else 'max'}({srcs})", False
        if fn == "coalesce":
            return f"_coalesce({srcs})", all(nl for _, nl in args)
        if fn in ("least", "greatest"):
            return f"{_CALL[fn]}({srcs})", all(nl for _, nl in args)
        if fn == "abs" and not any_null:
            return f"abs({srcs})", False
        return f"{_CALL[fn]}({srcs})", any_null or fn == "nullif"
    raise ValueError(f"construct {ast.dump(node)[:60]} not allowed in evidence expr {expr!r}")


@dataclass(frozen=True)
class CompiledEvidence:
    """The evidence items as one function ``fn(st, g) -> (contributions, raw, final_raw)``."""

    fn: Callable[[Mapping[str, float], Mapping[str, Any] | None],
                 tuple[tuple[float, ...], float, float]]
    items: tuple[dict[str, Any], ...]
    source: str
    features: frozenset[str]


def compile_evidence(items: Sequence[Mapping[str, Any]], weights: Sequence[float],
                     min_requests: float, min_template_size: int,
                     helpers: Mapping[str, Any] | None = None) -> CompiledEvidence:
    # ``helpers``: extra names for the generated code (``CAP_KEYS``: the capability
    # counters of capability_top_share)
    """Compile evidence items into one Python function (source kept in ``.source``).

    Each item contributes ``w * ramp(expr, lo, hi) * damp`` where ``damp`` is
    ``least(n_requests / min_requests, 1)``, for ``group: true`` items
    ``least(coalesce(g_requests, 0) / min_requests, 1)`` and for items with a ``support``
    ``least(support / min_support, 1)``, exactly as
    :func:`distillguard.scoring.evidence.evidence_frame`.
    """
    needed: set[str] = set()
    parts: list[tuple[str, dict[str, Any], float, float, float]] = []

    def nullable(name: str) -> bool:
        if _is_group(name):
            return name not in (*_ACCOUNT_G, "g_size")
        if name not in FEATURE_SRC:
            raise KeyError(name)
        return name in _NULLABLE

    supports: list[str | None] = []
    for it, w in zip(items, weights, strict=True):
        expr = str(it["expr"])
        src, nl = _to_py(ast.parse(expr, mode="eval"), nullable, expr)
        needed |= _expr_names(expr)
        parts.append((src, dict(it), float(it["lo"]), float(it["hi"]), float(w), nl))
        sup = it.get("support")
        if sup:
            sup_src, _ = _to_py(ast.parse(str(sup), mode="eval"), nullable, str(sup))
            needed |= _expr_names(str(sup))
            supports.append(sup_src)
        else:
            supports.append(None)
    lines = ["def _evidence(st, g):",
             "    get = st.get",
             "    n = float(st.get('n', 0)) or 1.0",
             "    nd = float(st.get('distinct', 0)) or 1.0",
             f"    damp = min(n / {float(min_requests)!r}, 1.0)",
             "    gdamp = min(float(g.get('g_requests') or 0.0) / "
             f"{float(min_requests)!r}, 1.0) if g is not None else 0.0"]
    gnames = sorted(x for x in needed if _is_group(x))
    if gnames:          # the group row's columns; without one: NULL, g_attach 0, g_size 1
        lines.append("    if g is None:")
        lines += [f"        {x} = {0.0 if x in _ACCOUNT_G else 1.0 if x == 'g_size' else None}"
                  for x in gnames]
        lines.append("    else:")
        lines += [f"        {x} = {_group_src(x)}" for x in gnames]
    for name in sorted(needed - set(gnames)):
        lines.append(f"    {name} = {FEATURE_SRC[name].replace('st.get(', 'get(')}")
    own, grp = [], []
    for i, (src, it, lo, hi, w, nl) in enumerate(parts):
        d = "gdamp" if it.get("group") else "damp"
        if supports[i] is not None:     # damped by its own support (evidence.damping_sql)
            d = f"sd{i}"
            lines += ["    try:", f"        sv = {supports[i]}",
                      "    except (ArithmeticError, ValueError, TypeError):", "        sv = None",
                      f"    sd{i} = 0.0 if sv is None or sv != sv else "
                      f"min(max(sv / {float(it['min_support'])!r}, 0.0), 1.0)"]
        pad = "    "
        if it.get("group"):        # no group row: damped by 0 group requests, as in batch
            lines += ["    if g is None:", f"        e{i} = 0.0", "    else:"]
            pad = "        "
        ramp = [f"r = (v - {lo!r}) / {hi - lo!r}",
                f"e{i} = {w!r} * (0.0 if r <= 0.0 else 1.0 if (r >= 1.0 or r != r) "
                f"else r) * {d}"]
        if nl:          # may be NULL: a NULL ramp contributes 0 (batch coalesce(ramp, 0))
            body = ["try:", f"    v = {src}",
                    "except (ArithmeticError, ValueError, TypeError):", "    v = None",
                    "if v is None:", f"    e{i} = 0.0", "else:", *["    " + x for x in ramp]]
        else:
            body = ["try:", f"    v = {src}", *["    " + x for x in ramp],
                    "except (ArithmeticError, ValueError, TypeError):", f"    e{i} = 0.0"]
        lines += [pad + ln for ln in body]
        (grp if it.get("group") else own).append(f"e{i}")
    contrib = ", ".join(f"e{i}" for i in range(len(parts)))
    raw = " + ".join(own) or "0.0"
    lines.append(f"    raw = {raw}")
    lines.append(f"    return ({contrib}{',' if len(parts) == 1 else ''}), raw, "
                 f"raw + {' + '.join(grp) or '0.0'}")
    source = "\n".join(lines) + "\n"
    ns: dict[str, Any] = {**_HELPERS, **_FEATURE_HELPERS, "MIN_TPL": int(min_template_size),
                          "CAP_KEYS": (),
                          **(helpers or {})}
    exec(compile(source, "<evidence>", "exec"), ns)  # noqa: S102 - generated from an AST whitelist
    return CompiledEvidence(ns["_evidence"], tuple(p[1] for p in parts), source,
                            frozenset(needed))


def _entropy(st: Mapping[str, float], n: float) -> float:
    """Hour-of-day entropy / ln 24: (ln n - sum_h c_h ln c_h / n) / ln 24, the sum kept
    running in ``hcl`` (each request adds c ln c - (c - 1) ln (c - 1) for its hour)."""
    return (math.log(n) - st.get("hcl", 0.0) / n) / _LOG24 if n > 0 else 0.0


def _age(st: Mapping[str, float]) -> float:
    first, created = st.get("first_ts"), st.get("created")
    if created is None or first is None:
        return 365.0
    # date_diff('day', created, first request): calendar days (UTC) apart, not 24 h units
    return float(math.floor(first / 86400) - math.floor(created / 86400))


def _ipmed(st: Mapping[str, Any]) -> float | None:
    """Median accounts per address over the account's requests (``ip_accounts_median``),
    from the histogram the store keeps when an item reads it (``x:ip``)."""
    hist = st.get("\x1fh:x:ip")
    if not hist:
        return 0.0
    vals = sorted((int(k[1:]), int(c)) for k, c in hist.items() if k[:1] == "c" and c)
    tot = sum(c for _, c in vals)
    if not tot:
        return 0.0

    def at(r: int) -> int:
        for v, c in vals:
            if r < c:
                return v
            r -= c
        return vals[-1][0]

    pos = (tot - 1) / 2
    lo = math.floor(pos)
    a = at(lo)
    return float(a + (pos - lo) * (at(lo + 1) - a)) if pos > lo else float(a)


_FEATURE_HELPERS = {"_entropy": _entropy, "_age": _age, "_ipmed": _ipmed}


# ------------------------------------------------------------------ request keys

_IP4 = re.compile(r"([0-9]+\.[0-9]+\.[0-9]+)\.[0-9]+")
_IP6 = re.compile(r"([0-9a-f]{1,4}:[0-9a-f]{1,4}:[0-9a-f]{1,4}):")
_WS = re.compile(r"[\t\n\f\r ]+")        # RE2's \s


def ip_prefix(ip: str | None, ip4_prefix: int = 24) -> str | None:
    """``features.defs.ip_prefix_sql`` in Python: IPv4 /24 (other lengths: the address +
    ``/32``), IPv6 /48, else the address itself; None for a missing address."""
    if ip is None:
        return None
    k = _PREFIXES.get((ip, ip4_prefix))
    if k is None:
        if len(_PREFIXES) > 100_000:
            _PREFIXES.clear()
        m = _IP4.fullmatch(ip)
        if m:
            k = m.group(1) + ".0/24" if ip4_prefix == 24 else ip + "/32"
        else:
            m = _IP6.match(ip.lower())
            k = m.group(1) + "::/48" if m else ip
        _PREFIXES[(ip, ip4_prefix)] = k
    return k


_PREFIXES: dict[tuple[str, int], str] = {}


def system_key(system: str | None) -> str | None:
    """``features.defs.SYSTEM_KEY_SQL``: md5 of the first 2,000 characters, lower-cased,
    whitespace runs collapsed; None for a missing or empty system prompt."""
    if not system:
        return None
    head = system[:2000]
    k = _SYS_KEYS.get(head)
    if k is None:
        if len(_SYS_KEYS) > 10_000:               # products repeat a few system prompts
            _SYS_KEYS.clear()
        k = _SYS_KEYS[head] = hashlib.md5(
            _WS.sub(" ", head.lower()).encode("utf-8", "replace"),
            usedforsecurity=False).hexdigest()
    return k


_SYS_KEYS: dict[str, str] = {}


def _h(s: str) -> str:
    """64-bit key of a text (prompt hashes, template keys): state-internal, not the batch
    md5; only equality matters."""
    return _xxh(s.encode("utf-8", "surrogatepass"))


class OnlineScorer:
    """Incremental per-account scorer.

    Parameters
    ----------
    state : StateStore, default MemoryState()
        Where counters live (``RedisState`` to share them across gateway workers).
    config : Config, optional
        Detection config (signal rules, evidence items, calibration); packaged default.
    calibrator : Calibrator, optional
        Defaults to the config's ``scoring.calibration`` params; replaced by the batch run's
        calibration when :meth:`load_groups` finds one.
    campaigns : campaigns.json path or list, or mapping account_id → campaign_id, optional
        The latest batch run's campaigns (see :meth:`load_campaigns`): membership in
        decisions, alerts and reasons.
    groups : results folder, batch store connection, or frame, optional
        The latest batch run's community context (see :meth:`load_groups`).
    """

    def __init__(self, state: StateStore | None = None, config: Config | None = None,
                 calibrator: Calibrator | None = None,
                 campaigns: Mapping[str, str] | Sequence[Mapping[str, Any]] | str | Path
                 | None = None, groups: Any = None) -> None:
        from distillguard.signals.rules import load_rules

        self.state = state if state is not None else MemoryState()
        self.cfg = config or load_config()
        self._given_calibrator = calibrator
        self.calibrator = calibrator or calibrator_from_config(self.cfg)
        self.calibration: dict[str, Any] | None = None      # the loaded batch calibration
        self.campaigns: dict[str, str] = {}
        self._campaign_sizes: dict[str, int] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.load_campaigns(campaigns)
        flags, caps = load_rules(self.cfg)
        self._flag_rules, self._cap_rules = flags, caps
        self._rx = _RuleSet([r.pattern for r in (*flags, *caps)], len(flags))
        self._flag_names = tuple(r.name for r in flags)
        self._cap_names = tuple(r.name for r in caps)
        sig = self.cfg["signals"]
        self._head, self._tail = int(sig["scan_head_chars"]), int(sig["scan_tail_chars"])
        self._sys = int(sig["scan_system_chars"])
        self._cut = int(sig["skeleton_chars"])
        from distillguard.signals.elicit_model import default_model

        self._elicit = default_model()
        self._elicit_thr = float(sig["elicit_model_threshold"])
        self._elicit_soft = float(sig["elicit_soft_threshold"])
        sc, fc = self.cfg["scoring"], self.cfg["features"]
        self._min_req = float(sc["min_requests"])
        self.threshold = float(sc["threshold"])
        # The online scorer reads every account after every request, so a legitimate
        # account whose evidence wanders crosses the threshold at *some* point far more
        # often than batch flags it at the end: it asks for this much more raw evidence.
        self.margin = float(sc.get("online_margin", 0.0))
        self._max_reasons = int(sc["max_reasons"])
        self._min_tpl = int(fc["min_template_size"])
        self._pivot_s = float(fc["pivot_window_hours"]) * 3600
        self._new_age_s = float(fc["new_model_min_age_hours"]) * 3600
        self._ip4 = int(self.cfg["linking"]["ip4_prefix"])
        items, self.skipped = [], []
        for it in sc["evidence"]:
            names = _expr_names(str(it["expr"])) | _expr_names(str(it.get("support") or "0"))
            if any(not _is_group(x) and x not in FEATURE_SRC for x in names):
                self.skipped.append(it["name"])   # needs a feature we cannot compute online
                continue
            items.append(it)
        self._cap_keys = tuple(f"cap:{c}" for c in (*self._cap_names, "chat"))
        self._ev = compile_evidence(items, [item_weight(self.cfg, it) for it in items],
                                    self._min_req, self._min_tpl,
                                    {"CAP_KEYS": self._cap_keys})
        self._items = self._ev.items
        need = self._ev.features
        self._track_iph = "ip_accounts_median" in need
        self._trk_day, self._trk_hr = "active_days" in need, "req_per_active_hour" in need
        self._trk_ip, self._trk_key = "n_ips" in need, "n_api_keys" in need
        self._trk_cap = "capability_top_share" in need
        self._untracked = {f for f in _OPTIONAL if f not in need}
        self._medians: dict[str, _MedianTracker] = {}
        self._medians_lock = threading.Lock()
        self._feat_fns = {name: eval(  # noqa: S307 - fixed table above
            compile(f"lambda st, n, nd: {src}", "<feature>", "eval"),
            {**_FEATURE_HELPERS, "MIN_TPL": self._min_tpl, "CAP_KEYS": self._cap_keys})
            for name, src in FEATURE_SRC.items()}
        if groups is not None:
            self.load_groups(groups)

    # ------------------------------------------------------------------ batch context
    def load_campaigns(self, campaigns: Mapping[str, str] | Sequence[Mapping[str, Any]] | str
                       | Path | None) -> None:
        """Replace the campaign memberships with those of a batch run.

        ``campaigns`` is the path of a batch ``campaigns.json``, its parsed list (or
        ``DetectResult.campaigns``), or a bare mapping account_id → campaign_id. Membership
        goes into policy decisions (``campaign`` condition), alerts and reasons; the score
        itself comes from the evidence (group items with :meth:`load_groups`), as in batch.
        """
        self.campaigns, self._campaign_sizes = {}, {}
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
                self._campaign_sizes[cid] = len(c["accounts"])
                for a in c["accounts"]:
                    self.campaigns[str(a)] = cid
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.campaigns, self._campaign_sizes = {}, {}
            raise RespondError(f"{where}: not a batch campaigns.json (a list of "
                               f"{{campaign_id, score, accounts}}): {exc}") from exc

    def load_groups(self, source: Any, *, calibration: bool = True) -> int:
        """Load the latest batch run's community context; returns the accounts loaded.

        ``source`` is a results folder of ``distillguard detect`` (``groups.parquet`` and
        ``calibration.json``, see :func:`write_batch_context`), the ``groups.parquet`` path
        itself, a batch store connection after :func:`distillguard.api.analyse`, or a frame
        with ``account_id``, the per-account columns ``g_attach``, ``g_ties`` and
        ``g_coord_own`` and the ``g_*`` columns. Accounts absent from it get no group
        evidence. With ``calibration`` the batch run's calibration
        (``calibration_used``) replaces the scorer's, unless a calibrator was given.
        """
        import polars as pl

        cal = None
        where = str(source) if isinstance(source, str | Path) else type(source).__name__
        try:
            if isinstance(source, str | Path):
                p = Path(source)
                folder = p if p.is_dir() else p.parent
                frame = pl.read_parquet(p / GROUPS_FILE if p.is_dir() else p)
                if (folder / CALIBRATION_FILE).is_file():
                    cal = json.loads((folder / CALIBRATION_FILE).read_text("utf-8"))
            elif isinstance(source, pl.DataFrame):
                frame = source
            else:
                frame, cal = batch_context(source, self.cfg)
        except (OSError, ValueError, json.JSONDecodeError, pl.exceptions.PolarsError) as exc:
            raise RespondError(f"{where}: no batch group context ({GROUPS_FILE}): {exc}") \
                from exc
        cols = [c for c in frame.columns if c.startswith("g_") or c == "community"]
        if "account_id" not in frame.columns or not set(_ACCOUNT_G) <= set(cols):
            # a context written before g_ties or g_coord_own existed would silently take all
            # coordination away from every member: ask for a fresh batch run instead
            raise RespondError(f"{where}: group context needs account_id, "
                               f"{', '.join(_ACCOUNT_G)} and g_* (re-run detect)")
        self.groups = {str(r.pop("account_id")): r
                       for r in frame.select("account_id", *cols).iter_rows(named=True)}
        if calibration and cal is not None:
            self.load_calibration(cal)
        return len(self.groups)

    def load_calibration(self, cal: Mapping[str, Any] | str | Path) -> None:
        """Use a batch run's calibration (``calibration_used`` / ``calibration.json``)."""
        if isinstance(cal, str | Path):
            cal = json.loads(Path(cal).read_text("utf-8"))
        self.calibration = dict(cal)
        if self._given_calibrator is None:
            fpr = float(cal.get("promised_fpr", self.cfg["scoring"]["target_fpr"]))
            self.calibrator = Calibrator.from_params(float(cal["raw_threshold"]),
                                                     float(cal["raw_scale"]), fpr)

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
                    self._elicit.proba_one(scan))
        return self._rx.signals(scan, n_tools > 0, self._flag_names, self._cap_names)

    def _template_keys(self, prompt: str) -> tuple[str, ...]:
        """First and last six words of the batch's skeleton text (``prompt_ends``: the
        prompt, or its first and last ``skeleton_chars`` around `` … ``), lower-cased, URLs,
        e-mails and numbers replaced as in ``signals.templates.skeleton_frame``."""
        p = prompt or ""
        cut = self._cut
        if len(p) > 2 * cut:
            p = p[:cut] + " … " + p[-cut:]
        first = p.split(None, 9)
        if len(first) < 10:
            # the substitutions may split a word (" <url> "): count after them
            words = _subst(" ".join(first).lower()).split()
            if len(words) < 10:
                return ()
            head, tail = words[:6], words[-6:]
        else:
            # The substitutions work inside whitespace-separated words (none of the patterns
            # matches whitespace) and never drop a word, so the first and last six words of
            # the result come from the first and last six input words.
            head = _subst(" ".join(first[:6]).lower()).split()[:6]
            tail = _subst(" ".join(p.rsplit(None, 6)[-6:]).lower()).split()[-6:]
        return ("h:" + _h(" ".join(head)), "t:" + _h(" ".join(tail)))

    # ------------------------------------------------------------------ update
    def observe(self, req: RequestView, *, elicit_p: float | None = None) -> OnlineScore:
        """Record one request and return the account's score including it.

        ``elicit_p``: the request's learned elicitation probability when already computed
        (replay scores a whole batch of scan texts at once with the same model,
        ``signals.elicit_model.scan_probs``); otherwise :meth:`signals` computes it.
        """
        if elicit_p is None:
            flags, cap, elicit_p = self.signals(req.prompt, req.system, req.n_tools,
                                                elicit=True)
        else:
            flags, cap = self.signals(req.prompt, req.system, req.n_tools)
        ts = req.ts
        t0, models = self.state.globals(req.model, ts)
        hour = _HOURS[int(ts // 3600) % 24]
        incr = {"n": 1, hour: 1}
        # new-model pivot windows: the union of new models' first pivot_window_hours
        new_after = t0 + self._new_age_s
        pivot = self._pivot_s
        in_window = on_new = False
        for m, fs in models.items():
            if fs >= new_after and fs <= ts < fs + pivot:
                in_window = True
                if m == req.model:
                    on_new = True
        if in_window:
            incr["pin"] = 1
            if on_new:
                incr["pnew"] = 1
        turns, ctx = req.n_user_turns, req.context_chars
        if turns <= 1 and ctx == 0:
            incr["single"] = 1
        if turns >= 2:
            incr["fu"] = 1
        if cap in _FOCUS:
            incr["focus"] = 1
        if req.reasoning_effort and req.reasoning_effort.lower() in _HIGH_EFFORT:
            incr["high_effort"] = 1
        if req.n_tools > 0:
            incr["tools"] = 1
        if req.signup_channel is not None and req.signup_channel.lower() in _SUBSIDISED:
            incr["subs_n"] = 1                    # batch: max over the account's requests
        ph = _h(req.prompt or "")
        distinct = {"rerun": f"{ph}|{turns}|{ctx}"}
        for name in flags:
            distinct[name] = ph
        if flags:
            distinct["elicit"] = ph
        sk = system_key(req.system)
        if elicit_p >= self._elicit_soft:
            distinct["esoft"] = ph
        if elicit_p >= self._elicit_thr:
            distinct["emodel"] = ph
            # signals.elicit_user: is the hit the system prompt's alone?
            if sk is not None and req.prompt and self._elicit.proba_one(
                    self._scan(req.prompt, "")) < self._elicit_thr:
                distinct["emsys"] = ph
        if self._trk_day:
            distinct["day"] = str(int(ts // 86400))
        if self._trk_hr:
            distinct["hr"] = str(int(ts // 3600))
        if self._trk_ip and req.ip is not None:
            distinct["ip"] = req.ip
        if self._trk_key and req.api_key_id is not None:
            distinct["key"] = req.api_key_id
        if self._trk_cap:
            incr["cap:" + cap] = 1
        cross: dict[str, str] = {}
        if req.ip:
            cross["ip"] = req.ip
        pfx = ip_prefix(req.ip, self._ip4)
        if pfx is not None:
            distinct["pfx"] = pfx
        if req.payment_fingerprint:
            cross["card"] = req.payment_fingerprint
        if sk is not None:
            cross["sys"] = sk
            distinct["sysk"] = sk
        upd = AccountUpdate(incr, {"first_ts": ts}, ph, self._template_keys(req.prompt), ts,
                            maxs={"created": req.account_created}
                            if req.account_created is not None else {},
                            distinct=distinct, cross=cross, cross_max=("card", "sys"),
                            cross_hist=("ip",) if self._track_iph else ())
        acct = req.account_id
        # hcl=hour: the hour entropy's running sum of c ln c over the hour counters gains
        # c ln c - (c - 1) ln (c - 1) for this request's hour, in the same update
        upd.hcl = hour
        st = self.state.update(acct, upd)
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
        ratio = output_tokens / max(input_tokens if input_tokens is not None else 1, 1)
        key = "z" if ratio <= 0 else f"b{math.floor(math.log(ratio) / _RATIO_BIN)}"
        defer = getattr(self.state, "defer_usage", None)
        # Redis: queued, the median computed there; sent ahead of the next command
        if defer is not None and defer(account_id, {"lr_n": 1, "out_sum": int(output_tokens)},
                                       ("ratio", key), _RATIO_BIN):
            return
        ts = now_s() if ts is None else ts
        st = self.state.update(account_id, AccountUpdate(
            {"lr_n": 1, "out_sum": int(output_tokens)}, _NO, "", (), ts, _NO, _NO, _NO, (),
            ("ratio", key)))
        hist = st["\x1fh:ratio"]
        with self._medians_lock:        # gateway workers' threads share the trackers
            tr = self._medians.get(account_id)
            # the histogram and lr_n change in the same atomic update: lr_n is its total
            if tr is None or not tr.add(hist, key, int(st["lr_n"])):
                if len(self._medians) > 200_000:      # bounded: rebuilt from the histogram
                    self._medians.clear()
                tr = self._medians[account_id] = _MedianTracker(hist)
            med = tr.median(hist)
        d = med - float(st.get("oir", 0.0))
        if d:
            self.state.add_float(account_id, "oir", d)
            st["oir"] = med

    def features(self, st: Mapping[str, float], account_id: str | None = None
                 ) -> dict[str, Any]:
        """Online equivalents of the batch features (None: SQL NULL), plus the loaded group
        columns of ``account_id`` when given."""
        n = float(st.get("n", 0)) or 1.0
        nd = float(st.get("distinct", 0)) or 1.0
        out = {name: None if name in self._untracked else fn(st, n, nd)
               for name, fn in self._feat_fns.items()}
        g = self.groups.get(account_id) if account_id is not None else None
        if g is not None:
            out.update(g)
        return out

    def _score(self, account_id: str, st: Mapping[str, float], flags: tuple[str, ...],
               cap: str) -> OnlineScore:
        g = self.groups.get(account_id)
        contrib, raw, final = self._ev.fn(st, g)
        score = _score1(self.calibrator, final - self.margin)
        n = int(st.get("n", 0))

        def why() -> list[str]:
            return self._reasons(account_id, st, g, contrib)

        return OnlineScore(account_id, score, raw, n, flags, cap,
                           _Evidence(self._items, contrib), final_raw=final, _why=why)

    def _reasons(self, account_id: str, st: Mapping[str, float], g: Mapping[str, Any] | None,
                 contrib: Sequence[float]) -> list[str]:
        """The batch reasons (``scoring.evidence.reasons_for``) of these contributions."""
        k = self._max_reasons
        # reasons_for names only contributions over REASON_MIN: without one (most requests)
        # the features it would format are not computed
        if any(v > REASON_MIN for v in contrib):
            ev = {f"ev_{it['name']}": v for it, v in zip(self._items, contrib, strict=True)}
            feat = self.features(st, account_id)
            rs = reasons_for(feat, ev, {"scoring": {"evidence": list(self._items)}}, k)
        else:
            rs = []
        cid = self.campaigns.get(account_id)
        if cid is not None:
            rs.insert(0, f"member of campaign {cid}")
        return rs[:k]

    def account_score(self, account_id: str, ts: float | None = None) -> OnlineScore:
        """The account's score from its current counters, without recording a request.

        What a deployment compares with batch: the score after all traffic so far (with
        the loaded group context). ``ts`` (default: now) is the time of the reading; the
        state store treats it as activity (it refreshes the idle TTL; an account idle
        longer than the TTL before ``ts`` reads as new). The largest card / system-prompt
        sets among the account's keys are re-read.
        """
        st = self.state.update(account_id, AccountUpdate(ts=now_s() if ts is None else ts,
                                                         cross_max=("card", "sys")))
        return self._score(account_id, st, (), "chat")


class _Evidence(Mapping[str, float]):
    """Item name → contribution, built lazily from the compiled function's tuple."""

    __slots__ = ("_items", "_v", "_d")

    def __init__(self, items: Sequence[Mapping[str, Any]], values: Sequence[float]) -> None:
        self._items, self._v, self._d = items, values, None

    def _dict(self) -> dict[str, float]:
        if self._d is None:
            self._d = {it["name"]: v for it, v in zip(self._items, self._v, strict=True)}
        return self._d

    def __getitem__(self, k: str) -> float:
        return self._dict()[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._v)

    def __eq__(self, other: object) -> bool:
        return self._dict() == (dict(other) if isinstance(other, Mapping) else other)

    def __repr__(self) -> str:
        return repr(self._dict())


class _RuleSet:
    """The signal rules as one RE2 set (the batch engines' regex semantics).

    One pass over the UTF-8 scan text gives every rule that matches anywhere; flags are
    the first ``n_flags`` patterns, capabilities the rest in priority order. ``max_mem`` is
    raised so the DFA never runs out of memory on long texts (RE2::Set reports no match
    then). Without ``google-re2`` the rules run one by one with Python ``re`` (patterns
    rewritten by :func:`re2_semantics`).
    """

    def __init__(self, patterns: Sequence[str], n_flags: int) -> None:
        self._n = n_flags
        try:
            import re2
        except ImportError:  # pragma: no cover - google-re2 is a dependency
            self._set = None
            self._re = [re.compile(re2_semantics(p)) for p in patterns]
            return
        opts = re2.Options()
        opts.case_sensitive = False
        opts.max_mem = 256 << 20
        self._set = re2.Set.SearchSet(opts)
        for p in patterns:
            self._set.Add(p)
        self._set.Compile()
        self._match = self._set._set.Match          # the C++ call, without the str wrapper

    def matches(self, scan: str) -> list[int]:
        if self._set is None:  # pragma: no cover
            return [i for i, rx in enumerate(self._re) if rx.search(scan)]
        return self._match(scan.encode("utf-8", "surrogatepass")) or []

    def signals(self, scan: str, has_tools: bool, flag_names: Sequence[str],
                cap_names: Sequence[str]) -> tuple[tuple[str, ...], str]:
        hits = self.matches(scan)
        n = self._n
        if not hits:
            return (), ("agentic" if has_tools and "agentic" in cap_names else "chat")
        hs = sorted(hits)
        flags = tuple(flag_names[i] for i in hs if i < n)
        caps = {i - n for i in hs if i >= n}
        for j, name in enumerate(cap_names):
            if j in caps or (has_tools and name == "agentic"):
                return flags, name
        return flags, "chat"


_SUBST_NEEDED = re.compile(r"[@:]|\d")


def _subst(text: str) -> str:
    if _SUBST_NEEDED.search(text) is None:     # no URL, e-mail or number to replace
        return text
    return _DIGITS.sub("0", _EMAIL.sub(" <email> ", _URL.sub(" <url> ", text)))


#: Width of a log(output/input) histogram bin: the median is within ~1% of the exact one.
_RATIO_BIN = 0.02
_NO: dict[str, Any] = {}      # an empty mapping for update fields (never written to)


def _hist_median(hist: Mapping[str, float],
                 bins: Sequence[tuple[int, str]] | None = None) -> float:
    """Median (interpolated, like SQL ``median``) of the ratios binned in ``hist``.

    ``z`` counts zero ratios; ``b<k>`` those with log(ratio) in [k, k + 1) x _RATIO_BIN,
    taken as spread evenly over the bin (in log space). ``bins``: the (k, key) pairs in
    order, when the caller keeps them.
    """
    if bins is None:
        bins = sorted((int(k[1:]), k) for k in hist if k[:1] == "b")
    zeros = int(hist.get("z", 0))
    n = int(sum(hist.values()))
    if n == 0:
        return 0.0
    pos = (n - 1) / 2
    lo = math.floor(pos)
    # the lo-th and (lo + 1)-th smallest (0-based), in one walk over the bins
    want = (lo, lo + 1) if pos > lo else (lo,)
    got: list[float] = []
    seen = zeros
    for r in want:
        if r < zeros:
            got.append(0.0)
    if len(got) < len(want):
        for k, key in bins:
            c = int(hist[key])
            while len(got) < len(want) and want[len(got)] < seen + c:
                r = want[len(got)] - seen
                got.append(math.exp(_RATIO_BIN * (k + (r + 0.5) / c)))
            if len(got) == len(want):
                break
            seen += c
    v = got[0]
    return v + (pos - lo) * (got[1] - v) if len(got) > 1 else v


class _MedianTracker:
    """Where the median of a ratio histogram lies, moved as values arrive (O(log bins) per
    response instead of a sort and a walk). ``z`` (zero ratios) is the first bin.

    :meth:`add` returns False when the histogram changed by more than the one value (e.g.
    another gateway worker's response): the caller rebuilds the tracker from it.
    """

    __slots__ = ("bins", "idx", "before", "n")

    def __init__(self, hist: Mapping[str, float]) -> None:
        self.bins = sorted((-(1 << 62), k) if k == "z" else (int(k[1:]), k) for k in hist)
        self.n = int(sum(hist.values()))
        self.idx, self.before = 0, 0
        self._settle(hist)

    def _settle(self, hist: Mapping[str, float]) -> None:
        lo = (self.n - 1) // 2
        bins, i, before = self.bins, self.idx, self.before
        while i > 0 and before > lo:
            i -= 1
            before -= hist[bins[i][1]]
        last = len(bins) - 1
        while i < last:
            c = hist[bins[i][1]]
            if before + c > lo:
                break
            before += c
            i += 1
        self.idx, self.before = i, before

    def add(self, hist: Mapping[str, float], key: str, total: int) -> bool:
        """Account for one more value in bin ``key``; ``total``: the histogram's count."""
        if total != self.n + 1:
            return False
        item = (-(1 << 62), key) if key == "z" else (int(key[1:]), key)
        p = bisect.bisect_left(self.bins, item)
        if p == len(self.bins) or self.bins[p] != item:
            if int(hist[key]) != 1:
                return False
            self.bins.insert(p, item)
            if p <= self.idx and self.n:
                self.idx += 1
                self.before += 1
        elif p < self.idx:
            self.before += 1
        self.n += 1
        self._settle(hist)
        return True

    def median(self, hist: Mapping[str, float]) -> float:
        if self.n == 0:
            return 0.0
        pos = (self.n - 1) / 2
        lo = math.floor(pos)
        k, key = self.bins[self.idx]
        c = int(hist[key])
        r = lo - self.before

        def val(k: int, r: int, c: int) -> float:
            return 0.0 if k < -(1 << 61) else math.exp(_RATIO_BIN * (k + (r + 0.5) / c))

        v = val(k, r, c)
        if pos == lo:
            return v
        if r + 1 < c:
            v2 = val(k, r + 1, c)
        else:
            k2, key2 = self.bins[self.idx + 1]
            v2 = val(k2, 0, int(hist[key2]))
        return v + (pos - lo) * (v2 - v)


# RE2 (DuckDB's regexp_matches, Spark's rlike) reads \w \d \s \b as ASCII classes; Python's
# ``re`` reads them as Unicode. Rewritten so both match the same text (``(?i)`` still folds
# Unicode case in both). Inside a character class only \w \d \s are rewritten. Used where
# Python ``re`` must stand in for RE2 (elicitation training, no google-re2).
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


def _score1(cal: Calibrator, raw: float) -> float:
    """``Calibrator.transform`` of one value, without numpy."""
    z = (raw - cal.raw_threshold_) / cal.raw_scale_
    z = -50.0 if z < -50.0 else 50.0 if z > 50.0 else z
    return 1.0 / (1.0 + math.exp(-z))


# ------------------------------------------------------------------ batch context

def batch_context(con: Any, cfg: Config) -> tuple[Any, dict[str, Any] | None]:
    """(group frame, calibration) of the last batch run on a store connection.

    The frame has, per account in a link community (``community >= 0``), its community,
    ``g_attach`` and every ``g_*`` column of the ``groups`` table: the ``_score_in``
    relation :func:`distillguard.scoring.score_accounts` scored (recomputed with
    ``scoring_input_sql`` and ``cfg`` when that temporary table is gone). The calibration is
    ``calibration_used(con)`` (None before any scoring run).
    """
    from distillguard.scoring import calibration_used
    from distillguard.scoring.evidence import scoring_input_sql
    from distillguard.store import table_exists

    rel = "_score_in" if table_exists(con, "_score_in") else f"({scoring_input_sql(cfg)})"
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()]
    keep = ["account_id", "community", "g_attach",
            *[c for c in cols if c.startswith("g_") and c != "g_attach"]]
    frame = con.sql(f"SELECT {', '.join(keep)} FROM {rel} WHERE community >= 0 "
                    "ORDER BY account_id").pl()
    cal = calibration_used(con) if table_exists(con, "calibration") else None
    if cal is not None:     # NaN (not estimated) as null: strict JSON
        cal = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in cal.items()}
    return frame, cal


def write_batch_context(con: Any, out_dir: str | Path, cfg: Config) -> None:
    """``groups.parquet`` and ``calibration.json`` of the last batch run into ``out_dir``:
    what :meth:`OnlineScorer.load_groups` reads (``distillguard detect`` writes them)."""
    from distillguard.outfiles import replacing

    out = Path(out_dir)
    frame, cal = batch_context(con, cfg)
    with replacing(out / GROUPS_FILE) as tmp:
        frame.write_parquet(tmp)
    if cal is not None:
        with replacing(out / CALIBRATION_FILE) as tmp:
            tmp.write_text(json.dumps(cal, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------- replay

def _epoch(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    return float(v)


_ROW_SQL = """
    SELECT request_id, epoch(ts) AS t, account_id, model, prompt, system, n_user_turns,
           context_chars, n_tools, reasoning_effort, epoch(account_created) AS created,
           signup_channel, ip, payment_fingerprint, api_key_id, input_tokens,
           {output_tokens} AS output_tokens{scan}
    FROM requests r ORDER BY ts, request_id"""


def iter_store_rows(con: Any, batch_rows: int = 50_000, *, cfg: Config | None = None,
                    elicit: bool = False) -> Iterator[dict[str, Any]]:
    """Stored requests in time order, streamed in Arrow record batches (bounded memory).

    ``ts`` and ``account_created`` come as epoch seconds (``t``, ``created``). With
    ``elicit`` each row also has ``elicit_p``: the learned model's probability of its scan
    text, scored a batch at a time (``scan_probs``, the batch engines' call: same values as
    one text at a time).
    """
    from distillguard.features.defs import OUTPUT_TOKENS_SQL
    from distillguard.signals.sql import scan_text_sql

    scan = f", {scan_text_sql(cfg or load_config())} AS scan" if elicit else ""
    reader = con.sql(_ROW_SQL.format(output_tokens=OUTPUT_TOKENS_SQL, scan=scan)
                     ).to_arrow_reader(batch_rows)
    for batch in reader:
        if elicit:
            from distillguard.signals.elicit_model import scan_probs

            probs = scan_probs(batch.column("scan")).tolist()
            rows = batch.drop_columns(["scan"]).to_pylist()
            for r, p in zip(rows, probs, strict=True):
                r["elicit_p"] = p
            yield from rows
        else:
            yield from batch.to_pylist()


def _iter_views(con: Any, cfg: Config, batch_rows: int = 50_000
                ) -> Iterator[tuple[RequestView, Any, Any, float, str]]:
    """(RequestView, input_tokens, output_tokens, elicit_p, request_id) per stored request
    in time order: :func:`iter_store_rows` read column-wise (no per-row dict). ``elicit_p`` is
    scored once per distinct scan text of the whole replay (a text's value does not depend
    on the batch it is scored in), a batch of new texts at a time."""
    from distillguard.features.defs import OUTPUT_TOKENS_SQL
    from distillguard.signals.elicit_model import scan_probs
    from distillguard.signals.sql import scan_text_sql

    sql = _ROW_SQL.format(output_tokens=OUTPUT_TOKENS_SQL,
                          scan=f", {scan_text_sql(cfg)} AS scan")
    names = ("account_id", "model", "t", "prompt", "system", "n_user_turns", "context_chars",
             "n_tools", "reasoning_effort", "created", "signup_channel", "ip",
             "payment_fingerprint", "api_key_id")
    seen: dict[int, float] = {}          # xxh3 of a scan text → its elicit_p
    for batch in con.sql(sql).to_arrow_reader(batch_rows):
        keys = [_xxh64(t.encode("utf-8", "surrogatepass"))
                for t in batch.column("scan").to_pylist()]
        new: dict[int, int] = {}
        for i, k in enumerate(keys):
            if k not in seen and k not in new:
                new[k] = i
        if new:
            if len(seen) > 2_000_000:
                seen.clear()
            texts = batch.column("scan").take(list(new.values()))
            seen.update(zip(new, scan_probs(texts).tolist(), strict=True))
        probs = [seen[k] for k in keys]
        c = {n: batch.column(n).to_pylist()
             for n in (*names, "input_tokens", "output_tokens", "request_id")}
        for i in range(3, 8):           # prompt, system, turns, context, tools: NULL → "" / 0
            col, dflt = c[names[i]], "" if i < 5 else 0
            c[names[i]] = [dflt if v is None else v for v in col]
        views = map(RequestView, *(c[n] for n in names))
        yield from zip(views, c["input_tokens"], c["output_tokens"], probs, c["request_id"],
                       strict=True)


class BatchRefresh:
    """The batch pipeline re-run on the requests replayed so far, as a deployment re-running
    detection on a schedule would.

    One store accumulates the replayed requests (each refresh appends those since the last
    one) and keeps per-request signals between runs (``signals.enable_incremental``: only
    new requests get rules, template keys and ``elicit_p``; template ids, features, links,
    groups and scores are recomputed over everything). After each run the scorer loads the
    run's groups, calibration and campaigns.
    """

    def __init__(self, source: Any, scorer: OnlineScorer, cfg: Config) -> None:
        from distillguard.signals import enable_incremental
        from distillguard.store import connect

        # its own cursor: the replay streams rows on the source connection meanwhile
        self.source, self.scorer, self.cfg = source.cursor(), scorer, cfg
        self.con = connect(None)
        enable_incremental(self.con)
        self.upto: float | None = None
        self.runs: list[dict[str, Any]] = []
        # elicit_p the replay already computed for the requests since the last run
        self.hint_ids: list[str] = []
        self.hint_p: list[float] = []

    def __call__(self, until: float) -> dict[str, Any]:
        """Append requests with ``ts < until`` (epoch s), run ``analyse``, load its context."""
        import time

        from distillguard.api import analyse

        t0 = time.perf_counter()
        lo = "" if self.upto is None else f"epoch(ts) >= {self.upto!r} AND "
        new = self.source.sql(f"SELECT * FROM requests WHERE {lo}epoch(ts) < {until!r}"
                              ).to_arrow_table()
        self.upto = until
        self.con.register("_dg_new", new)
        try:
            self.con.execute("INSERT INTO requests SELECT * FROM _dg_new")
        finally:
            self.con.unregister("_dg_new")
        if self.hint_ids:
            import pyarrow as pa

            self.con.register("_dg_hint", pa.table({"request_id": self.hint_ids,
                                                    "elicit_p": self.hint_p}))
            try:
                self.con.execute("CREATE OR REPLACE TABLE _signals_elicit_hint AS "
                                 "SELECT * FROM _dg_hint")
            finally:
                self.con.unregister("_dg_hint")
            self.hint_ids.clear()
            self.hint_p.clear()
        n = self.con.execute("SELECT count(*) FROM requests").fetchall()[0][0]
        timings: dict[str, float] = {}
        if n:
            _, campaigns = analyse(self.con, self.cfg, timings=timings)
            self.scorer.load_groups(self.con)
            self.scorer.load_campaigns(campaigns)
        run = {"until": datetime.fromtimestamp(until, UTC).isoformat().replace("+00:00", "Z"),
               "requests": int(n), "new_requests": new.num_rows,
               "communities": len({g.get("community") for g in self.scorer.groups.values()}),
               "seconds": round(time.perf_counter() - t0, 2),
               "stages": {k: round(v, 2) for k, v in timings.items() if "." not in k}}
        self.runs.append(run)
        return run

    def close(self) -> None:
        self.con.close()
        self.source.close()


def replay(logs: list[str | Path] | str | Path, out_dir: str | Path, *,
           policy: Policy | None = None, scorer: OnlineScorer | None = None,
           config: Config | None = None,
           campaigns: Sequence[Mapping[str, Any]] | str | Path | None = None,
           groups: Any = None, refresh_hours: float | None = None,
           excess_records: bool = False) -> dict[str, Any]:
    """Score logs as if they arrived live; write ``alerts.jsonl`` and ``online_accounts.csv``.

    Each ``alerts.jsonl`` line is ``{ts, account_id, campaign_id, score, action, reasons}``
    for a request at which the account's policy action *escalated* (so the first line per
    account is its time-to-detection, and the file stays small). Suspensions are sticky, as
    in the gateway. ``online_accounts.csv`` holds each account's end-of-stream online score
    (after its last request and response), flag, campaign, raw and final raw evidence and
    peak score: the figures to compare with the batch ``accounts.csv`` of the same traffic.

    ``campaigns`` (a batch ``campaigns.json``) and ``groups`` (a batch results folder, see
    :meth:`OnlineScorer.load_groups`) load a batch run's context first, as a gateway loads
    the latest batch run's. ``refresh_hours``: every that many hours of stream time (from
    the first request) the batch pipeline runs on the requests replayed so far and the
    scorer loads its groups, calibration and campaigns (:class:`BatchRefresh`); the
    summary's ``refresh`` lists each run and its cost.

    ``excess_records``: also write ``excess_records.parquet`` (account_id, ts, excess), one
    row each time an account's raw evidence over the threshold in use (before the online
    margin) reaches a new high. An account alerts at margin m at the first of its rows with
    excess >= m, so one replay without margin answers for every margin (the leave-one-out
    bench fits the margin on other worlds afterwards).

    Returns a summary: requests, accounts, alerts, accounts per final action, accounts
    flagged at the end (``flagged``), ``transient`` accounts whose score crossed the
    threshold during the stream but ended below it, and ``seconds``.
    """
    import time

    from distillguard.ingest import ingest_files
    from distillguard.respond.policy import ACTIONS, load_policy
    from distillguard.store import connect

    t_start = time.perf_counter()
    cfg = config or (scorer.cfg if scorer else load_config())
    policy = policy or load_policy()
    scorer = scorer or OnlineScorer(config=cfg)
    if campaigns is not None:
        scorer.load_campaigns(campaigns)
    if groups is not None:
        scorer.load_groups(groups)
    paths = [logs] if isinstance(logs, str | Path) else list(logs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = connect(None)
    level: dict[str, int] = {}
    final: dict[str, str] = {}
    last_ts: dict[str, float] = {}
    peak: dict[str, float] = {}
    # raw evidence over the flag threshold in use at the time, before the online margin:
    # what `distillguard fit` needs to choose the margin (see online_margin_for)
    excess: dict[str, float] = {}
    rec_acct: list[str] = []
    rec_ts: list[float] = []
    rec_ex: list[float] = []
    n_req = n_alerts = 0
    refresh = None
    step = float(refresh_hours) * 3600 if refresh_hours else None
    next_refresh: float | None = None
    thr = scorer.threshold
    logit_thr = math.log(thr / (1.0 - thr))
    sev_of = {a: i for i, a in enumerate(ACTIONS)}
    observe, observe_response = scorer.observe, scorer.observe_response
    try:
        ingest_files([Path(p) for p in paths], con, limits=cfg["ingest"])
        t_ingest = time.perf_counter() - t_start
        if step:
            refresh = BatchRefresh(con, scorer, cfg)
            hint_ids, hint_p = refresh.hint_ids, refresh.hint_p
        with (out / "alerts.jsonl").open("wb") as fh:
            for view, in_tok, out_tok, elicit_p, rid in _iter_views(con, cfg):
                acct, ts = view.account_id, view.ts
                if step:
                    if next_refresh is None:
                        next_refresh = ts + step
                    while ts >= next_refresh:
                        refresh(next_refresh)
                        next_refresh += step
                    hint_ids.append(rid)          # the refresh store reuses elicit_p
                    hint_p.append(elicit_p)
                n_req += 1
                s = observe(view, elicit_p=elicit_p)
                if out_tok is not None:
                    observe_response(acct, in_tok, out_tok, ts)
                last_ts[acct] = ts
                if s.score > peak.get(acct, -1.0):
                    peak[acct] = s.score
                cal = scorer.calibrator
                ex = s.final_raw - cal.raw_threshold_ - cal.raw_scale_ * logit_thr
                if ex > excess.get(acct, -math.inf):
                    excess[acct] = ex
                    if excess_records:
                        rec_acct.append(acct)
                        rec_ts.append(ts)
                        rec_ex.append(ex)
                d = decide(policy, scorer, s, acct, ts)
                final[acct] = d.action
                sev = sev_of[d.action]
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
        if refresh is not None:
            refresh.close()
    n_flagged = n_transient = 0
    with (out / "online_accounts.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["account_id", "score", "flagged", "campaign_id", "raw", "final_raw",
                    "n_requests", "peak_score", "peak_excess", "reasons"])
        for acct in sorted(last_ts):
            e = scorer.account_score(acct, last_ts[acct])
            cal = scorer.calibrator
            ex = max(excess[acct], e.final_raw - cal.raw_threshold_ - cal.raw_scale_ * logit_thr)
            flagged = e.score >= thr
            n_flagged += flagged
            n_transient += (not flagged) and peak[acct] >= thr
            w.writerow([acct, f"{e.score:.6f}", "true" if flagged else "false",
                        scorer.campaigns.get(acct, ""), f"{e.raw:.6f}", f"{e.final_raw:.6f}",
                        e.n_requests, f"{max(peak[acct], e.score):.6f}",
                        f"{ex:.6f}", "; ".join(e.reasons)])
    if excess_records:
        import polars as pl

        pl.DataFrame({"account_id": rec_acct, "ts": rec_ts, "excess": rec_ex},
                     schema={"account_id": pl.Utf8, "ts": pl.Float64, "excess": pl.Float64}
                     ).write_parquet(out / "excess_records.parquet")
    by_action: dict[str, int] = {}
    for a in final.values():
        by_action[a] = by_action.get(a, 0) + 1
    secs = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "requests": n_req, "accounts": len(final), "alerts": n_alerts,
        "final_actions": by_action, "flagged": n_flagged, "transient": n_transient,
        "campaigns_loaded": len(set(scorer.campaigns.values())),
        "group_accounts_loaded": len(scorer.groups),
        "calibration": scorer.calibration,
        "policy_version": policy.version, "skipped_evidence": scorer.skipped,
        "seconds": round(secs, 2),
        "requests_per_second": round(n_req / secs, 1) if secs > 0 else None}
    if refresh is not None:
        rs = refresh.runs
        summary["refresh"] = {"hours": refresh_hours, "runs": len(rs),
                              "seconds": round(sum(r["seconds"] for r in rs), 2),
                              "each": rs}
        summary["seconds_stream"] = round(secs - t_ingest - summary["refresh"]["seconds"], 2)
    return summary


def decide(policy: Policy, scorer: OnlineScorer, s: OnlineScore, account_id: str,
           ts: float) -> PolicyDecision:
    """Policy decision for a scored request, with sticky suspension and operator actions.

    The account's record in the state store (shared with the gateway and the console) is
    either a suspension (sticky until lifted) or an operator's standing action (``throttle``,
    ``require_verification``, ``strip_reasoning``, set from the console): the policy still
    decides, and the operator's action is added unless the policy already does as much.
    """
    rec = scorer.state.suspended(account_id)
    op = str(rec.get("action", "suspend")) if rec is not None else None
    if op == "suspend":
        rule = str(rec.get("rule", "suspended"))
        return PolicyDecision("suspend", (rule,), "suspend", rule, {}, actions=("suspend",))
    d = policy.decide(PolicyInput(s.score, s.n_requests, s.signals,
                                  scorer.campaigns.get(account_id)))
    if d.blocking == "suspend":
        if rec is not None:        # the policy's suspension replaces a standing lesser action
            scorer.state.unsuspend(account_id)
        scorer.state.suspend(account_id, {"rule": d.blocking_rule, "ts": ts,
                                          "score": round(s.score, 6),
                                          "policy_version": policy.version})
    elif rec is not None and op in OPERATOR_ACTIONS:
        d = with_operator_action(d, op, str(rec.get("rule", "operator")),
                                 rec.get("params") or {})
    return d


#: Standing actions an operator can put on an account besides suspension.
OPERATOR_ACTIONS = ("throttle", "require_verification", "strip_reasoning")


def with_operator_action(d: PolicyDecision, op: str, rule: str,
                         params: Mapping[str, Any]) -> PolicyDecision:
    """``d`` with an operator's standing action added (the more severe blocking one wins)."""
    sev = ACTIONS.index
    actions = tuple(sorted((set(d.actions) - {"allow"}) | {op}, key=sev))
    primary = max(d.action, op, key=sev)
    if op == "strip_reasoning":
        return replace(d, action=primary, rules=(*d.rules, rule), strip_reasoning=True,
                       actions=actions)
    if d.blocking is not None and sev(d.blocking) >= sev(op):
        return d
    return replace(d, action=primary, rules=(*d.rules, rule), blocking=op, blocking_rule=rule,
                   params=dict(params), actions=actions)
