"""Access directives as data, evaluated with Cedar.

A directive is a reviewable YAML document ("deny model family X to users of country Y from
date Z, under legal reference R"). Each directive compiles to one Cedar policy; the set is
validated against a fixed entity schema (``User``, ``Model``, action ``invoke``) when loaded,
then evaluated per request with ``cedarpy``.

Semantics (documented in docs/respond.md):

* ``effect: deny``  → ``forbid`` policy. Cedar's forbid-overrides-permit makes deny win on any
  conflict with an allow directive, whatever the order of files.
* ``effect: allow`` → ``permit`` policy *and* the listed models become allow-list-only: the base
  ``permit`` excludes every model named by any allow directive, so only users matched by an
  (in-force) allow directive may call them. An expired allow directive therefore closes access.
* Fail closed. Cedar *skips* a policy whose evaluation errors, so a broken ``forbid`` would let
  through the very users it should block. We (1) validate every policy against the schema at
  load time and (2) treat any evaluation error reported in Cedar's diagnostics, any exception
  and any ``NoDecision`` as **deny** (reason code ``directive_error``).
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import cedarpy
import yaml

from distillguard.respond._errors import DirectiveError

__all__ = [
    "CEDAR_SCHEMA", "Decision", "Directive", "DirectiveSet", "DryRunReport", "UserAttrs",
    "dry_run", "load_directives",
]

#: The entity schema every directive is validated against. Unknown attributes are "" / false,
#: never absent, so policies need no ``has`` guards (and cannot error on a missing attribute).
CEDAR_SCHEMA = """
entity User = {
  "country": String,
  "nationality": String,
  "org": String,
  "signup_channel": String,
  "employee": Bool,
};
entity Model = { "name": String };
action "invoke" appliesTo {
  principal: [User],
  resource: [Model],
  context: { "now": Long },
};
"""

_STRING_ATTRS = ("country", "nationality", "org", "signup_channel")
_UPPER = ("country", "nationality")       # ISO 3166 codes compare upper-case
_LOWER = ("signup_channel",)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_SAFE_TEXT = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_KEYS = {"id", "title", "description", "effect", "models", "users", "effective_from",
         "effective_until", "legal_reference", "condition", "status", "owner"}


@dataclass(frozen=True)
class UserAttrs:
    """The attributes directives can select users by; unknown values are "" / False."""

    country: str = ""
    nationality: str = ""
    org: str = ""
    signup_channel: str = ""
    employee: bool = False

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> UserAttrs:
        """Normalise (case, None → "") so the same user always maps to the same attributes."""
        def s(k: str) -> str:
            v = m.get(k)
            if v is None:
                return ""
            v = str(v).strip()
            return v.upper() if k in _UPPER else v.lower() if k in _LOWER else v
        emp = m.get("employee")
        if isinstance(emp, str):
            emp = emp.strip().lower() in ("1", "true", "yes", "y")
        return cls(s("country"), s("nationality"), s("org") or s("org_id"),
                   s("signup_channel"), bool(emp))

    def cedar_attrs(self) -> dict[str, Any]:
        return {"country": self.country, "nationality": self.nationality, "org": self.org,
                "signup_channel": self.signup_channel, "employee": self.employee}


@dataclass(frozen=True)
class Directive:
    """One access directive (validated). ``users`` maps attribute → accepted values."""

    id: str
    effect: str                         # "allow" | "deny"
    models: tuple[str, ...]             # glob patterns, "*" wildcard
    users: Mapping[str, Any]
    legal_reference: str
    effective_from: datetime | None = None
    effective_until: datetime | None = None
    title: str = ""
    condition: str | None = None        # optional raw Cedar expression (expert escape hatch)
    source: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> Directive:
        """Validate one YAML document; errors name the directive and the field."""
        where = f"{source or 'directive'}"
        if not isinstance(d, Mapping):
            raise DirectiveError(f"{where}: a directive must be a mapping")
        did = d.get("id")
        if not isinstance(did, str) or not _ID_RE.match(did):
            raise DirectiveError(f"{where}: id must match {_ID_RE.pattern}, got {did!r}")
        where = f"{where} [{did}]"
        unknown = set(d) - _KEYS
        if unknown:
            raise DirectiveError(f"{where}: unknown fields {sorted(unknown)}")
        effect = d.get("effect")
        if effect not in ("allow", "deny"):
            raise DirectiveError(f"{where}: effect must be allow or deny, got {effect!r}")
        models = d.get("models")
        if isinstance(models, str):
            models = [models]
        if not models or not all(isinstance(m, str) and _SAFE_TEXT.match(m) for m in models):
            raise DirectiveError(f"{where}: models must be a non-empty list of model names/globs")
        users = d.get("users") or {}
        if not isinstance(users, Mapping):
            raise DirectiveError(f"{where}: users must be a mapping of attribute -> values")
        norm: dict[str, Any] = {}
        for k, v in users.items():
            if k == "employee":
                if not isinstance(v, bool):
                    raise DirectiveError(f"{where}: users.employee must be true or false")
                norm[k] = v
            elif k in _STRING_ATTRS:
                vals = [v] if isinstance(v, str) else v
                if not isinstance(vals, list) or not vals or not all(
                        isinstance(x, str) and _SAFE_TEXT.match(x) for x in vals):
                    raise DirectiveError(f"{where}: users.{k} must be a non-empty list of strings")
                norm[k] = tuple(UserAttrs.from_mapping({k: x}).cedar_attrs()[k] for x in vals)
            else:
                raise DirectiveError(
                    f"{where}: users.{k} is not a known attribute "
                    f"({', '.join(_STRING_ATTRS + ('employee',))})")
        legal = d.get("legal_reference")
        if not isinstance(legal, str) or not legal.strip():
            raise DirectiveError(f"{where}: legal_reference is required (what mandates this)")
        t0 = _parse_time(d.get("effective_from"), where, "effective_from")
        t1 = _parse_time(d.get("effective_until"), where, "effective_until")
        if t0 and t1 and t1 <= t0:
            raise DirectiveError(f"{where}: effective_until is not after effective_from")
        cond = d.get("condition")
        if cond is not None and (not isinstance(cond, str) or not cond.strip()):
            raise DirectiveError(f"{where}: condition must be a Cedar expression string")
        return cls(did, effect, tuple(models), norm, legal.strip(), t0, t1,
                   str(d.get("title") or ""), cond, source)

    def model_expr(self) -> str:
        """Cedar test on ``resource.name`` for the model globs (``like`` supports ``*``)."""
        parts = []
        for m in self.models:
            if m == "*":
                return "true"
            parts.append(f"resource.name like {_cedar_str(m)}")
        return "(" + " || ".join(parts) + ")"

    def to_cedar(self) -> str:
        """The Cedar policy text; ``@id`` carries the directive id into Cedar's diagnostics."""
        conds = [self.model_expr()]
        for k, v in self.users.items():
            if k == "employee":
                conds.append(f"principal.employee == {'true' if v else 'false'}")
            else:
                conds.append(f"[{', '.join(_cedar_str(x) for x in v)}].contains(principal.{k})")
        if self.effective_from:
            conds.append(f"context.now >= {int(self.effective_from.timestamp())}")
        if self.effective_until:
            conds.append(f"context.now < {int(self.effective_until.timestamp())}")
        if self.condition:
            conds.append(f"({self.condition})")
        verb = "forbid" if self.effect == "deny" else "permit"
        body = " &&\n  ".join(conds)
        return (f"@id({_cedar_str(self.id)})\n"
                f"{verb} (principal, action == Action::\"invoke\", resource)\n"
                f"when {{\n  {body}\n}};\n")


