"""Execution engines for the detection stages.

The stages are defined once (SQL text in DuckDB's dialect plus a few Python functions); an
engine decides where they run:

``duckdb`` (default)
    :func:`distillguard.api.analyse` on the embedded store, one machine.
``spark``
    :func:`distillguard.engines.spark.analyse_spark`: the per-request stages (signals, MinHash
    templates, features, link keys) run on Apache Spark, the per-account stages (linking,
    scoring, campaign description) on the driver with the same code as ``duckdb``. Needs
    ``pyspark`` and Java; see docs/spark.md.

Importing this package does not import pyspark.
"""

from __future__ import annotations

ENGINES = ("duckdb", "spark")

__all__ = ["ENGINES"]
