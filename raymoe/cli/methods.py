"""`raymoe methods`: the registered pruning methods, their options and defaults."""

from __future__ import annotations

import argparse
import json

__all__ = ["Methods"]


class Methods:
    help = "list pruning methods with their options and defaults"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("name", nargs="?", help="show one method only")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, args: argparse.Namespace) -> int:
        from raymoe.methods import describe_methods, load_method

        if args.name:
            load_method(args.name)  # unknown name: error listing the known ones
        rows = [m for m in describe_methods() if not args.name or m["name"] == args.name]
        if args.json:
            print(json.dumps(rows, indent=1, default=str))
            return 0
        for m in rows:
            print(f"{m['name']}  (weights: {m['weights']}; allocation: global, or uniform with --uniform)")
            print(f"    {m['summary']}")
            for o in m["options"]:
                print(f"    --option {o['name']}={o['default']}  [{o['type']}]  {o['help']}")
            if not m["options"]:
                print("    (no options)")
        return 0
