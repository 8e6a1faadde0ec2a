"""Ingest: log files → the ``requests`` table of the store."""

from distillguard.ingest.core import FileReport, IngestReport, ingest_files

__all__ = ["FileReport", "IngestReport", "ingest_files"]