def _cedar_str(s: str) -> str:
    # JSON escaping (\" and \\) is valid Cedar; _SAFE_TEXT has excluded control characters.
    return json.dumps(s, ensure_ascii=False)


def _parse_time(v: Any, where: str, name: str) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):
        dt = datetime(v.year, v.month, v.day)
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.strip().replace("z", "Z"))
        except ValueError:
            raise DirectiveError(f"{where}: {name} {v!r} is not an RFC 3339 date/time") from None
    else:
        raise DirectiveError(f"{where}: {name} must be a date/time")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


@dataclass(frozen=True)
class Decision:
    """Outcome of one access check. ``code`` is the machine-readable reason for callers."""

    allowed: bool
    code: str                            # "allowed" | "denied_by_directive" | "model_restricted" | "directive_error"
    directive_ids: tuple[str, ...] = ()
    legal_references: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    latency_us: float = 0.0


@dataclass
class DirectiveSet:
    """A validated set of directives compiled to one Cedar policy set.

    ``broken`` holds validation errors when loaded with ``strict=False``: the set then denies
    every request (fail closed) instead of running with a directive silently missing.
    """

    directives: list[Directive]
    broken: list[str] = field(default_factory=list)
    validate: bool = True

    def __post_init__(self) -> None:
        ids = [d.id for d in self.directives]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise DirectiveError(f"duplicate directive ids: {sorted(dup)}")
        self.by_id = {d.id: d for d in self.directives}
        self.policy_text = self._compile()
        self._schema = cedarpy.Schema.from_str(CEDAR_SCHEMA)
        if self.validate:
            res = cedarpy.validate_policies(self.policy_text, self._schema)
            if not res.validation_passed:
                names = res.id_annotations_by_policy_id
                self.broken.extend(
                    f"{names.get(e.policy_id, e.policy_id)}: {e.error}" for e in res.errors)
        try:
            self._ps = cedarpy.PolicySet.from_str(self.policy_text)
        except ValueError as exc:
            self._ps = None
            self.broken.append(f"Cedar parse error: {exc}")
        # Decision cache: without raw ``condition`` expressions a decision depends only on
        # the model, the user attributes and which effective-time segment ``now`` falls in
        # (policies compare the integer ``context.now`` with these boundaries), never on the
        # account id, so it can be reused exactly. Raw conditions may read anything: no cache.
        self._cacheable = not any(d.condition for d in self.directives)
        self._bounds = sorted({int(t.timestamp()) for d in self.directives
                               for t in (d.effective_from, d.effective_until) if t})
        self._cache: dict[tuple[Any, ...], Decision] = {}

    def _compile(self) -> str:
        restricted = [d.model_expr() for d in self.directives if d.effect == "allow"]
        unless = f" unless {{ {' || '.join(restricted)} }}" if restricted else ""
        base = ('@id("_base")\npermit (principal, action == Action::"invoke", resource)'
                f"{unless};\n")
        return base + "\n".join(d.to_cedar() for d in self.directives)

    def check(self, account_id: str, model: str, attrs: UserAttrs,
              now: datetime | float | None = None) -> Decision:
        """Decide whether ``account_id`` (with ``attrs``) may call ``model`` at ``now``."""
        t0 = time.perf_counter()
        if self.broken or self._ps is None:
            return Decision(False, "directive_error", errors=tuple(self.broken),
                            latency_us=(time.perf_counter() - t0) * 1e6)
        req, ents = _request(account_id, model, attrs, now)
        key: tuple[Any, ...] | None = None
        if self._cacheable:
            key = (model, attrs, bisect.bisect_right(self._bounds, req["context"]["now"]))
            hit = self._cache.get(key)
            if hit is not None:
                return replace(hit, latency_us=(time.perf_counter() - t0) * 1e6)
        try:
            res = cedarpy.is_authorized(req, self._ps, ents, schema=self._schema)
        except Exception as exc:  # noqa: BLE001 - any failure of the engine must deny
            return Decision(False, "directive_error", errors=(f"cedar: {exc}",),
                            latency_us=(time.perf_counter() - t0) * 1e6)
        dec = self._decision(res, (time.perf_counter() - t0) * 1e6)
        if key is not None and dec.code != "directive_error":
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = dec
        return dec

    def check_batch(self, items: list[tuple[str, str, UserAttrs]],
                    now: datetime | float | None = None) -> list[Decision]:
        """Many checks in one Cedar call (dry runs); same fail-closed rules as :meth:`check`."""
        if self.broken or self._ps is None:
            return [Decision(False, "directive_error", errors=tuple(self.broken))] * len(items)
        ents: dict[tuple[str, str], dict[str, Any]] = {}
        reqs = []
        for acct, model, attrs in items:
            r, e = _request(acct, model, attrs, now)
            reqs.append(r)
            for ent in e:
                ents[(ent["uid"]["type"], ent["uid"]["id"])] = ent
        try:
            results = cedarpy.is_authorized_batch(reqs, self._ps, list(ents.values()),
                                                  schema=self._schema)
        except Exception as exc:  # noqa: BLE001 - fail closed
            return [Decision(False, "directive_error", errors=(f"cedar: {exc}",))] * len(items)
        return [self._decision(r, 0.0) for r in results]

    def _decision(self, res: cedarpy.AuthzResult, latency_us: float) -> Decision:
        diag = res.diagnostics
        names = diag.id_annotations_by_reason
        fired = tuple(names.get(p, p) for p in diag.reasons if names.get(p, p) != "_base")
        if diag.errors or res.decision not in (cedarpy.Decision.Allow, cedarpy.Decision.Deny):
            return Decision(False, "directive_error", fired, errors=tuple(diag.errors),
                            latency_us=latency_us)
        if res.allowed:
            return Decision(True, "allowed", fired, latency_us=latency_us)
        legal = tuple(self.by_id[i].legal_reference for i in fired if i in self.by_id)
        code = "denied_by_directive" if fired else "model_restricted"
        return Decision(False, code, fired, legal, latency_us=latency_us)


