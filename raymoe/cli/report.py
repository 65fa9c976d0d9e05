"""`raymoe report RESULTS`: Markdown + PNG plots for a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["Report"]


class Report:
    help = "write RESULTS/report/report.md and plots from a run's results.parquet"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("results", type=Path, help="run directory (or a results .parquet file)")
        p.add_argument("--stats", type=Path, default=None, help="stats store for the importance heatmap")

    def run(self, args: argparse.Namespace) -> int:
        from raymoe.report import build_report

        path = build_report(args.results, args.stats)
        print(f"report: {path}")
        return 0
