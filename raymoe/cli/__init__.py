"""`raymoe` command line: one class per subcommand, imported only when chosen.

A subcommand class has `help: str`, `add_arguments(parser)` and `run(args) -> int`.
User errors (`RaymoeError`) end with one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from raymoe.errors import RaymoeError
from raymoe.registry import Registry

__all__ = ["main", "SUBCOMMANDS"]

#: subcommand name -> "module:Class"; heavy imports happen only for the chosen one.
SUBCOMMANDS: Registry[type] = Registry("subcommand", {
    "calibrate": "raymoe.cli.calibrate:Calibrate",
    "eval": "raymoe.cli.eval:Eval",
    "methods": "raymoe.cli.methods:Methods",
    "prune": "raymoe.cli.prune:Prune",
    "report": "raymoe.cli.report:Report",
    "run": "raymoe.cli.run:Run",
    "smoke": "raymoe.cli.smoke:Smoke",
    "testbed": "raymoe.cli.testbed:Testbed",
})

_HELP: dict[str, str] = {
    "calibrate": "stream calibration text through Ray stage actors, write a stats directory",
    "eval": "score variants on lm-eval tasks with a Ray fleet of vLLM or transformers workers",
    "methods": "list pruning methods with their options and defaults",
    "prune": "write a pruned checkpoint from a plan (or a method)",
    "report": "Markdown + PNG plots from a run's results",
    "run": "run (or resume) a sweep spec: calibrate, plan, apply, evaluate, report",
    "smoke": "build a tiny model, prune it, check it loads (the main job until sweeps exist)",
    "testbed": "MoEfy SmolLM2-135M into the offline real-data testbed MoE (cached)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="raymoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        sub.add_parser(name, help=_HELP.get(name, ""), add_help=False)
    # parse the command name first, then build only that subcommand's parser
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    if not known.command:
        parser.print_help()
        return 2
    cmd = SUBCOMMANDS.get(known.command)()
    cmd_parser = argparse.ArgumentParser(prog=f"raymoe {known.command}", description=cmd.help)
    cmd.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(cmd.run(args) or 0)
    except RaymoeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
