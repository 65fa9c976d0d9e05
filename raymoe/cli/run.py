"""`raymoe run SPEC.yaml`: the whole sweep (calibrate, plan, apply, evaluate, report), resumable."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["Run"]


class Run:
    help = "run (or resume) a sweep spec: calibrate once, plan every variant, evaluate (virtually or as checkpoints), report"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("spec", type=Path, help="sweep spec YAML (see jobs/)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--materialize", action="store_true",
                       help="write every variant as a checkpoint (default: pruning plans are scored virtually on "
                            "the source model, only merges and the spec's `materialize` list are written)")

    def run(self, args: argparse.Namespace) -> int:
        from raymoe.sweep.sweep_spec import load_spec

        spec = load_spec(args.spec)  # every check that needs no Ray: names, ratios, model, tasks
        if args.materialize:
            spec = spec.model_copy(update={"materialize": True})
        from raymoe.sweep.pipeline import run_sweep

        t0 = time.perf_counter()
        run_dir = run_sweep(spec, progress=not args.quiet)
        print(f"sweep {spec.name} finished in {time.perf_counter() - t0:.0f} s")
        print(f"results: {run_dir / 'results.parquet'}")
        print(f"report: {run_dir / 'report' / 'report.md'}")
        return 0
