"""Analyst report: one self-contained HTML page (no scripts, no external resources).

>>> from distillguard.report import write_report
>>> write_report(Path("results/report.html"), con, campaigns, summary)  # doctest: +SKIP
"""

from ._data import Aggregates
from ._html import rank_campaigns, report_aggregates, write_report

__all__ = ["Aggregates", "rank_campaigns", "report_aggregates", "write_report"]
