"""The Apache Spark engine: the same detection as :func:`distillguard.api.analyse`, on PySpark.

What runs where (see docs/spark.md):

* **distributed (executors)**: everything that is O(requests): ingest normalisation of raw
  logs, the signal SQL, skeletons and their MinHash (``mapInArrow`` over Arrow batches, reusing
  ``signals.templates.skeleton_frame`` / ``signature_band_keys`` / ``exact_keys``), the
  LSH band buckets that give each request its template id (Spark SQL group-bys), the enriched
  request table, the per-account features, the account keys and synchronisation tokens. The
  SQL is the stage SQL text itself, compiled from DuckDB's dialect by
  :mod:`distillguard.engines.sqlcompile`.
* **driver**: the O(accounts) tables (features, account keys, sync tokens) go into an
  in-memory DuckDB store and the *unchanged* linking, scoring and campaign code runs there, so
  scores, flags and campaigns equal the DuckDB engine's (to float rounding of aggregates).
* **distributed linking**, when the account graph is too big for the driver (more estimated
  edges than ``driver_max_edges``): edges are built in Spark SQL, split into connected
  components by iterative label propagation, and each component is clustered with the same
  Leiden/CPM call on an executor (``applyInPandas``); components above ``executor_max_edges``
  keep their connected component as the community. Only edges inside communities and one
  community label per account return to the driver for scoring.
* **partner intelligence** (``intel_key``): ``intel.match_partner_indicators`` runs unchanged
  on the executors, per group of accounts; only the accounts that match come to the driver.
* **report.html** (``report=True``): the report's aggregate SQL (``report._data``) compiled
  to Spark SQL; only the aggregates come to the driver.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

try:
    from pyspark import StorageLevel
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import functions as F
except ImportError as exc:  # pragma: no cover - exercised only without pyspark
    raise ImportError(
        "the Spark engine needs pyspark: pip install 'pyspark>=3.5,<4.1' (and Java 17)") from exc

from distillguard.config import Config, load_config
from distillguard.engines.sqlcompile import to_spark
from distillguard.errors import IngestError
from distillguard.features import compute_features
from distillguard.features.defs import enriched_sql, features_sql
from distillguard.linking import compute_links, write_groups
from distillguard.linking.keys import (
    account_attrs_sql,
    account_keys_sql,
    conjunction_sql,
    content_config,
    content_tokens_sql,
    sync_tokens_sql,
)
from distillguard.schema import REQUIRED_FIELDS, STORE_COLUMNS, STORE_SCHEMA
from distillguard.scoring import Calibrator, score_accounts
from distillguard.scoring.campaigns import describe_campaigns, keys_subquery
from distillguard.signals import FLAG_NAMES, compute_signals
from distillguard.signals.rules import load_rules
from distillguard.signals.sql import signals_base_sql
from distillguard.store import Query, connect

__all__ = [
    "DRIVER_MAX_EDGES",
    "DRIVER_MAX_TOKENS",
    "EXECUTOR_MAX_EDGES",
    "SparkInput",
    "SparkRun",
    "analyse_spark",
    "connected_components",
    "load_partner_indicators",
    "read_input",
    "read_requests",
    "run_spark",
    "spark_session",
    "store_frame",
]

#: Default boundary for clustering on the driver: estimated key-sharing edges (the exact
#: number of pairs the blocking step will emit; Leiden as configured takes ~1 min per 1M
#: edges of a locally connected graph on one core, see docs/spark.md) ...
DRIVER_MAX_EDGES = 1_000_000
#: ... and synchronisation tokens (account, capability, 10-minute bucket) of accounts with
#: enough buckets to be compared. Above either, linking runs distributed.
DRIVER_MAX_TOKENS = 50_000_000
#: A connected component with more edges than this keeps its component as its community
#: instead of being Leiden-clustered on one executor.
EXECUTOR_MAX_EDGES = 1_000_000
#: Requests (and their signals) per flagged account or campaign member copied to the driver
#: store, the most recent first: what the console and ``intel export`` show of an account.
#: Campaign descriptions and the report aggregate on the executors, so this only bounds
#: what those readers see, not what campaigns.json says.
DRIVER_ROWS_PER_ACCOUNT = 1_000

_SPARK_TYPES = {pa.string(): "string", pa.timestamp("us"): "timestamp", pa.int32(): "int",
                pa.int64(): "bigint"}

# The SQL the linking code issues over per-request tables; on the driver it is answered from
# what Spark computed (see _DriverStore).
_ACCOUNTS_SQL = "SELECT DISTINCT account_id FROM requests ORDER BY 1"


# ------------------------------------------------------------------------------------------
# session
# ------------------------------------------------------------------------------------------


def spark_session(master: str | None = "local[2]", conf: dict[str, Any] | None = None,
                  app_name: str = "distillguard") -> SparkSession:
    """A SparkSession configured for distillguard (UTC session time zone, Arrow transfers).

    ``master=None`` leaves the master to ``spark-submit`` / ``SPARK_MASTER``; ``conf`` entries
    override the defaults (e.g. ``{"spark.executor.memory": "8g"}`` or the object-store
    settings of docs/spark.md).
    """
    defaults = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.skewJoin.enabled": "true",
    }
    if master is not None and master.startswith("local"):
        defaults.update({"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8",
                         "spark.driver.memory": "2g"})
        # Local Python workers must be this interpreter (the one with pyarrow and
        # distillguard), not whatever `python3` is first on PATH: a venv that is not activated
        # otherwise fails in the first Arrow UDF. PySpark reads only the environment variable
        # for this; clusters set their own.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    b = SparkSession.builder.appName(app_name)
    if master is not None:
        b = b.master(master)
    for k, v in {**defaults, **(conf or {})}.items():
        b = b.config(k, str(v))
    return b.getOrCreate()


@contextmanager
def _utc(spark: SparkSession) -> Iterator[None]:
    """Run with the session time zone at UTC: store timestamps are naive UTC."""
    key = "spark.sql.session.timeZone"
    old = spark.conf.get(key)
    spark.conf.set(key, "UTC")
    try:
        yield
    finally:
        spark.conf.set(key, old)


# ------------------------------------------------------------------------------------------
# ingest
# ------------------------------------------------------------------------------------------


def store_frame(df: DataFrame) -> DataFrame:
    """``df`` with exactly the store columns (``STORE_SCHEMA``), in order, with store types.

    Missing optional columns become typed NULLs; timestamps (naive or zoned) become Spark
    ``TIMESTAMP`` read as UTC.
    """
    have = {c.lower(): c for c in df.columns}
    missing = [c for c in REQUIRED_FIELDS if c not in have]
    if missing:
        raise IngestError(f"input lacks required column(s): {', '.join(missing)}")
    cols = []
    for f in STORE_SCHEMA:
        t = _SPARK_TYPES[f.type]
        src = have.get(f.name)
        cols.append((F.col(f"`{src}`") if src else F.lit(None)).cast(t).alias(f.name))
    return df.select(*cols)


def _paths(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(source, str | os.PathLike):
        return [str(source)]
    return [str(p) for p in source]


def _kind(path: str) -> str:
    p = path.lower().rstrip("/")
    for sfx in (".gz", ".bz2", ".zst", ".snappy"):
        if p.endswith(sfx):
            p = p[: -len(sfx)]
    if p.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if p.endswith((".parquet", ".pq")):
        return "parquet"
    if p.endswith(".json"):
        return "json"
    if p.endswith((".csv", ".tsv")):
        return "csv"
    return "parquet"  # a directory of part files


def _is_store_schema(df: DataFrame) -> bool:
    types = {f.name: f.dataType.typeName() for f in df.schema.fields}
    return ("messages" not in types and all(c in types for c in REQUIRED_FIELDS)
            and types.get("ts", "").startswith("timestamp"))


def _normalise_fn(fmt: str, limits: dict[str, int], from_lines: bool):
    """mapInArrow body: raw lines / rows -> store rows, plus rejected rows with a reason."""
    max_line = int(limits["max_line_bytes"])

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import orjson

        from distillguard.ingest import adapters
        from distillguard.ingest.normalize import RowError, normalize
        from distillguard.ingest.reader import _decode_nested

        for b in batches:
            files = b.column(b.schema.get_field_index("_file")).to_pylist()
            if from_lines:
                items = b.column(b.schema.get_field_index("value")).to_pylist()
            else:
                rows = b.drop_columns(["_file"]).to_pylist()
                items = [_decode_nested(r) for r in rows]
            good: list[dict[str, Any]] = []
            bad: list[tuple[str, str, str]] = []
            for item, f in zip(items, files, strict=True):
                name = (f or "").rsplit("/", 1)[-1]
                if from_lines:
                    if not item or not item.strip():
                        continue
                    if len(item.encode("utf-8", "surrogatepass")) > max_line:
                        bad.append((name, f"line exceeds {max_line:,} bytes", item[:2000]))
                        continue
                    try:
                        obj = orjson.loads(item)
                    except orjson.JSONDecodeError as exc:
                        bad.append((name, f"malformed JSON: {exc}", item[:2000]))
                        continue
                else:
                    obj = item
                try:
                    recs = adapters.expand(fmt, obj) if fmt != "canonical" else [obj]
                except ValueError as exc:
                    bad.append((name, f"not a {fmt} record: {exc}", str(obj)[:2000]))
                    continue
                for rec in recs:
                    try:
                        good.append(normalize(rec, name, limits))
                    except RowError as exc:
                        raw = orjson.dumps(rec, default=str).decode()[:2000]
                        bad.append((name, str(exc), raw))
            cols = {c: pa.array([r[c] for r in good] + [None] * len(bad), f.type)
                    for c, f in zip(STORE_COLUMNS, STORE_SCHEMA, strict=True)}
            cols["source"] = pa.array([r["source"] for r in good] + [x[0] for x in bad],
                                      pa.string())
            cols["_error"] = pa.array([None] * len(good) + [x[1] for x in bad], pa.string())
            cols["_raw"] = pa.array([None] * len(good) + [x[2] for x in bad], pa.string())
            yield pa.RecordBatch.from_pydict(cols)

    return fn


# Arrow's naive timestamps are Spark's TIMESTAMP_NTZ; store_frame makes them UTC TIMESTAMPs.
_NORMALISED_DDL = ", ".join(
    f"{f.name} {'timestamp_ntz' if pa.types.is_timestamp(f.type) else _SPARK_TYPES[f.type]}"
    for f in STORE_SCHEMA) + ", _error string, _raw string"


@dataclass
class SparkInput:
    """What :func:`read_input` made of the input: store rows and the rows it rejected."""

    requests: DataFrame
    rejected: DataFrame | None   # source, reason, raw (None when nothing could be rejected)
    path_kind: str               # store-parquet | normalised-jsonl | normalised-parquet | driver


def read_input(spark: SparkSession, source: str | os.PathLike | Iterable[str | os.PathLike],
               cfg: Config | None = None, *, fmt: str | None = None,
               dedupe: bool | None = None) -> SparkInput:
    """Read request logs from paths or object-store URIs the session can reach.

    * Parquet already in the store schema (``STORE_SCHEMA``; e.g. exported from a DuckDB
      store, or written by an upstream job) is read natively: column pruning and predicate
      push-down apply, nothing passes through Python.
    * JSON Lines (``.jsonl``/``.ndjson``, optionally compressed) and Parquet with canonical
      records (``messages`` etc.) are normalised on the executors with the ingest code
      (``ingest.normalize.normalize`` and the format adapters), in Arrow batches. Rejected rows
      come back in ``rejected`` with the same reasons the DuckDB ingest gives.
    * Other inputs (``.json`` documents, CSV) go through the DuckDB ingest on the driver and
      are handed to Spark as Arrow: fine for small inputs only.

    ``dedupe`` drops repeated ``request_id`` (as the DuckDB ingest does); by default on for
    normalised input and off for store-schema Parquet, which is assumed deduplicated already.
    """
    cfg = cfg or load_config()
    with _utc(spark):   # casts to TIMESTAMP are resolved against the session time zone
        return _read_input(spark, _paths(source), cfg, fmt, dedupe)


def _read_input(spark: SparkSession, paths: list[str], cfg: Config, fmt: str | None,
                dedupe: bool | None) -> SparkInput:
    limits = cfg["ingest"]
    if not paths:
        raise IngestError("no input paths")
    kinds = {_kind(p) for p in paths}
    if len(kinds) > 1:
        raise IngestError(f"mixed input kinds {sorted(kinds)}; read them separately")
    (kind,) = kinds
    if kind == "parquet":
        raw = spark.read.parquet(*paths)
        if _is_store_schema(raw) and fmt in (None, "store", "canonical"):
            out = SparkInput(store_frame(raw), None, "store-parquet")
            return _dedupe(out, bool(dedupe))
        raw = raw.withColumn("_file", F.input_file_name())
        file_fmt = fmt or _sniff(raw.drop("_file").limit(20).toPandas().to_dict("records"))
        norm = raw.mapInArrow(_normalise_fn(file_fmt, limits, from_lines=False),
                              _NORMALISED_DDL)
        return _dedupe(_split(norm, "normalised-parquet"), dedupe is not False)
    if kind == "jsonl":
        raw = spark.read.text(paths).withColumn("_file", F.input_file_name())
        if fmt is None:
            import orjson

            sample = []
            for r in raw.limit(50).collect():
                try:
                    obj = orjson.loads(r["value"])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    sample.append(obj)
            fmt = _sniff(sample[:20])
        norm = raw.mapInArrow(_normalise_fn(fmt, limits, from_lines=True), _NORMALISED_DDL)
        return _dedupe(_split(norm, "normalised-jsonl"), dedupe is not False)
    return _read_on_driver(spark, paths, cfg, fmt)


def _sniff(sample: list[dict[str, Any]]) -> str:
    from distillguard.ingest import adapters

    return adapters.detect_format(sample) if sample else "canonical"


def _split(norm: DataFrame, kind: str) -> SparkInput:
    norm = norm.persist(StorageLevel.MEMORY_AND_DISK)
    good = store_frame(norm.filter(F.col("_error").isNull()))
    bad = norm.filter(F.col("_error").isNotNull()).select(
        "source", F.col("_error").alias("reason"), F.col("_raw").alias("raw"))
    return SparkInput(good, bad, kind)


def _dedupe(inp: SparkInput, on: bool) -> SparkInput:
    if on:
        inp.requests = inp.requests.dropDuplicates(["request_id"])
    return inp


def _read_on_driver(spark: SparkSession, paths: list[str], cfg: Config,
                    fmt: str | None) -> SparkInput:
    from distillguard.ingest import ingest_files

    con = connect(None)
    try:
        ingest_files([Path(p) for p in paths], con, limits=cfg["ingest"], fmt=fmt)
        table = con.sql("SELECT * FROM requests").to_arrow_table()
        rejected = con.sql("SELECT source, reason, raw FROM quarantine").to_arrow_table()
    finally:
        con.close()
    return SparkInput(store_frame(_from_arrow(spark, table, STORE_SCHEMA)),
                      _from_arrow(spark, rejected), "driver")


def read_requests(spark: SparkSession, source: str | os.PathLike | Iterable[str | os.PathLike],
                  cfg: Config | None = None, *, fmt: str | None = None,
                  dedupe: bool | None = None) -> DataFrame:
    """The store rows of :func:`read_input` (rejected rows are dropped)."""
    return read_input(spark, source, cfg, fmt=fmt, dedupe=dedupe).requests


def _from_arrow(spark: SparkSession, table: pa.Table, schema: pa.Schema | None = None) -> DataFrame:
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = schema or table.schema
    sschema = from_arrow_schema(schema)
    if table.num_rows == 0:
        return spark.createDataFrame([], sschema)
    pdf = table.cast(schema).to_pandas(timestamp_as_object=False)
    return spark.createDataFrame(pdf, sschema)


def _to_arrow(df: DataFrame) -> pa.Table:
    """Collect ``df`` to the driver as Arrow, zoned timestamps turned into naive UTC."""
    if hasattr(df, "toArrow"):                       # pyspark >= 4.0
        t = df.toArrow()
    else:                                            # pyspark 3.5
        from pyspark.sql.pandas.types import to_arrow_schema

        batches = df._collect_as_arrow()
        t = pa.Table.from_batches(batches, schema=None if batches else
                                  to_arrow_schema(df.schema))
    fields = [pa.field(f.name, pa.timestamp("us")) if pa.types.is_timestamp(f.type) else f
              for f in t.schema]
    return t.cast(pa.schema(fields))


# ------------------------------------------------------------------------------------------
# the per-request stages on Spark
# ------------------------------------------------------------------------------------------


def _template_keys_fn(perms: int, bands: int, k: int, rules: tuple[list, list]):
    """mapInArrow body: (request_id, n_tools, prompt_ends, scan) -> (request_id, rule flags,
    capability, skeleton, keys, elicit_p).

    The per-batch step of ``signals.compute_signals``, the same function
    (``_workers.signal_work``): the rules as one RE2 set (the DuckDB engine's regex engine,
    so no Java-regex differences), MinHash band keys, then the exact head and tail keys, and
    the elicitation model's probability of the scan text. A missing head/tail is stored as a
    NULL key here; the DuckDB stage keeps a key unique to the row, which never groups either.
    """

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from distillguard.signals._workers import signal_work

        for b in batches:
            if b.num_rows == 0:
                continue
            col = b.column
            ends = col(b.schema.get_field_index("prompt_ends"))
            scan = col(b.schema.get_field_index("scan"))
            n_tools = col(b.schema.get_field_index("n_tools"))
            skel, keys, missing, p, rule_cols = signal_work(ends, 0, k, perms, bands, scan,
                                                            n_tools, rules)
            n, width = keys.shape
            mask = np.hstack([np.zeros((n, bands), dtype=bool), missing]).reshape(-1)
            offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [col(b.schema.get_field_index("request_id")),
                 *(rule_cols[f] for f in FLAG_NAMES), rule_cols["capability"], skel,
                 pa.ListArray.from_arrays(offsets, pa.array(keys.view(np.int64).reshape(-1),
                                                            mask=mask)),
                 pa.array(p, pa.float64())],
                names=["request_id", *FLAG_NAMES, "capability", "skeleton", "keys",
                       "elicit_p"])

    return fn


# Mirrors signals.templates.template_ids / template_ids_sql: per request the largest
# (band, key) bucket it is in; ties go to the lowest band. One explode and one group-by
# (template_ids_sql's per-band group-bys and joins would be 2 shuffles per band on Spark).
# NULL keys stand for "unique to this row": a bucket of one never beats band 0, so they are
# left out.
_TEMPLATE_SQL = """
WITH b AS (
  SELECT request_id, pos AS band, key FROM {keys} LATERAL VIEW posexplode(keys) t AS pos, key
  WHERE key IS NOT NULL
),
sz AS (SELECT band, key, count(*) AS size FROM b GROUP BY band, key),
best AS (
  SELECT b.request_id, max(struct(sz.size AS size, -b.band AS nb, b.key AS key)) AS m
  FROM b JOIN sz ON b.band = sz.band AND b.key = sz.key
  GROUP BY b.request_id
)
SELECT s.*, {flags}, k.capability, k.skeleton, 't' || lower(hex(best.m.key)) AS template_id,
       best.m.size AS template_size, k.elicit_p
