"""`raymoe prune`: write a pruned checkpoint from a plan file or from a method.

    raymoe prune --plan PLAN.json SOURCE --out DIR
    raymoe prune STATS --method NAME --ratio R [--uniform] [--option k=v ...] --out VARIANT

The method form validates the method, its options and the ratio before any
work, plans from the stats store (the source checkpoint is the one the stats
manifest names), and writes VARIANT (the pruned checkpoint with its plan.json)
through `apply_plan`, atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from raymoe.errors import RaymoeError

__all__ = ["Prune", "parse_option_pairs"]


def parse_option_pairs(pairs: list[str] | None) -> dict:
    """["k=v", ...] -> {k: v}; a value is read as JSON when it parses (numbers, true/false, null), else text."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RaymoeError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class Prune:
    help = "write a pruned checkpoint: from a plan (--plan PLAN.json SOURCE) or a method (STATS --method NAME)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("source", help="source checkpoint directory (with --plan), or stats directory (with --method)")
        p.add_argument("--plan", type=Path, help="plan.json to apply")
        p.add_argument("--method", help="pruning method (see `raymoe methods`)")
        p.add_argument("--ratio", type=float, help="fraction of routed experts removed, in (0, 1)")
        p.add_argument("--uniform", action="store_true", help="same kept count in every MoE layer")
        p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
        p.add_argument("--out", type=Path, required=True, help="output checkpoint directory (must not exist)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from raymoe.checkpoint import apply_plan
        from raymoe.plan import PrunePlan

        if args.plan is not None and args.method is not None:
            raise RaymoeError("give either --plan PLAN.json or --method NAME, not both")
        if args.plan is None and args.method is None:
            raise RaymoeError("give --plan PLAN.json, or --method NAME --ratio R (see `raymoe methods`)")
        if args.plan is not None:
            if args.ratio is not None or args.uniform or args.option:
                raise RaymoeError("--ratio/--uniform/--option go with --method, not --plan")
            plan = PrunePlan.load(args.plan)
            source = args.source
        else:
            plan, source = self._plan_from_method(args)
        out = apply_plan(source, plan, args.out, overwrite=args.overwrite, progress=not args.quiet)
        counts = plan.counts()
        print(f"wrote {out} ({sum(counts.values())} routed experts kept over {len(counts)} MoE layers)")
        return 0

    def _plan_from_method(self, args: argparse.Namespace):
        from raymoe.methods import METHODS, validate
        from raymoe.methods.common import model_path

        if args.ratio is None:
            raise RaymoeError("--method needs --ratio R (the fraction of routed experts removed, in (0, 1))")
        if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
            raise RaymoeError(f"output directory {str(args.out)!r} already holds files; choose another --out")
        options = parse_option_pairs(args.option)
        if args.method in METHODS and "progress" in METHODS.get(args.method).Config.model_fields:
            options.setdefault("progress", not args.quiet)
        # method, options and ratio are checked before the stats are read, the budget right after
        request = validate(args.source, args.method, args.ratio, uniform=args.uniform, options=options)
        return request.run(), model_path(request.stats)