def _request(account_id: str, model: str, attrs: UserAttrs,
             now: datetime | float | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if now is None:
        ts = time.time()
    elif isinstance(now, datetime):
        ts = (now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp()
    else:
        ts = float(now)
    uid_u = {"type": "User", "id": account_id}
    uid_m = {"type": "Model", "id": model}
    req = {"principal": uid_u, "action": {"type": "Action", "id": "invoke"},
           "resource": uid_m, "context": {"now": int(ts)}}
    ents = [{"uid": uid_u, "attrs": attrs.cedar_attrs(), "parents": []},
            {"uid": uid_m, "attrs": {"name": model}, "parents": []}]
    return req, ents


def _read_docs(path: Path) -> list[tuple[Any, str]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text("utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise DirectiveError(f"cannot read directives {path}: {exc}") from exc
    out: list[tuple[Any, str]] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, Mapping) and "directives" in doc:
            out.extend((d, str(path)) for d in doc["directives"] or [])
        elif isinstance(doc, list):
            out.extend((d, str(path)) for d in doc)
        else:
            out.append((doc, str(path)))
    return out


def load_directives(paths: Iterable[str | Path] | str | Path | None, *,
                    strict: bool = True) -> DirectiveSet:
    """Load directive YAML files (or directories of ``*.yaml``) into a validated set.

    ``strict=True`` raises :class:`DirectiveError` on any invalid directive (use in CI and the
    CLI). ``strict=False`` (a running gateway reloading files) returns a set that denies every
    request until fixed: a missing deny directive must never mean "allow".
    """
    if paths is None:
        paths = []
    elif isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.y*ml")) if p.is_dir() else [p])
    directives: list[Directive] = []
    errors: list[str] = []
    for f in files:
        for doc, src in _read_docs(f):
            try:
                directives.append(Directive.from_dict(doc, src))
            except DirectiveError as exc:
                if strict:
                    raise
                errors.append(str(exc))
    ds = DirectiveSet(directives, broken=errors)
    if strict and ds.broken:
        raise DirectiveError("directives fail Cedar validation: " + "; ".join(ds.broken))
    return ds


# --------------------------------------------------------------------------- dry run

@dataclass
class DryRunReport:
    """What adding a directive would change, over the history in the store."""

    directive_id: str
    at: str
    total_requests: int
    total_accounts: int
    affected_requests: int
    affected_accounts: int
    by_model: list[dict[str, Any]]
    by_class: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _attrs_table(con: Any, attributes: str | Path | None) -> str:
    """SQL relation (account_id, nationality, employee, country, org, signup_channel) or ''."""
    if attributes is None:
        return ""
    p = Path(attributes)
    if not p.exists():
        raise DirectiveError(f"accounts attributes file {p} does not exist")
    reader = "read_csv_auto" if p.suffix.lower() in (".csv", ".tsv") else "read_json_auto"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _dr_attrs AS SELECT * FROM {reader}(?)", [str(p)])
    cols = {r[0] for r in con.execute("DESCRIBE _dr_attrs").fetchall()}
    if "account_id" not in cols:
        raise DirectiveError(f"{p}: needs an account_id column")
    return "_dr_attrs"


def dry_run(directive: Directive, con: Any, current: DirectiveSet | None = None, *,
            attributes: str | Path | None = None, at: datetime | None = None,
            top: int = 50) -> DryRunReport:
    """Count accounts and requests in ``requests`` whose decision ``directive`` would change.

    Users are grouped into classes (model × country × nationality × org × signup channel ×
    employee) and each class is decided once with and without the new directive, so the cost
    is one batched Cedar call per class set, not per request. Nationality/employee come from
    the ``extra`` JSON of each request or from ``attributes`` (CSV/JSONL keyed by account_id,
    which wins). ``at`` defaults to the later of now and the directive's effective_from.
    Principal-specific ``condition`` expressions are evaluated against a class representative.
    """
    import pyarrow as pa

    base = current or DirectiveSet([])
    after = DirectiveSet(base.directives + [directive])
    if after.broken:
        raise DirectiveError("the new directive does not validate: " + "; ".join(after.broken))
    when = at or max(datetime.now(UTC), directive.effective_from or datetime.now(UTC))
    tbl = _attrs_table(con, attributes)
    acols = ({r[0] for r in con.execute(f"DESCRIBE {tbl}").fetchall()} if tbl else set())

    def col(name: str, req_expr: str) -> str:
        return f"coalesce(CAST(a.{name} AS VARCHAR), {req_expr}, '')" if name in acols \
            else f"coalesce({req_expr}, '')"

    join = f"LEFT JOIN {tbl} a USING (account_id)" if tbl else ""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dr AS
        SELECT r.account_id, r.model,
               upper({col('country', 'r.country')}) AS country,
               upper({col('nationality', "json_extract_string(r.extra, '$.nationality')")})
                 AS nationality,
               {col('org', 'r.org_id') if 'org' in acols else col('org_id', 'r.org_id')} AS org,
               lower({col('signup_channel', 'r.signup_channel')}) AS signup_channel,
               lower({col('employee', "json_extract_string(r.extra, '$.employee')")})
                 IN ('true', '1', 'yes') AS employee
        FROM requests r {join}""")
    classes = con.execute("""
        SELECT model, country, nationality, org, signup_channel, employee
        FROM _dr GROUP BY ALL""").fetchall()
    items = [(f"class-{i}", c[0], UserAttrs(c[1], c[2], c[3], c[4], bool(c[5])))
             for i, c in enumerate(classes)]
    before_d = base.check_batch(items, when) if items else []
    after_d = after.check_batch(items, when) if items else []
    changed = [c + (b.allowed, a.allowed) for c, b, a in zip(classes, before_d, after_d,
                                                              strict=True)
               if b.allowed != a.allowed]
    keys = ["model", "country", "nationality", "org", "signup_channel", "employee"]
    aff = pa.table({k: [c[i] for c in changed] for i, k in enumerate(keys)}
                   | {"allowed_before": [c[6] for c in changed],
                      "allowed_after": [c[7] for c in changed]},
                   schema=pa.schema([(k, pa.bool_() if k == "employee" else pa.string())
                                     for k in keys]
                                    + [("allowed_before", pa.bool_()),
                                       ("allowed_after", pa.bool_())]))
    con.register("_dr_aff", aff)
    try:
        tot = con.execute("SELECT count(*), count(DISTINCT account_id) FROM _dr").fetchall()[0]
        hit = con.execute(f"SELECT count(*), count(DISTINCT account_id) FROM _dr "
                          f"JOIN _dr_aff USING ({', '.join(keys)})").fetchall()[0]
        by_model = con.execute(f"""
            SELECT model, count(*) AS requests, count(DISTINCT account_id) AS accounts
            FROM _dr JOIN _dr_aff USING ({', '.join(keys)})
            GROUP BY model ORDER BY requests DESC LIMIT {int(top)}""").fetchall()
        by_class = con.execute(f"""
            SELECT {', '.join(keys[1:])}, any_value(allowed_after) AS allowed_after,
                   count(*) AS requests, count(DISTINCT account_id) AS accounts
            FROM _dr JOIN _dr_aff USING ({', '.join(keys)})
            GROUP BY ALL ORDER BY requests DESC LIMIT {int(top)}""").fetchall()
    finally:
        con.unregister("_dr_aff")
    return DryRunReport(
        directive.id, when.isoformat(), int(tot[0]), int(tot[1]), int(hit[0]), int(hit[1]),
        [{"model": m, "requests": int(r), "accounts": int(a)} for m, r, a in by_model],
        [dict(zip(keys[1:] + ["allowed_after", "requests", "accounts"], row, strict=True))
         for row in by_class])
