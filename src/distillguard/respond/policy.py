"""Graduated-action policy: score bands and request signals → visible actions.

The policy is versioned YAML (``data/policy.yaml``), validated when loaded. Every rule whose
``when`` holds contributes its action; the caller sees the combined result:

* at most one *blocking* action, the most severe: ``suspend`` > ``require_verification`` >
  ``throttle`` (throttle only blocks when the account is over its rate);
* any number of *output* actions: ``strip_reasoning`` and ``cap_output`` (smallest cap wins);
* ``log`` marks the decision for review; ``allow`` is the default.

Actions are never silent: blocking actions return documented error codes (see
:data:`ERROR_CODES`), output actions are announced in ``X-Distillguard-Action`` headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distillguard.respond._errors import PolicyError

__all__ = [
    "ACTIONS", "ERROR_CODES", "Policy", "PolicyDecision", "PolicyInput", "Rule", "load_policy",
    "policy_test",
]

#: Actions in increasing severity; the order defines which action is "primary".
ACTIONS = ("allow", "log", "cap_output", "strip_reasoning", "throttle", "require_verification",
           "suspend")
BLOCKING = ("throttle", "require_verification", "suspend")
OUTPUT = ("cap_output", "strip_reasoning")
SIGNALS = ("cot_elicit", "rubric_grading", "censorship_safe")

#: Documented caller-visible outcomes: action → (HTTP status, error code).
ERROR_CODES: dict[str, tuple[int, str]] = {
    "throttle": (429, "distillguard_rate_limited"),
    "require_verification": (403, "distillguard_verification_required"),
    "suspend": (403, "distillguard_account_suspended"),
    "directive": (403, "distillguard_access_denied"),
    "directive_error": (403, "distillguard_access_denied"),
    "state_unavailable": (503, "distillguard_unavailable"),
}

_WHEN_KEYS = {"score_min", "score_max", "min_requests", "signals_any", "campaign"}
_PARAM_KEYS = {"throttle": {"rpm", "retry_after_s"}, "cap_output": {"max_tokens"},
               "require_verification": {"verify_url"}, "suspend": set(), "log": set(),
               "allow": set(), "strip_reasoning": set()}


@dataclass(frozen=True)
class Rule:
    """One validated rule: conditions (all must hold) → action with params."""

    id: str
    action: str
    when: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def matches(self, x: PolicyInput) -> bool:
        w = self.when
        if "score_min" in w and not x.score >= w["score_min"]:
            return False
        if "score_max" in w and not x.score < w["score_max"]:
            return False
        if "min_requests" in w and x.n_requests < w["min_requests"]:
            return False
        if "signals_any" in w and not set(w["signals_any"]) & set(x.signals):
            return False
        return not ("campaign" in w and bool(x.campaign_id) != w["campaign"])

    def sql(self) -> str:
        """The same conditions as SQL over ``_pt`` (used by :func:`policy_test`)."""
        w, parts = self.when, []
        if "score_min" in w:
            parts.append(f"score >= {float(w['score_min'])}")
        if "score_max" in w:
            parts.append(f"score < {float(w['score_max'])}")
        if "min_requests" in w:
            parts.append(f"n_req >= {int(w['min_requests'])}")
        if "signals_any" in w:
            parts.append("(" + " OR ".join(w["signals_any"]) + ")")
        if "campaign" in w:
            parts.append("campaign_id IS " + ("NOT NULL" if w["campaign"] else "NULL"))
        return " AND ".join(parts) or "true"


@dataclass(frozen=True)
class PolicyInput:
    """What a decision is made on: the account's online score and this request's signals."""

    score: float
    n_requests: int = 0
    signals: tuple[str, ...] = ()
    campaign_id: str | None = None


@dataclass(frozen=True)
class PolicyDecision:
    """Combined outcome of all matching rules."""

    action: str                                   # primary (most severe) action
    rules: tuple[str, ...] = ()                   # ids of every matching rule
    blocking: str | None = None                   # throttle / require_verification / suspend
    blocking_rule: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)   # of the blocking action
    strip_reasoning: bool = False
    max_tokens: int | None = None
    actions: tuple[str, ...] = ()                 # every distinct action, by severity

    @property
    def output_actions(self) -> tuple[str, ...]:
        return tuple(a for a in self.actions if a in OUTPUT)


@dataclass(frozen=True)
class Policy:
    """A validated, versioned policy."""

    version: str
    rules: tuple[Rule, ...]
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "policy") -> Policy:
        if not isinstance(doc, Mapping):
            raise PolicyError(f"{source}: a policy must be a mapping")
        version = doc.get("version")
        if not isinstance(version, str | int | float) or not str(version).strip():
            raise PolicyError(f"{source}: version is required (it is stamped on every decision)")
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, Mapping) or set(defaults) - set(_PARAM_KEYS):
            raise PolicyError(f"{source}: defaults must map actions to params")
        raw_rules = doc.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise PolicyError(f"{source}: rules must be a non-empty list")
        rules, seen = [], set()
        for i, r in enumerate(raw_rules):
            where = f"{source}: rules[{i}]"
            if not isinstance(r, Mapping):
                raise PolicyError(f"{where} must be a mapping")
            rid = r.get("id")
            if not isinstance(rid, str) or not rid or rid in seen:
                raise PolicyError(f"{where}: id must be a unique non-empty string")
            seen.add(rid)
            where = f"{source}: rule {rid}"
            extra = set(r) - {"id", "action", "when", "params", "description"}
            if extra:
                raise PolicyError(f"{where}: unknown fields {sorted(extra)}")
            action = r.get("action")
            if action not in ACTIONS:
                raise PolicyError(f"{where}: action must be one of {ACTIONS}, got {action!r}")
            when = dict(r.get("when") or {})
            bad = set(when) - _WHEN_KEYS
            if bad:
                raise PolicyError(f"{where}: unknown conditions {sorted(bad)}; "
                                  f"known: {sorted(_WHEN_KEYS)}")
            for k in ("score_min", "score_max"):
                if k in when and not (isinstance(when[k], int | float) and 0 <= when[k] <= 1):
                    raise PolicyError(f"{where}: {k} must be a number in [0, 1]")
            if "min_requests" in when and not (isinstance(when["min_requests"], int)
                                               and when["min_requests"] >= 0):
                raise PolicyError(f"{where}: min_requests must be a non-negative integer")
            if "signals_any" in when:
                sig = when["signals_any"]
                if not isinstance(sig, list) or not sig or set(sig) - set(SIGNALS):
                    raise PolicyError(f"{where}: signals_any must list some of {SIGNALS}")
            if "campaign" in when and not isinstance(when["campaign"], bool):
                raise PolicyError(f"{where}: campaign must be true or false")
            params = {**(defaults.get(action) or {}), **(r.get("params") or {})}
            if set(params) - _PARAM_KEYS[action]:
                raise PolicyError(f"{where}: unknown params {sorted(set(params) - _PARAM_KEYS[action])}"
                                  f" for {action}")
            for k in ("rpm", "retry_after_s", "max_tokens"):
                if k in params and not (isinstance(params[k], int) and params[k] >= 0):
                    raise PolicyError(f"{where}: params.{k} must be a non-negative integer")
            if action == "cap_output" and "max_tokens" not in params:
                raise PolicyError(f"{where}: cap_output needs params.max_tokens")
            if action == "throttle" and "rpm" not in params:
                raise PolicyError(f"{where}: throttle needs params.rpm (0 = refuse all)")
            rules.append(Rule(rid, action, when, params, str(r.get("description") or "")))
        return cls(str(version), tuple(rules), defaults)

    def decide(self, x: PolicyInput) -> PolicyDecision:
        """Apply every matching rule; see the module docstring for how actions combine."""
        hits = [r for r in self.rules if r.matches(x)]
        if not hits:
            return PolicyDecision("allow", actions=("allow",))
        sev = ACTIONS.index
        actions = tuple(sorted({r.action for r in hits}, key=sev))
        blocking = [r for r in hits if r.action in BLOCKING]
        top = max(blocking, key=lambda r: sev(r.action)) if blocking else None
        caps = [int(r.params["max_tokens"]) for r in hits if r.action == "cap_output"]
        return PolicyDecision(
            action=actions[-1], rules=tuple(r.id for r in hits),
            blocking=top.action if top else None, blocking_rule=top.id if top else None,
            params=dict(top.params) if top else {},
            strip_reasoning=any(r.action == "strip_reasoning" for r in hits),
            max_tokens=min(caps) if caps else None, actions=actions)


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file; ``None`` loads the packaged ``data/policy.yaml``."""
    try:
        if path is None:
            text = resources.files("distillguard").joinpath("data/policy.yaml").read_text("utf-8")
            src = "data/policy.yaml"
        else:
            text, src = Path(path).read_text("utf-8"), str(path)
        doc = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from exc
    return Policy.from_dict(doc, src)