FROM {base} s JOIN {keys} k ON s.request_id = k.request_id
JOIN best ON s.request_id = best.request_id
"""


class _Views:
    """Temporary view names of one run (prefixed, so they cannot clash with the session's)."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.prefix = f"dg{uuid.uuid4().hex[:8]}_"
        self.names: dict[str, str] = {}
        self.cached: list[DataFrame] = []

    def put(self, name: str, df: DataFrame, persist: bool = False,
            checkpoint: bool = False) -> DataFrame:
        """Register ``df`` as the view ``name``.

        ``persist``: cache it (for reuse within the next query or two). ``checkpoint``:
        materialise it now and cut its lineage, for tables many later queries read: Spark
        re-analyses a cached DataFrame's whole lineage in every query that uses it, which
        for the deep plans of this pipeline costs seconds per query. Reliable checkpoints when
        the SparkContext has a checkpoint directory, local ones otherwise (docs/spark.md).
        """
        if checkpoint:
            df = (df.checkpoint(eager=True) if self.spark.sparkContext.getCheckpointDir()
                  else df.localCheckpoint(eager=True))
        elif persist:
            df = df.persist(StorageLevel.MEMORY_AND_DISK)
            self.cached.append(df)
        view = self.prefix + name.lstrip("_")
        df.createOrReplaceTempView(view)
        self.names[name] = view
        return df

    def sql(self, duckdb_sql: str) -> DataFrame:
        return self.spark.sql(to_spark(duckdb_sql, self.names))

    def drop(self) -> None:
        for df in self.cached:
            df.unpersist()
        for view in self.names.values():
            self.spark.catalog.dropTempView(view)


def spark_signals(v: _Views, cfg: Config, columns: list[str] | None = None) -> DataFrame:
    """``signals`` (one row per request) as ``signals.compute_signals`` computes it.

    ``columns``: the DuckDB ``signals`` columns, in order; the result has exactly these
    (helper columns of the signal SQL are dropped as the DuckDB stage drops them).
    """
    sc = cfg["signals"]
    perms, bands, k = int(sc["minhash_perms"]), int(sc["lsh_bands"]), int(sc["skeleton_words"])
    # The rules run in the batch step (RE2, as on DuckDB), not as Java regexes in the SQL:
    # signals_sql's nine regexp_matches were ~0.9 ms per request per core in Spark.
    base = v.put("_signals_base", v.sql(signals_base_sql(cfg)), persist=True)
    flags = ", ".join(f"{f} boolean" for f in FLAG_NAMES)
    keys = base.select("request_id", "n_tools", "prompt_ends", "scan").mapInArrow(
        _template_keys_fn(perms, bands, k, load_rules(cfg)),
        f"request_id string, {flags}, capability string, skeleton string, "
        "keys array<bigint>, elicit_p double")
    keys = v.put("_tkeys", keys, persist=True)
    sig = v.spark.sql(_TEMPLATE_SQL.format(
        keys=v.names["_tkeys"], base=v.names["_signals_base"],
        flags=", ".join(f"k.{f}" for f in FLAG_NAMES)))
    if columns is not None:
        missing = [c for c in columns if c not in sig.columns]
        if missing:
            raise RuntimeError(f"Spark signals lack DuckDB signals columns {missing}")
        sig = sig.select(*columns)
    else:
        sig = sig.drop("n_tools", "prompt_ends", "scan")
    sig = v.put("signals", sig, checkpoint=True)
    base.unpersist()     # materialised: the regex-heavy base and the keys are not needed now
    keys.unpersist()
    return sig


def _elicit_user_fn():
    """mapInArrow body: (request_id, scan) -> (request_id, user_p), as
    ``signals.elicit_user.update_elicit_user`` scores them."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from distillguard.signals.elicit_model import scan_probs

        for b in batches:
            if b.num_rows == 0:
                continue
            scan = b.column(b.schema.get_field_index("scan"))
            yield pa.RecordBatch.from_arrays(
                [b.column(b.schema.get_field_index("request_id")),
                 pa.array(scan_probs(scan), pa.float64())], names=["request_id", "user_p"])

    return fn


def spark_features(v: _Views, cfg: Config) -> pa.Table:
    """``features`` (one row per account), collected to the driver."""
    from distillguard.signals.elicit_user import TABLE, candidates_sql

    eu = v.sql(candidates_sql(cfg)).mapInArrow(_elicit_user_fn(),
                                               "request_id string, user_p double")
    eu = v.put(TABLE, eu, persist=True)
    req = v.put("_req", v.sql(enriched_sql(cfg)), persist=True)
    out = _to_arrow(v.sql(features_sql(cfg)))
    req.unpersist()
    eu.unpersist()
    return out


# ------------------------------------------------------------------------------------------
# driver side: the unchanged linking / scoring / campaign code on a small DuckDB store
# ------------------------------------------------------------------------------------------


class _DriverStore:
    """A DuckDB connection holding the per-account tables Spark computed.

    The DuckDB stage functions (``compute_features``, ``compute_links``) run unchanged on it.
    Where they run one of the stage SQL texts over the per-request tables (which live in
    Spark), that text is swapped for the table Spark's result was loaded into: a statement
    that *is* such a text is answered from the table, one that *embeds* it (``CREATE TABLE x
    AS <features_sql>``) gets the table as a subquery in its place. Everything else goes to
    DuckDB unchanged. The per-request tables are absent on purpose, so a query this class
    does not know fails loudly instead of reading an empty table; ``check`` fails when a
    stage no longer issues the texts it is expected to (its code changed: update this engine).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, answers: dict[str, str]) -> None:
        self._con = con
        self._answers = {k.strip(): v for k, v in answers.items()}
        self.hits: set[str] = set()

    def _rewrite(self, sql: Any) -> Any:
        if not isinstance(sql, str):
            return sql
        key = sql.strip()
        if key in self._answers:
            self.hits.add(key)
            return self._answers[key]
        for text, answer in self._answers.items():
            if text in sql:
                self.hits.add(text)
                sql = sql.replace(text, f"({answer})")
        return sql

    def sql(self, query: str, *args: Any, **kwargs: Any) -> duckdb.DuckDBPyRelation:
        return self._con.sql(self._rewrite(query), *args, **kwargs)

    def execute(self, query: str, *args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        return self._con.execute(self._rewrite(query), *args, **kwargs)

    def check(self, stage: str, required: Iterable[str]) -> None:
        missing = [t for t in required if t.strip() not in self.hits]
        if missing:
            raise RuntimeError(
                f"the {stage} stage no longer runs the expected stage SQL "
                f"({len(missing)} text(s) unused); update distillguard.engines.spark")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def _insert(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    con.register("_dg_in", data)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _dg_in")
    finally:
        con.unregister("_dg_in")


def _typed_driver_store(cfg: Config) -> duckdb.DuckDBPyConnection:
    """An in-memory store whose empty tables have the DuckDB engine's exact column types.

    The DuckDB stages run on the empty store to create them, so the driver tables follow any
    change to the stage SQL without a second schema to maintain.
    """
    con = connect(None)
    compute_signals(con, cfg)
    compute_features(con, cfg)
    con.execute(f"CREATE TABLE _dg_features AS SELECT * FROM ({features_sql(cfg)}) LIMIT 0")
    con.execute(f"CREATE TABLE _dg_account_keys AS SELECT * FROM ({account_keys_sql(cfg)}) "
                "LIMIT 0")
    con.execute(f"CREATE TABLE _dg_sync_tokens AS SELECT * FROM ({sync_tokens_sql(cfg)}) "
                "LIMIT 0")
    con.execute(f"CREATE TABLE _dg_content_tokens AS SELECT * FROM "
                f"({content_tokens_sql(cfg)}) LIMIT 0")
    con.execute("CREATE TABLE _dg_accounts (account_id VARCHAR)")
    # Per-request tables leave the stage names until campaign description needs them.
    con.execute("DROP TABLE features")
    con.execute("ALTER TABLE _req RENAME TO _dg_req_t")
    con.execute("ALTER TABLE requests RENAME TO _dg_requests_t")
    con.execute("ALTER TABLE signals RENAME TO _dg_signals_t")
    return con


def _load_campaign_rows(v: _Views, con: duckdb.DuckDBPyConnection, scores: pl.DataFrame,
                        per_account: int) -> int:
    """Put at most ``per_account`` requests (the most recent; ``response`` left out) and
    their signals of each flagged account and campaign member into the driver store, for the
    console and ``intel export``, which read the written store.

    The driver thus holds O(flagged accounts x per_account) rows, however many requests the
    campaigns sent (800,145 rows at 4M requests before this bound): what campaigns.json and
    the report need of all their requests is aggregated on the executors
    (:func:`_spark_query`)."""
    con.execute("CREATE TABLE requests AS SELECT * FROM _dg_requests_t")
    con.execute("CREATE TABLE signals AS SELECT * FROM _dg_signals_t")
    members = scores.filter(pl.col("campaign_id").is_not_null() | pl.col("flagged"))[
        "account_id"].to_list()
    if not members or per_account <= 0:
        return 0
    m = v.spark.createDataFrame([(a,) for a in members], "account_id string")
    v.put("_members", F.broadcast(m))
    req_cols = [c for c in STORE_COLUMNS if c != "response"]
    v.put("_member_rows", v.spark.sql(f"""
        SELECT * FROM (
          SELECT {', '.join('r.' + c for c in req_cols)},
                 row_number() OVER (PARTITION BY r.account_id
                                    ORDER BY r.ts DESC, r.request_id DESC) AS _rn
          FROM {v.names['requests']} r
          LEFT SEMI JOIN {v.names['_members']} m ON r.account_id = m.account_id)
        WHERE _rn <= {int(per_account)}"""), persist=True)
    rows = v.names["_member_rows"]
    reqs = _to_arrow(v.spark.sql(f"SELECT {', '.join(req_cols)} FROM {rows}"))
    sig = _to_arrow(v.spark.sql(
        f"SELECT s.* FROM {v.names['signals']} s "
        f"LEFT SEMI JOIN {rows} r ON s.request_id = r.request_id"))
    _insert(con, "requests", reqs)
    _insert(con, "signals", sig)
    return reqs.num_rows


def _spark_query(v: _Views, cfg: Config) -> Query:
    """:data:`distillguard.store.Query` on the executors: the aggregate text is compiled to
    Spark SQL over the ``requests`` and ``signals`` views, the helper tables are broadcast,
    and only the (small) result comes to the driver. The account keys linking computed are
    reused instead of being derived again."""
    keys_sql = keys_subquery(cfg)
    # describe_campaigns passes one members table to its five aggregates: send it once
    sent: dict[str, pa.Table] = {}

    def query(sql: str, tables: dict[str, pa.Table]) -> pa.Table:
        names = {}
        for k, t in tables.items():
            if sent.get(k) is not t:
                v.put(f"_q_{k}", F.broadcast(_from_arrow(v.spark, t)))
                sent[k] = t
            names[k] = v.names[f"_q_{k}"]
        if "_keys" in v.names:
            sql = sql.replace(keys_sql, "SELECT * FROM _keys")
        return _to_arrow(v.sql(sql.format(**names)))

    return query


# ------------------------------------------------------------------------------------------
# distributed linking (graphs too big for the driver)
# ------------------------------------------------------------------------------------------


def _key_edges_sql(keys: str, cfg: Config) -> str:
    """Spark SQL twin of ``linking.graph.key_edges``: all pairs in small key groups; in large
    ones a circulant sample of ``k`` neighbours each, or for ``sampled_as_clique`` kinds ``k``
    md5-ordered cycles with the clique's weight; weight / log2(1 + group size)."""
    lc = cfg["linking"]
    full, k, mx = int(lc["max_group_full"]), int(lc["group_sample_k"]), int(lc["max_group"])
    weights = " ".join(f"WHEN '{kind}' THEN {float(w)!r}" for kind, w in lc["weights"].items())
    dense = ", ".join(f"'{kind}'" for kind in lc.get("sampled_as_clique", ())) or "NULL"
    scale = (f"CASE WHEN n > {full} AND kind IN ({dense}) "
             f"THEN CAST(n - 1 AS DOUBLE) / CAST({2 * k} AS DOUBLE) ELSE CAST(1 AS DOUBLE) END")
    # linking.graph.rotation_factor: min(1, free / sqrt(d_a * d_b)) for the address kinds
    rc = lc.get("rotation") or {}
    rot, rot_join = "CAST(1 AS DOUBLE)", ""
    if rc:
        rk = ", ".join(f"'{kind}'" for kind in rc["kinds"])
        rot = (f"CASE WHEN kind IN ({rk}) THEN least(CAST(1 AS DOUBLE), "
               f"{float(rc['free'])!r} / sqrt(CAST(da.d AS DOUBLE) * CAST(db.d AS DOUBLE))) "
               "ELSE CAST(1 AS DOUBLE) END")
        spread = (f"(SELECT account_id, kind AS dkind, count(DISTINCT key) AS d FROM {keys} "
                  f"WHERE kind IN ({rk}) GROUP BY account_id, kind)")
        rot_join = (f"\nLEFT JOIN {spread} da ON da.account_id = pairs.a AND da.dkind = pairs.kind"
                    f"\nLEFT JOIN {spread} db ON db.account_id = pairs.b AND db.dkind = pairs.kind")
    return f"""
WITH g AS (
  SELECT kind, key, account_id,
         row_number() OVER (PARTITION BY kind, key ORDER BY account_id) - 1 AS pos,
         count(*) OVER (PARTITION BY kind, key) AS n
  FROM (SELECT DISTINCT kind, key, account_id FROM {keys})
),
g2 AS (SELECT * FROM g WHERE n BETWEEN 2 AND {mx}),
cyc AS (
  SELECT kind, key, n, account_id, j,
         row_number() OVER (PARTITION BY kind, key, j
                            ORDER BY md5(concat(account_id, '|', CAST(j AS STRING)))) - 1 AS rpos
  FROM (SELECT *, explode(sequence(1, {k})) AS j FROM g2
        WHERE n > {full} AND kind IN ({dense}))
),
pairs AS (
  SELECT x.kind, x.key, x.n, x.account_id AS a, y.account_id AS b
  FROM g2 x JOIN g2 y ON x.kind = y.kind AND x.key = y.key AND x.pos < y.pos
  WHERE x.n <= {full}
  UNION ALL
  SELECT x.kind, x.key, x.n, x.account_id, y.account_id
  FROM (SELECT *, explode(sequence(1, {k})) AS j FROM g2
        WHERE n > {full} AND NOT coalesce(kind IN ({dense}), false)) x
  JOIN g2 y ON x.kind = y.kind AND x.key = y.key AND y.pos = (x.pos + x.j) % x.n
  UNION ALL
  SELECT x.kind, x.key, x.n, x.account_id, y.account_id
  FROM cyc x JOIN cyc y ON x.kind = y.kind AND x.key = y.key AND x.j = y.j
                       AND y.rpos = (x.rpos + 1) % x.n
)
SELECT least(a, b) AS a, greatest(a, b) AS b, kind,
       (CASE kind {weights} END) / log2(1 + n) * {scale} * {rot} AS w,
       substr(key, 1, 80) AS key, {scale} AS scale
FROM pairs{rot_join}
"""


def _minhash_sig_fn(bands: int = 16, rows: int = 4):
    """mapInArrow body: MinHash of each account's token set (rensa, graph.py's seed) and
    its ``bands`` band keys of ``rows`` rows each."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from rensa import RMinHash

        from distillguard.linking.graph import _SYNC_SEED
        from distillguard.signals.templates import _MULT

        perms = bands * rows
        for b in batches:
            toks = b.column(b.schema.get_field_index("tokens")).to_pylist()
            acc = b.column(b.schema.get_field_index("account_id"))
            if not toks:
                continue
            sig = np.asarray(RMinHash.digest_matrix_from_token_sets(toks, perms, _SYNC_SEED)
                             .to_rows(), dtype=np.uint32)
            s = sig.reshape(len(sig), bands, rows).astype(np.uint64)
            with np.errstate(over="ignore"):
                bk = (s * _MULT[:rows]).sum(axis=2, dtype=np.uint64).view(np.int64)
            sig_off = pa.array(np.arange(0, (len(sig) + 1) * perms, perms, dtype=np.int32))
            bk_off = pa.array(np.arange(0, (len(sig) + 1) * bands, bands, dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [acc, pa.ListArray.from_arrays(sig_off,
                                               pa.array(sig.reshape(-1).astype(np.int64))),
                 pa.ListArray.from_arrays(bk_off, pa.array(bk.reshape(-1)))],
                names=["account_id", "sig", "bkeys"])

    return fn


def _lsh_edges(v: _Views, cfg: Config, tokens: str, min_tokens: int, bands: int, rows: int,
               min_jaccard: float, weight: float, kind: str) -> DataFrame:
    """Spark twin of ``linking.graph._lsh_edges`` (same MinHash, bands, Jaccard threshold
    and bucket sampling)."""
    lc = cfg["linking"]
    full, k = int(lc["max_group_full"]), int(lc["group_sample_k"])
    tok = v.spark.sql(f"""
        SELECT account_id, collect_list(token) AS tokens FROM {v.names[tokens]}
        GROUP BY account_id HAVING count(*) >= {int(min_tokens)}""")
    sig = tok.mapInArrow(_minhash_sig_fn(bands, rows),
                         "account_id string, sig array<bigint>, bkeys array<bigint>")
    sig_name = f"{tokens}_sig"
    v.put(sig_name, sig, checkpoint=True)
    return v.spark.sql(f"""
WITH b AS (
  SELECT account_id, pos AS band, bkey FROM {v.names[sig_name]}
  LATERAL VIEW posexplode(bkeys) t AS pos, bkey
),
g AS (
  SELECT band, bkey, account_id,
         row_number() OVER (PARTITION BY band, bkey ORDER BY account_id) - 1 AS pos,
         count(*) OVER (PARTITION BY band, bkey) AS n
  FROM b
),
g2 AS (SELECT * FROM g WHERE n >= 2),
pairs AS (
  SELECT DISTINCT least(a, b) AS a, greatest(a, b) AS b FROM (
    SELECT x.account_id AS a, y.account_id AS b
    FROM g2 x JOIN g2 y ON x.band = y.band AND x.bkey = y.bkey AND x.pos < y.pos
    WHERE x.n <= {full}
    UNION ALL
    SELECT x.account_id, y.account_id
    FROM (SELECT *, explode(sequence(1, {k})) AS j FROM g2 WHERE n > {full}) x
    JOIN g2 y ON x.band = y.band AND x.bkey = y.bkey AND y.pos = (x.pos + x.j) % x.n)
),
jac AS (
  SELECT p.a, p.b,
         CAST(size(filter(zip_with(sa.sig, sb.sig, (x, y) -> x = y), z -> z)) AS DOUBLE)
           / {bands * rows} AS j
  FROM pairs p JOIN {v.names[sig_name]} sa ON p.a = sa.account_id
               JOIN {v.names[sig_name]} sb ON p.b = sb.account_id
)
SELECT a, b, '{kind}' AS kind, {float(weight)!r} * j AS w,
       format_string('jaccard=%.2f', j) AS key, CAST(1 AS DOUBLE) AS scale
FROM jac WHERE j >= {float(min_jaccard)!r}
""")


def _sync_edges(v: _Views, cfg: Config) -> DataFrame:
    """Spark twin of ``linking.graph.sync_edges``."""
    lc = cfg["linking"]
    return _lsh_edges(v, cfg, "_sync", int(lc["sync_min_buckets"]), 16, 4,
                      float(lc["sync_min_jaccard"]), float(lc["weights"]["sync"]), "sync")


def _content_edges(v: _Views, cfg: Config) -> DataFrame | None:
    """Spark twin of ``linking.graph.content_edges`` (None when the channel is off)."""
    lc = cfg["linking"]
    cc = content_config(cfg)
    if cc is None:
        return None
    return _lsh_edges(v, cfg, "_content", int(cc["min_templates"]), int(cc["bands"]),
                      int(cc["rows"]), float(cc["min_jaccard"]),
                      float(lc["weights"]["content"]), "content")


def _spark_edges(v: _Views, cfg: Config) -> DataFrame:
    """Spark twin of ``linking.graph.build_edges``: one weighted edge per account pair."""
    caps = " ".join(f"WHEN '{kind}' THEN {float(w)!r}"
                    for kind, w in cfg["linking"]["weights"].items())
    rc = cfg["linking"].get("rotation") or {}
    # address ties the rotation discount left thin are no channel (graph.build_edges)
    thin = "" if not rc else (
        " WHERE NOT kind IN ({}) OR w >= {!r} * (CASE kind {} END)".format(
            ", ".join(f"'{kind}'" for kind in rc["kinds"]), float(rc["min_weight"]), caps))
    parts = v.spark.sql(_key_edges_sql(v.names["_keys"], cfg)).unionByName(_sync_edges(v, cfg))
    content = _content_edges(v, cfg)
    if content is not None:
        parts = parts.unionByName(content)
    v.put("_edge_parts", parts)
    v.put("_edges_raw", v.spark.sql(f"""
WITH per_kind AS (
  SELECT a, b, kind, least(sum(w), (CASE kind {caps} END) * max(scale)) AS w,
         first(key) AS key
  FROM {v.names['_edge_parts']} WHERE a <> b GROUP BY a, b, kind
)
SELECT a, b, sum(w) AS weight,
       array_join(array_sort(collect_list(kind)), ',') AS kinds,
       array_join(transform(array_sort(collect_list(struct(kind, key))),
                            x -> x.kind || '=' || x.key), '; ') AS evidence
FROM per_kind{thin} GROUP BY a, b
"""))
    # The channel conjunction (linking.keys.conjunction_sql), the same SQL as on the driver.
    v.put("_attrs", v.sql(account_attrs_sql("_keys")), persist=True)
    return v.sql(conjunction_sql("_edges_raw", "_attrs", cfg))


def connected_components(spark: SparkSession, edges: DataFrame, max_iter: int = 200
                         ) -> DataFrame:
    """(account_id, component) for every account on an edge: the smallest account id reachable,
    found by iterative min-label propagation in Spark SQL (no GraphFrames needed).

    Each round every node takes the smallest label among itself and its neighbours; it stops
    when no label changes (rounds ~ graph diameter). Every round's labels are checkpointed
    (``localCheckpoint``), which keeps each round's plan the same size.
    """
    und = edges.select(F.col("a").alias("src"), F.col("b").alias("dst")).unionByName(
        edges.select(F.col("b").alias("src"), F.col("a").alias("dst")))
    und = und.persist(StorageLevel.MEMORY_AND_DISK)
    # Round 1 straight from the edge list: each node's smallest id among itself and neighbours.
    labels = (und.groupBy(F.col("src").alias("account_id"))
              .agg(F.least(F.col("account_id"), F.min("dst")).alias("component"))
              .localCheckpoint())
    try:
        for _ in range(max_iter):
            nbr = (und.join(labels, und.src == labels.account_id)
                   .groupBy("dst").agg(F.min("component").alias("m")))
            new = (labels.join(nbr, labels.account_id == nbr.dst, "left")
                   .select("account_id",
                           F.least("component", F.coalesce("m", "component")).alias("component"),
                           F.coalesce(F.col("m") < F.col("component"), F.lit(False))
                           .alias("changed"))
                   .localCheckpoint())
            labels = new.select("account_id", "component")
            if new.filter("changed").limit(1).count() == 0:
                return labels
        raise RuntimeError(f"connected components did not converge in {max_iter} rounds")
    finally:
        und.unpersist()


def _leiden_fn(cfg: Config):
    """applyInPandas body: Leiden/CPM (``linking.graph.communities``) on one component."""
    lc = dict(cfg["linking"])

    def fn(pdf):  # pandas DataFrame: component, a, b, weight
        import pandas as pd

        from distillguard.config import Config as _C
        from distillguard.linking.graph import communities

        comp = pdf["component"].iloc[0]
        names = np.unique(np.concatenate([pdf["a"].to_numpy(), pdf["b"].to_numpy()]))
        idx = {a: i for i, a in enumerate(names)}
        e = pl.DataFrame({"a": [idx[x] for x in pdf["a"]], "b": [idx[x] for x in pdf["b"]],
                          "weight": pdf["weight"].to_numpy()})
        memb = communities(e, len(names), _C({"linking": {**lc, "min_campaign_accounts": 1}}))
        return pd.DataFrame({"account_id": names,
                             "community": [f"{comp}/{m}" for m in memb]})

    return fn


def _distributed_links(v: _Views, cfg: Config, con: duckdb.DuckDBPyConnection,
                       executor_max_edges: int) -> dict[str, Any]:
    """Edges, components and communities on Spark; communities and the edges inside them go
    to the driver store's ``communities`` / ``edges`` tables (all that scoring reads)."""
    t0 = time.perf_counter()
    edges = v.put("_edges", _spark_edges(v, cfg), checkpoint=True)
    n_edges = edges.count()
    t1 = time.perf_counter()
    v.put("_components", connected_components(v.spark, edges))
    t2 = time.perf_counter()
    ec = v.put("_ec", v.spark.sql(f"""
        SELECT c.component, e.a, e.b, e.weight FROM {v.names['_edges']} e
        JOIN {v.names['_components']} c ON e.a = c.account_id"""), persist=True)
    v.put("_comp_size", v.spark.sql(f"""
        SELECT component, count(*) AS n_edges FROM {v.names['_ec']} GROUP BY component"""),
          persist=True)
    # Components small enough go to Leiden on an executor (one pandas frame per component);
    # bigger ones keep the component as their community.
    small = v.spark.sql(f"""
        SELECT ec.* FROM {v.names['_ec']} ec JOIN {v.names['_comp_size']} s
          ON ec.component = s.component WHERE s.n_edges <= {int(executor_max_edges)}""")
    comm = small.groupBy("component").applyInPandas(
        _leiden_fn(cfg), "account_id string, community string")
    big = v.spark.sql(f"""
        SELECT c.account_id, c.component AS community FROM {v.names['_components']} c
        JOIN {v.names['_comp_size']} s ON c.component = s.component
        WHERE s.n_edges > {int(executor_max_edges)}""")
    v.put("_comm_raw", comm.unionByName(big), checkpoint=True)
    ec.unpersist()
    n_big = v.spark.sql(f"SELECT count(*) AS n FROM {v.names['_comp_size']} "
                        f"WHERE n_edges > {int(executor_max_edges)}").collect()[0]["n"]
    min_acc = int(cfg["linking"]["min_campaign_accounts"])
    labelled = v.spark.sql(f"""
        SELECT account_id, community FROM (
          SELECT account_id, community, count(*) OVER (PARTITION BY community) AS size
          FROM {v.names['_comm_raw']})
        WHERE size >= {min_acc}""")
    v.put("_comm", labelled, checkpoint=True)
    comm_t = _to_arrow(labelled)
    t3 = time.perf_counter()
    inner = _to_arrow(v.spark.sql(f"""
        SELECT e.a, e.b, e.weight, e.kinds, e.evidence, e.channels FROM {v.names['_edges']} e
        JOIN {v.names['_comm']} ca ON e.a = ca.account_id
        JOIN {v.names['_comm']} cb ON e.b = cb.account_id
        WHERE ca.community = cb.community"""))
    con.register("_dg_c", comm_t)
    con.execute("""
        CREATE OR REPLACE TABLE communities AS
        WITH ids AS (
          SELECT community, row_number() OVER (ORDER BY community) - 1 AS cid
          FROM (SELECT DISTINCT community FROM _dg_c))
        SELECT a.account_id, coalesce(ids.cid, -1)::BIGINT AS community
        FROM _dg_accounts a LEFT JOIN _dg_c c USING (account_id) LEFT JOIN ids USING (community)
        """)
    con.unregister("_dg_c")
    con.register("_dg_e", inner)
    con.execute("CREATE OR REPLACE TABLE edges AS SELECT * FROM _dg_e")
    con.unregister("_dg_e")
    # The groups table on the driver, from the keys of community members only.
    member_keys = _to_arrow(v.spark.sql(f"""
        SELECT k.account_id, k.kind, k.key FROM {v.names['_keys']} k
        LEFT SEMI JOIN {v.names['_comm']} c ON k.account_id = c.account_id"""))
    member_tokens = _to_arrow(v.spark.sql(f"""
        SELECT t.account_id, t.token FROM {v.names['_sync']} t
        LEFT SEMI JOIN {v.names['_comm']} c ON t.account_id = c.account_id"""))
    write_groups(con, pl.from_arrow(member_keys), cfg, pl.from_arrow(member_tokens))
    return {"edges": n_edges, "edges_to_driver": inner.num_rows,
            "components_over_executor_max": int(n_big),
            "communities": len(set(comm_t.column("community").to_pylist())),
            "seconds_edges": round(t1 - t0, 2), "seconds_components": round(t2 - t1, 2),
            "seconds_leiden": round(t3 - t2, 2)}


# ------------------------------------------------------------------------------------------
# partner intelligence
# ------------------------------------------------------------------------------------------

_PARTNER_COLS = ("kind", "value", "source", "confidence", "campaign_ref")


def load_partner_indicators(source: Any) -> pa.Table | None:
    """The imported partner indicators (``partner_indicators``: kind, value, source,
    confidence, campaign_ref) from ``source``: a DuckDB store file (opened read-only), a DuckDB
    connection, an Arrow table or a polars frame. None when there are none (no table)."""
    if source is None:
        return None
    if isinstance(source, pl.DataFrame):
        source = source.to_arrow()
    if isinstance(source, pa.Table):
        return source.select(list(_PARTNER_COLS))
    from distillguard.store import table_exists

    own = isinstance(source, str | os.PathLike)
    if own and not Path(source).exists():
        from distillguard.errors import StoreError

        raise StoreError(f"no DuckDB store at {source} (partner indicators)")
    con = duckdb.connect(str(source), read_only=True) if own else source.cursor()
    try:
        if not table_exists(con, "partner_indicators"):
            return None
        return con.sql(f"SELECT {', '.join(_PARTNER_COLS)} FROM partner_indicators"
                       ).to_arrow_table()
    finally:
        con.close()


_PARTNER_OUT = "account_id string, partner_hits bigint, reasons string, max_confidence bigint"


def _partner_fn(key: bytes, partner: pa.Table):
    """applyInPandas body: ``intel.match_partner_indicators`` unchanged, on an in-memory
    store of one group of accounts' distinct identifiers, IPs and skeletons (every account's
    rows are in one group, and a match depends only on the account's own rows)."""

    def fn(pdf):
        import pandas as pd

        from distillguard.intel.partner import match_partner_indicators

        con = duckdb.connect()
        try:
            con.register("_rows", pa.Table.from_pandas(pdf, preserve_index=False))
            con.register("_partner", partner)
            con.execute("CREATE TABLE requests AS SELECT account_id, ip, payment_fingerprint, "
                        "extra FROM _rows WHERE skeleton IS NULL")
            con.execute("CREATE TABLE signals AS SELECT account_id, skeleton FROM _rows "
                        "WHERE skeleton IS NOT NULL")
            con.execute("CREATE TABLE partner_indicators AS SELECT * FROM _partner")
            m = match_partner_indicators(con, key).filter(pl.col("partner_hits") > 0)
        finally:
            con.close()
        if m.height == 0:
            return pd.DataFrame({c: pd.Series(dtype=object if c in ("account_id", "reasons")
                                              else "int64")
                                 for c in ("account_id", "partner_hits", "reasons",
                                           "max_confidence")})
        return m.select("account_id", "partner_hits", "reasons", "max_confidence").to_pandas()

    return fn


def spark_partner_hits(v: _Views, key: bytes, partner: pa.Table) -> pa.Table:
    """Accounts that match partner indicators (account_id, partner_hits, reasons,
    max_confidence), as ``features._partner_hits`` finds them on a DuckDB store.

    Spark reduces the requests and signals to the distinct values the matcher reads (per
    account: its id, IPs, payment fingerprints, ``extra`` texts that may hold an email, prompt
    skeletons; each only if the partner shared indicators of that kind), groups them by
    account hash and runs the matcher per group on the executors; only hits reach the driver.
    """
    kinds = set(partner.column("kind").to_pylist())
    req, sig = v.names["requests"], v.names["signals"]
    ident = bool(kinds & {"account_hmac", "payment_hmac"})
    null = "CAST(NULL AS STRING)"
    parts = [f"SELECT DISTINCT account_id, {null} AS ip, {null} AS payment_fingerprint, "
             f"{null} AS extra, {null} AS skeleton FROM {req} WHERE account_id IS NOT NULL"]
    if kinds & {"ip", "ip_prefix"}:
        parts.append(f"SELECT DISTINCT account_id, ip, {null}, {null}, {null} FROM {req} "
                     "WHERE account_id IS NOT NULL AND ip IS NOT NULL AND ip <> ''")
    if ident:
        parts.append(f"SELECT DISTINCT account_id, {null}, payment_fingerprint, {null}, {null} "
                     f"FROM {req} WHERE account_id IS NOT NULL "
                     "AND payment_fingerprint IS NOT NULL AND payment_fingerprint <> ''")
    if "template_minhash" in kinds:
        parts.append(f"SELECT DISTINCT account_id, {null}, {null}, {null}, skeleton FROM {sig} "
                     "WHERE account_id IS NOT NULL AND skeleton IS NOT NULL")
    rows = v.spark.sql(" UNION ALL ".join(parts))
    if ident:
        # ``extra`` JSON that may carry an email: "email" in it, or written with \u escapes
        # (a superset; the matcher itself applies json_valid / json_extract_string).
        ex = v.spark.table(req).filter(
            F.col("account_id").isNotNull() & F.col("extra").isNotNull()
            & (F.col("extra").contains("mail") | F.col("extra").contains("\\u")))
        rows = rows.unionByName(ex.select(
            "account_id", F.lit(None).cast("string").alias("ip"),
            F.lit(None).cast("string").alias("payment_fingerprint"), "extra",
            F.lit(None).cast("string").alias("skeleton")).distinct())
    n = max(int(v.spark.conf.get("spark.sql.shuffle.partitions", "200")), 1)
    hits = (rows.withColumn("_g", F.pmod(F.xxhash64("account_id"), F.lit(n)))
            .groupBy("_g").applyInPandas(_partner_fn(key, partner), _PARTNER_OUT))
    return _to_arrow(hits)


def _set_partner_features(con: duckdb.DuckDBPyConnection, hits: pa.Table) -> int:
    """Put the partner hits into the driver's ``features`` as ``compute_features`` joins them
    (accounts without a hit keep 0, 0 and NULL)."""
    if hits.num_rows == 0:
        return 0
    con.register("_dg_partner", hits)
    try:
        con.execute("""
            UPDATE features SET partner_hits = p.partner_hits::DOUBLE,
                                partner_confidence = p.max_confidence::DOUBLE,
                                partner_reasons = p.reasons
            FROM _dg_partner p WHERE features.account_id = p.account_id""")
    finally:
        con.unregister("_dg_partner")
    return hits.num_rows


# ------------------------------------------------------------------------------------------
# report aggregates
# ------------------------------------------------------------------------------------------


def _report_aggregates(v: _Views, con: duckdb.DuckDBPyConnection, cfg: Config,
                       campaigns: list[dict[str, Any]], linking: str) -> Any:
    """``report.report_aggregates`` with its aggregate SQL compiled to Spark SQL and run on
    the executors; only the small results come to the driver. With distributed linking the
    driver's ``edges`` holds only edges inside communities, so the edges among campaign
    accounts and their direct neighbours are fetched for the link graph."""
    from distillguard.report import report_aggregates

    agg = report_aggregates(con, campaigns, _spark_query(v, cfg))
    if linking == "distributed":
        seeds = agg.campaign_map.table().select(["account_id"])
        v.put("_rep_seeds", F.broadcast(_from_arrow(v.spark, seeds)))
        e, s = v.names["_edges"], v.names["_rep_seeds"]
        v.put("_rep_nodes", v.spark.sql(f"""
            SELECT account_id FROM {s}
            UNION SELECT e.b FROM {e} e JOIN {s} x ON e.a = x.account_id
            UNION SELECT e.a FROM {e} e JOIN {s} x ON e.b = x.account_id"""), persist=True)
        nodes = v.names["_rep_nodes"]
        around = _to_arrow(v.spark.sql(f"""
            SELECT e.a, e.b, e.weight FROM {e} e
            JOIN {nodes} na ON e.a = na.account_id JOIN {nodes} nb ON e.b = nb.account_id"""))
        con.register("_dg_re", around)
        con.execute("CREATE OR REPLACE TABLE _dg_report_edges AS SELECT * FROM _dg_re")
        con.unregister("_dg_re")
        agg.edges = "_dg_report_edges"
    return agg


# ------------------------------------------------------------------------------------------
# the whole analysis
# ------------------------------------------------------------------------------------------


@dataclass
class SparkRun:
    """Result of :func:`run_spark`. ``store`` is the driver's DuckDB store (features, edges,
    communities, scores and the campaign members' requests/signals) for outputs."""

    scores: pl.DataFrame
    campaigns: list[dict[str, Any]]
    store: duckdb.DuckDBPyConnection
    linking: str                       # "driver" or "distributed"
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: With ``run_spark(..., report=True)``: what report.html shows of the per-request tables
    #: (``distillguard.report.Aggregates``), for ``write_report(..., aggregates=run.report)``.
    report: Any = None


def run_spark(spark: SparkSession, requests: DataFrame | str | os.PathLike | Iterable[str],
              cfg: Config | None = None, *, calibrator: Calibrator | None = None,
              progress: Any = None, driver_max_edges: int = DRIVER_MAX_EDGES,
              driver_max_tokens: int = DRIVER_MAX_TOKENS,
              executor_max_edges: int = EXECUTOR_MAX_EDGES, intel_key: bytes | None = None,
              partner_indicators: Any = None, report: bool = False,
              driver_rows_per_account: int = DRIVER_ROWS_PER_ACCOUNT) -> SparkRun:
    """signals -> features -> links -> scores on Spark; see the module docstring.

    ``intel_key`` (the sharing group's HMAC key) with ``partner_indicators`` (what
    :func:`load_partner_indicators` takes: the DuckDB store file ``distillguard intel import``
    wrote, a connection to it, or the ``partner_indicators`` table as Arrow / polars) gives
    the partner features, matched on the executors by ``intel.match_partner_indicators``.
    ``report=True`` also computes the report's aggregates (``SparkRun.report``).
    ``driver_rows_per_account`` bounds the requests of each flagged account the driver store
    keeps (:func:`_load_campaign_rows`).
    """
    from distillguard.api import Progress

    cfg = cfg or load_config()
    progress = progress or Progress()
    timings: dict[str, float] = {}
    stats: dict[str, Any] = {}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        # Tag the stage's Spark jobs so the UI, event logs and bench.spark_scale can tell
        # what each shuffle belongs to.
        sc = spark.sparkContext
        sc.setJobGroup(f"distillguard:{name}", f"distillguard {name}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
            sc.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
        timings[name] = time.perf_counter() - t0
        progress.done(name, timings[name])

    partner = None
    if intel_key is not None:
        from distillguard.intel.hashing import check_key

        check_key(intel_key)
        partner = load_partner_indicators(partner_indicators)
    report_agg = None
    v = _Views(spark)
    con = _typed_driver_store(cfg)
    try:
        with _utc(spark):
            if not isinstance(requests, DataFrame):
                requests = read_requests(spark, requests, cfg)
            v.put("requests", store_frame(requests))
            with timed("signals"):
                sig_cols = [r[0] for r in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = '_dg_signals_t' ORDER BY ordinal_position").fetchall()]
                sig = spark_signals(v, cfg, sig_cols)
                stats["requests"] = sig.count()
                progress.stage("signals", stats["requests"])(stats["requests"])
            with timed("features"):
                feats = spark_features(v, cfg)
                _insert(con, "_dg_features", feats)
                con.execute("INSERT INTO _dg_accounts SELECT account_id FROM _dg_features")
                stats["accounts"] = feats.num_rows
                # The rest of compute_features (columns added after the feature SQL) as is.
                drv = _DriverStore(con, {enriched_sql(cfg): "SELECT * FROM _dg_req_t",
                                         features_sql(cfg): "SELECT * FROM _dg_features"})
                compute_features(drv, cfg)
                drv.check("features", [features_sql(cfg)])
                con.execute("DROP TABLE IF EXISTS _req")
                if partner is not None and partner.num_rows:
                    stats["partner_accounts"] = _set_partner_features(
                        con, spark_partner_hits(v, intel_key, partner))
            with timed("linking"):
                keys = v.put("_keys", v.sql(account_keys_sql(cfg)), checkpoint=True)
                # Every account's activity tokens: sync edges keep only accounts with
                # sync_min_buckets of them (in _sync_edges), the groups' timing channel
                # reads them all, as on DuckDB.
                sync = v.put("_sync", v.sql(sync_tokens_sql(cfg)), checkpoint=True)
                with_content = content_config(cfg) is not None
                if with_content:
                    content = v.put("_content", v.sql(content_tokens_sql(cfg)),
                                    checkpoint=True)
                est = _edge_estimate(v, cfg)
                stats.update(est)
                if est["key_edges_estimate"] <= driver_max_edges and \
                        est["sync_tokens"] <= driver_max_tokens:
                    stats["linking"] = "driver"
                    _insert(con, "_dg_account_keys", _to_arrow(keys))
                    _insert(con, "_dg_sync_tokens", _to_arrow(sync))
                    answers = {
                        account_keys_sql(cfg): "SELECT * FROM _dg_account_keys",
                        sync_tokens_sql(cfg): "SELECT * FROM _dg_sync_tokens",
                        _ACCOUNTS_SQL: "SELECT DISTINCT account_id FROM _dg_accounts ORDER BY 1",
                    }
                    if with_content:
                        _insert(con, "_dg_content_tokens", _to_arrow(content))
                        answers[content_tokens_sql(cfg)] = "SELECT * FROM _dg_content_tokens"
                    drv = _DriverStore(con, answers)
                    compute_links(drv, cfg)
                    drv.check("linking", answers)
                else:
                    stats["linking"] = "distributed"
                    stats.update(_distributed_links(v, cfg, con, executor_max_edges))
                stats["edges_on_driver"] = con.execute(
                    "SELECT count(*) FROM edges").fetchall()[0][0]
            with timed("scoring"):
                scores, flagged = score_accounts(con, cfg, calibrator)
                stats["campaign_rows"] = _load_campaign_rows(v, con, scores,
                                                             driver_rows_per_account)
                campaigns = describe_campaigns(con, cfg, flagged, scores,
                                               query=_spark_query(v, cfg))
            if report:
                t0 = time.perf_counter()
                report_agg = _report_aggregates(v, con, cfg, campaigns, stats["linking"])
                timings["report_aggregates"] = time.perf_counter() - t0
    except BaseException:
        con.close()
        raise
    finally:
        v.drop()
    return SparkRun(scores, campaigns, con, stats["linking"], stats, timings, report_agg)


def _edge_estimate(v: _Views, cfg: Config) -> dict[str, int]:
    """Exact number of key pairs ``key_edges`` will emit, and the sync tokens to compare."""
    lc = cfg["linking"]
    full, k, mx = int(lc["max_group_full"]), int(lc["group_sample_k"]), int(lc["max_group"])
    row = v.spark.sql(f"""
        SELECT coalesce(sum(CASE WHEN n <= {full} THEN n * (n - 1) DIV 2 ELSE n * {k} END), 0)
                 AS pairs,
               (SELECT count(*) FROM {v.names['_keys']}) AS key_rows,
               (SELECT count(*) FROM {v.names['_sync']}) AS sync_tokens
        FROM (SELECT kind, key, count(*) AS n FROM {v.names['_keys']} GROUP BY kind, key)
        WHERE n BETWEEN 2 AND {mx}""").collect()[0]
    return {"key_edges_estimate": int(row["pairs"]), "key_rows": int(row["key_rows"]),
            "sync_tokens": int(row["sync_tokens"])}


def analyse_spark(spark: SparkSession, requests: DataFrame | str | os.PathLike | Iterable[str],
                  cfg: Config | None = None, *, calibrator: Calibrator | None = None,
                  progress: Any = None, timings: dict[str, float] | None = None,
                  stats: dict[str, Any] | None = None, intel_key: bytes | None = None,
                  partner_indicators: Any = None,
                  **limits: int) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Mirror of :func:`distillguard.api.analyse` on Spark: (scores, campaigns).

    ``requests`` is a DataFrame with the store columns (see :func:`store_frame`) or input
    path(s) / URIs for :func:`read_requests`. ``limits`` are the boundaries of
    :func:`run_spark` (``driver_max_edges``, ``driver_max_tokens``, ``executor_max_edges``).
    ``timings`` / ``stats`` (dicts) receive per-stage seconds and run facts (row counts, edge
    estimate, ``linking``: "driver" or "distributed"). ``intel_key`` and
    ``partner_indicators`` (the imported partner intelligence, see :func:`run_spark`) give the
    partner features, as ``analyse(..., intel_key=...)`` does on the store holding them.
    """
    run = run_spark(spark, requests, cfg, calibrator=calibrator, progress=progress,
                    intel_key=intel_key, partner_indicators=partner_indicators, **limits)
    run.store.close()
    if timings is not None:
        timings.update(run.timings)
    if stats is not None:
        stats.update(run.stats)
    return run.scores, run.campaigns

