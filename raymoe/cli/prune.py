"""`raymoe prune`: write a pruned checkpoint from a plan file (`--plan PLAN.json SOURCE --out DIR`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from raymoe.errors import RaymoeError

__all__ = ["Prune"]


class Prune:
    help = "write a pruned checkpoint: from a plan (--plan PLAN.json SOURCE) or a method (STATS --method NAME)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("source", help="source checkpoint directory (with --plan)")
        p.add_argument("--plan", type=Path, help="plan.json to apply")
        p.add_argument("--out", type=Path, required=True, help="output checkpoint directory (must not exist)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from raymoe.checkpoint import apply_plan
        from raymoe.plan import PrunePlan

        if args.plan is None:
            raise RaymoeError("give --plan PLAN.json (method-driven pruning: --method NAME)")
        plan = PrunePlan.load(args.plan)
        out = apply_plan(args.source, plan, args.out, overwrite=args.overwrite, progress=not args.quiet)
        counts = plan.counts()
        print(f"wrote {out} ({sum(counts.values())} routed experts kept over {len(counts)} MoE layers)")
        return 0
