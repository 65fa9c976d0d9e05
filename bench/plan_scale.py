"""Plan time and peak memory of every method at DeepSeek-V3 and Qwen3-235B scale (synthetic statistics).

    .venv/bin/python bench/plan_scale.py                       # both scales, every method, ratio 0.5
    .venv/bin/python bench/plan_scale.py --scales qwen3_235b --methods reap,naee

Statistics come from raymoe.methods.synthetic (a miniature calibration of a seeded
synthetic model): DeepSeek-V3 = 58 MoE layers x 256 routed experts, top-8,
n_group 8; Qwen3-235B = 94 x 128, top-8; 10 calibration clusters. The hidden
width is `--hidden` (default 1024, not 7168/4096: it sets the size of probe
inputs and mean outputs, and the synthetic experts' cost). They are saved once
as a stats store (raymoe.store.save_stats) under --work; every method then runs
in its own subprocess that loads the store and plans; its peak RSS is the
process's VmHWM (/proc/self/status: per address space, so unlike ru_maxrss it does
not inherit the parent's footprint across fork/exec) and includes the loaded stats.
Plan time excludes loading the store and first imports of third-party modules
(both printed). Targets: <= 60 s and <= 8 GB per method, each with its defaults (Pathfinder's
diversified path search until the paths cover the budget, C-Prune's votes over 60 batches and
its global re-clustering, C-GNN-PRUNE including GNN training; NAEE greedy at this scale). Methods needing expert
weights (naee, c-prune) get the synthetic model's weights view.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OPTIONS: dict[str, dict] = {}  # every method with its defaults
#: third-party modules a method imports on first use (timed apart from planning)
HEAVY_IMPORTS = {"c-gnn-prune": ["torch_geometric.nn", "graspologic_native"],
                 "c-prune": ["scipy.cluster.hierarchy"], "c-prune-merge": ["scipy.cluster.hierarchy"]}


def _hwm_gb() -> float:
    """Peak resident set of this process (VmHWM), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(args: argparse.Namespace) -> int:
    import torch

    from raymoe.methods import make_plan
    from raymoe.methods.synthetic import SyntheticWeights
    from raymoe.store import load_stats

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    t0 = time.perf_counter()
    stats = load_stats(args.stats)
    load_s = time.perf_counter() - t0
    rss_loaded = _hwm_gb()
    syn = stats.manifest.data["synthetic_model"]
    weights = SyntheticWeights(stats.manifest.model.config, rank=syn["rank"], seed=syn["seed"])
    options = json.loads(args.options)
    t0 = time.perf_counter()
    for module in HEAVY_IMPORTS.get(args.method, []):
        importlib.import_module(module)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = make_plan(stats, args.method, args.ratio, uniform=args.uniform, options=options, weights=weights)
    plan_s = time.perf_counter() - t0
    if args.method == "pathfinder":  # the frequency heatmap (layer x expert), as the paper's Figure 2
        from raymoe.methods.heatmap import save_heatmap

        save_heatmap(plan, "path_freq", Path(args.stats).parent / f"{Path(args.stats).name}-pathfinder-heatmap")
    counts = list(plan.counts().values())
    print(json.dumps({"method": args.method, "load_s": round(load_s, 2), "import_s": round(import_s, 2),
                      "plan_s": round(plan_s, 2),
                      "rss_after_load_gb": round(rss_loaded, 3),
                      "peak_rss_gb": round(_hwm_gb(), 3),
                      "kept": sum(counts), "min_n": min(counts), "max_n": max(counts),
                      "options": plan.config}))
    return 0


def _stats_dir(scale: str, args: argparse.Namespace) -> Path:
    return args.work / f"{scale}-h{args.hidden}-s{args.sequences}x{args.seq_len}"


def _make_stats(scale: str, args: argparse.Namespace) -> Path:
    """Simulate and save the statistics in a subprocess (the parent stays small)."""
    out = _stats_dir(scale, args)
    if (out / "manifest.json").is_file():
        print(f"[{scale}] reusing statistics {out}")
        return out
    cmd = [sys.executable, __file__, "--generate", scale, "--hidden", str(args.hidden), "--sequences",
           str(args.sequences), "--seq-len", str(args.seq_len), "--probe-tokens", str(args.probe_tokens),
           "--work", str(args.work)]
    subprocess.run(cmd, check=True)
    return out


def _generate(args: argparse.Namespace) -> int:
    from raymoe.methods.synthetic import SyntheticWeights, scale_config, simulate_stats
    from raymoe.store import save_stats

    scale, out = args.generate, _stats_dir(args.generate, args)
    t0 = time.perf_counter()
    weights = SyntheticWeights(scale_config(scale, hidden=args.hidden), rank=8, seed=0)
    stats = simulate_stats(weights, sequences=args.sequences, seq_len=args.seq_len, clusters=10,
                           probe_tokens=args.probe_tokens, seed=0)
    stats.manifest.data["synthetic_model"] = {"rank": 8, "seed": 0}
    gen_s = time.perf_counter() - t0
    save_stats(stats, out)
    spec = weights.spec
    print(f"[{scale}] statistics: {len(spec.moe_layers)} MoE layers x {max(spec.experts.values())} experts, "
          f"top-{spec.top_k}, n_group {spec.n_group}, hidden {args.hidden}, "
          f"{args.sequences * args.seq_len} tokens, {args.probe_tokens} probe tokens, 10 clusters; "
          f"simulated in {gen_s:.1f} s, saved in {time.perf_counter() - t0 - gen_s:.1f} s -> {out}", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="deepseek_v3,qwen3_235b")
    p.add_argument("--methods", default="all")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--uniform", action="store_true")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--probe-tokens", type=int, default=32)
    p.add_argument("--work", type=Path, default=Path("results/bench_plan_scale"))
    p.add_argument("--timeout", type=int, default=600)
    # child mode (one method in its own process)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--generate", help=argparse.SUPPRESS)
    p.add_argument("--stats", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)
    if args.generate:
        return _generate(args)

    from raymoe.methods import METHODS

    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    rows = []
    for scale in args.scales.split(","):
        stats_dir = _make_stats(scale, args)
        for m in methods:
            cmd = [sys.executable, __file__, "--child", "--stats", str(stats_dir), "--method", m,
                   "--ratio", str(args.ratio), "--options", json.dumps(DEFAULT_OPTIONS.get(m, {}))]
            cmd += ["--uniform"] if args.uniform else []
            t0 = time.perf_counter()
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"[{scale}] {m:14s} TIMEOUT after {args.timeout} s", flush=True)
                continue
            wall = time.perf_counter() - t0
            line = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if res.returncode or not line:
                print(f"[{scale}] {m:14s} FAILED rc={res.returncode}: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(line[-1]) | {"scale": scale, "process_s": round(wall, 1)}
            rows.append(r)
            ok = "ok " if r["plan_s"] <= 60 and r["peak_rss_gb"] <= 8 else "OVER"
            print(f"[{scale}] {m:14s} plan {r['plan_s']:7.2f} s  peak RSS {r['peak_rss_gb']:6.2f} GB "
                  f"(after load {r['rss_after_load_gb']:.2f} GB; load {r['load_s']:.1f} s, imports "
                  f"{r['import_s']:.1f} s, process {wall:.0f} s)  "
                  f"kept {r['kept']} (n_l {r['min_n']}..{r['max_n']})  {ok}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
