"""Do the seed methods' own modules decide? Figures on a stored calibration (e.g. the testbed's).

    .venv/bin/python bench/seed_methods.py --stats results/.cache/stats/<id>

Prints, at 25% and 50% removal, uniform and global:
- Pathfinder: kept experts that differ from the node-weight-only plan (`paths=false`), the share of
  kept slots that path frequency decides (above every removed expert of the layer), search rounds;
  and the share of log-edge variance that row + column effects explain for each edge definition
  (near 1: the path score splits into per-node terms and the paths decide nothing).
- C-GNN-PRUNE: importance (saliency x usage) kept relative to plain top-n by that importance, mean and
  minimum over layers, and kept experts that differ from top-n.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _keep(plan) -> dict[int, set[int]]:
    return {lp.layer: set(lp.keep) for lp in plan.layers}


def _differ(a, b) -> int:
    ka, kb = _keep(a), _keep(b)
    return sum(len(ka[l] - kb[l]) for l in ka)


def _freq_decided(plan) -> float:
    decided = kept = 0
    for lp in plan.layers:
        f = np.asarray(lp.scores["path_freq"])
        removed = np.setdiff1d(np.arange(lp.num_experts), lp.keep)
        top_removed = f[removed].max() if len(removed) else -1
        decided += int((f[lp.keep] > top_removed).sum())
        kept += len(lp.keep)
    return decided / kept


def main() -> int:
    from raymoe.methods import make_plan
    from raymoe.methods.pathfinder import edge_log_weights, row_column_share
    from raymoe.store import load_stats

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stats", type=Path, required=True)
    args = ap.parse_args()
    stats = load_stats(args.stats)
    print("| edges | row + column share of log-edge variance (mean over transitions and clusters) |")
    print("|---|---|")
    for mode in ("full", "routed", "corrected"):
        share = np.mean([row_column_share(w) for e in edge_log_weights(stats, mode, 1e-9) for w in e])
        print(f"| {mode} | {share:.3f} |")
    print()
    print("| ratio | mode | pathfinder: differ from node-weight plan | path-frequency decided | rounds | s | "
          "c-gnn-prune: importance kept / top-n, mean (min) | differ from top-n |")
    print("|---|---|---|---|---|---|---|---|")
    for ratio in (0.25, 0.5):
        for uniform in (True, False):
            t0 = time.perf_counter()
            pf = make_plan(stats, "pathfinder", ratio, uniform=uniform)
            dt = time.perf_counter() - t0
            nw = make_plan(stats, "pathfinder", ratio, uniform=uniform, options={"paths": False})
            rounds = int(pf.layers[0].scores["search_rounds"][0])
            cg = make_plan(stats, "c-gnn-prune", ratio, uniform=uniform)
            top = make_plan(stats, "c-gnn-prune", ratio, uniform=uniform, options={"communities": False})
            kept = []
            for a, b in zip(cg.layers, top.layers):
                s = stats.layers[a.layer]
                imp = s.reap * s.usage  # [E] activation-aware importance
                kept.append(imp[a.keep].sum() / max(imp[b.keep].sum(), 1e-12))
            print(f"| {ratio:g} | {'uniform' if uniform else 'global'} | {_differ(pf, nw)} of "
                  f"{sum(len(lp.keep) for lp in pf.layers)} | {_freq_decided(pf):.1%} | {rounds} | {dt:.1f} | "
                  f"{np.mean(kept):.3f} ({np.min(kept):.3f}) | {_differ(cg, top)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