def policy_test(policy: Policy, con: Any, labels: Any = None) -> dict[str, Any]:
    """Replay stored history under ``policy`` using the batch ``scores`` table.

    For each rule: how many requests and accounts it would hit, and the distribution of each
    account's primary (most severe) action; split by label when ``labels`` is given (a path to
    a CSV with account_id,label, a polars/pyarrow table, or the name of a table in ``con``).
    Request signals come from the ``signals`` table when present, else from the signal regexes
    run over ``requests.prompt``. The batch score is the account's end-of-history score, so this
    is an upper bound on what the online scorer (which learns as traffic arrives) would hit.
    """
    from distillguard.store import table_exists

    if not table_exists(con, "scores"):
        raise PolicyError("the store has no scores table: run `distillguard detect` first")
    if table_exists(con, "signals"):
        sig = "JOIN signals g USING (request_id)"
        sig_cols = "g.cot_elicit, g.rubric_grading, g.censorship_safe"
    else:
        from distillguard.config import load_config
        from distillguard.signals.rules import load_rules, sql_literal

        flags, _ = load_rules(load_config())
        sig = ""
        sig_cols = ", ".join(
            f"regexp_matches(coalesce(r.prompt, '') || ' ' || coalesce(r.system, ''), "
            f"{sql_literal(f.pattern)}) AS {f.name}" for f in flags)
    lab_join, lab_col = "", "'all' AS label"
    if labels is not None:
        if isinstance(labels, str | Path) and Path(labels).exists():
            con.execute("CREATE OR REPLACE TEMP TABLE _pt_labels AS "
                        "SELECT account_id::VARCHAR AS account_id, label::VARCHAR AS label "
                        "FROM read_csv_auto(?)", [str(labels)])
        elif isinstance(labels, str):
            con.execute(f"CREATE OR REPLACE TEMP TABLE _pt_labels AS "
                        f"SELECT account_id, label FROM {labels}")
        else:
            con.register("_pt_labels_src", labels)
            con.execute("CREATE OR REPLACE TEMP TABLE _pt_labels AS "
                        "SELECT account_id, label FROM _pt_labels_src")
            con.unregister("_pt_labels_src")
        lab_join = "LEFT JOIN _pt_labels l USING (account_id)"
        lab_col = "coalesce(l.label, 'unlabelled') AS label"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _pt AS
        SELECT r.request_id, r.account_id, s.score, s.campaign_id,
               count(*) OVER (PARTITION BY r.account_id) AS n_req, {sig_cols}, {lab_col}
        FROM requests r JOIN scores s USING (account_id) {sig} {lab_join}""")
    out_rules = []
    for r in policy.rules:
        rows = con.execute(f"""
            SELECT label, count(*), count(DISTINCT account_id) FROM _pt
            WHERE {r.sql()} GROUP BY label ORDER BY label""").fetchall()
        out_rules.append({
            "id": r.id, "action": r.action, "requests": sum(int(x[1]) for x in rows),
            "accounts": sum(int(x[2]) for x in rows),
            "by_label": {x[0]: {"requests": int(x[1]), "accounts": int(x[2])} for x in rows}})
    # Primary action per account on its end-of-history state (signals: any request had them).
    accts = con.execute("""
        SELECT account_id, any_value(score), any_value(campaign_id), count(*),
               bool_or(cot_elicit), bool_or(rubric_grading), bool_or(censorship_safe),
               any_value(label)
        FROM _pt GROUP BY account_id""").fetchall()
    primary: dict[str, dict[str, int]] = {}
    for a in accts:
        sigs = tuple(n for n, on in zip(SIGNALS, a[4:7], strict=True) if on)
        d = policy.decide(PolicyInput(float(a[1]), int(a[3]), sigs, a[2]))
        primary.setdefault(d.action, {}).setdefault(a[7], 0)
        primary[d.action][a[7]] += 1
    totals = con.execute("SELECT label, count(*), count(DISTINCT account_id) FROM _pt "
                         "GROUP BY label ORDER BY label").fetchall()
    return {"policy_version": policy.version, "rules": out_rules,
            "primary_action_accounts": primary,
            "totals": {t[0]: {"requests": int(t[1]), "accounts": int(t[2])} for t in totals}}
