"""Compile the stages' DuckDB SQL text to Spark SQL (sqlglot, plus a few exact rewrites).

Every stage definition is written once, in DuckDB's dialect. ``sqlglot.transpile`` does most of
the work; the rewrites below cover what it translates to something that *runs* on Spark but
computes a different value, so the two engines agree to floating-point rounding:

* ``words[1:k]`` / ``words[-k:]`` (list slices) -> ``slice(...)`` (Spark has no slice syntax);
* ``epoch(ts)`` -> ``unix_micros(CAST(ts AS TIMESTAMP)) / 1e6`` (sqlglot emits
  ``unix_timestamp``: whole seconds);
* ``date_diff('day', a, b)`` -> ``datediff(CAST(b AS DATE), CAST(a AS DATE))`` (DuckDB counts
  day boundaries; Spark 3.3+'s 3-argument ``datediff`` counts whole elapsed days);
* ``avg(x)`` -> ``avg(CAST(x AS DOUBLE))`` (Spark averages ``DECIMAL`` literals such as the
  ``1.0``/``0.0`` of a share into a DECIMAL with 4 more digits of scale; DuckDB returns DOUBLE);
* ``(?i)`` regular expressions -> ``(?iu)`` (RE2's ``(?i)`` folds Unicode case, Java's only
  ASCII unless UNICODE_CASE is on).

Anything engine-specific that has no exact Spark equivalent must not be in the stage SQL
(e.g. ``hash()``: use ``md5``); :func:`to_spark` raises on the known offenders.
"""

from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp

#: sqlglot version the rewrites are tested with (tests/test_spark_parity.py).
TESTED_SQLGLOT = "30.30.0"

_UNPORTABLE = {"hash", "list_slice", "epoch_ms", "epoch_us", "epoch_ns", "regexp_full_match"}


class UnportableSQL(ValueError):
    """The DuckDB SQL uses a construct with no exact Spark translation."""


def _int_literal(node: exp.Expression | None) -> int | None:
    if node is None:
        return None
    if isinstance(node, exp.Neg):
        v = _int_literal(node.this)
        return None if v is None else -v
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.this)
        except ValueError:
            return None
    return None


def _slice(node: exp.Bracket) -> exp.Expression:
    """DuckDB 1-based inclusive list slice with literal bounds -> Spark ``slice``."""
    (sl,) = node.expressions
    arr = node.this
    lo, hi = _int_literal(sl.this), _int_literal(sl.args.get("expression"))
    if sl.this is not None and lo is None or sl.args.get("expression") is not None and hi is None:
        raise UnportableSQL(f"list slice needs literal bounds: {node.sql('duckdb')}")
    lo = 1 if lo is None else lo
    if lo > 0 and (hi is None or hi > 0):
        length = "2147483647" if hi is None else str(max(hi - lo + 1, 0))
        return exp.func("slice", arr.copy(), exp.Literal.number(lo), exp.Literal.number(length))
    if lo < 0 and hi is None:
        # Last -lo elements; DuckDB returns the whole list when it is shorter.
        start = exp.func("greatest", exp.Sub(this=exp.func("size", arr.copy()),
                                             expression=exp.Literal.number(-lo - 1)),
                         exp.Literal.number(1))
        return exp.func("slice", arr.copy(), start, exp.Literal.number(-lo))
    raise UnportableSQL(f"unsupported list slice: {node.sql('duckdb')}")


def _rewrite(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Bracket) and len(node.expressions) == 1 and isinstance(
            node.expressions[0], exp.Slice):
        return _slice(node)
    if isinstance(node, exp.TimeToUnix):
        # The cast lets TIMESTAMP_NTZ through (read as UTC: the engine runs in UTC).
        return exp.Div(this=exp.func("unix_micros", exp.cast(node.this.copy(), "TIMESTAMP")),
                       expression=exp.Literal.number("1e6"))
    if isinstance(node, exp.DateDiff):
        unit = node.args.get("unit")
        if unit is None or unit.name.upper() != "DAY":
            raise UnportableSQL(f"date_diff only with 'day': {node.sql('duckdb')}")
        return exp.func("datediff",
                        exp.cast(node.this.copy(), "DATE"),
                        exp.cast(node.expression.copy(), "DATE"))
    if isinstance(node, exp.Avg) and not (
            isinstance(node.this, exp.Cast) and node.this.to.is_type("double")):
        return exp.Avg(this=exp.cast(node.this.copy(), "DOUBLE"))
    if isinstance(node, exp.RegexpLike):
        pat = node.expression
        if isinstance(pat, exp.Literal) and pat.is_string and pat.this.startswith("(?i)"):
            node.set("expression", exp.Literal.string("(?iu)" + pat.this[4:]))
        return node
    if isinstance(node, exp.Anonymous) and node.name.lower() in _UNPORTABLE:
        raise UnportableSQL(f"{node.name}() has no exact Spark equivalent: {node.sql('duckdb')}")
    return node


def to_spark(sql: str, tables: dict[str, str] | None = None) -> str:
    """One DuckDB SELECT (stage SQL text) as Spark SQL computing the same values.

    ``tables`` renames table references (e.g. ``{"requests": "dg1_requests"}``) so a run's
    temporary views cannot collide with the session's own.
    """
    return _to_spark(sql, tuple(sorted((tables or {}).items())))


@functools.lru_cache(maxsize=256)
def _to_spark(sql: str, tables: tuple[tuple[str, str], ...]) -> str:
    rename = dict(tables)
    tree = sqlglot.parse_one(sql, read="duckdb")
    ctes = {c.alias for c in tree.find_all(exp.CTE)}
    for t in tree.find_all(exp.Table):
        if not t.args.get("db") and t.name in rename and t.name not in ctes:
            t.set("this", exp.to_identifier(rename[t.name]))
    # Reversed pre-order visits every node after its descendants, so a rewrite copies
    # already-rewritten children.
    for node in reversed(list(tree.walk(bfs=False))):
        new = _rewrite(node)
        if new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree.sql(dialect="spark")


def sqlglot_version() -> str:
    return sqlglot.__version__
