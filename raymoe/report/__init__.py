"""Reports: Markdown tables and PNG plots from a run's Parquet results."""

from raymoe.report.build import build_report, primary_metrics

__all__ = ["build_report", "primary_metrics"]
