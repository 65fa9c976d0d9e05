"""Virtual against materialised variants: one sweep on the testbed run both ways, in one process.

The same 10 pruning variants (5 methods x 2 ratios, the main job's calibration) are scored on the same
tasks twice, each time in a fresh run directory (the testbed build and the calibration are cached and
shared, so both runs do only planning and evaluation):
- `virtual` (the default): plans written, scored on the source model with experts masked;
- `materialized` (`raymoe run --materialize`): every variant applied into a checkpoint, then scored.
Printed: wall time, bytes written under the run directory (checkpoints, plans, rows), engine loads
(`steps.json`, from the workers' own counts) and the largest difference between the two runs' values.

    python bench/virtual_sweep.py                   # 2 workers; tasks kld:wiki_heldout:10, wiki_heldout_ppl:10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

METHODS = ("frequency", "reap", "soft-count", "ean", "c-prune")


def spec(out: Path, args) -> dict:
    from raymoe.eval.tasks import parse_tasks

    tasks = parse_tasks(args.tasks)
    return {"name": out.name, "model": "testbed",
            "calibration": {"data": "wiki_calib", "samples": 32, "seq_len": 256, "stages": 2, "replicas": 1},
            "methods": [{"name": m} for m in METHODS], "ratios": [0.25, 0.5],
            "eval": {"tasks": [t.name for t in tasks], "limits": {t.name: t.limit for t in tasks if t.limit},
                     "backend": "hf", "workers": args.workers},
            "resources": {"num_cpus": args.workers + 2}, "baseline": False, "output": str(out)}


def bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(mode: str, root: Path, args) -> dict:
    from raymoe.sweep.pipeline import run_sweep
    from raymoe.sweep.sweep_spec import load_spec

    out = root / mode
    spec_file = root / f"{mode}.yaml"
    spec_file.write_text(yaml.safe_dump(spec(out, args) | {"materialize": mode == "materialized"}))
    t0 = time.perf_counter()
    run_sweep(load_spec(spec_file), progress=False)
    wall = time.perf_counter() - t0
    import polars as pl

    steps = json.loads((out / "steps.json").read_text())
    return {"mode": mode, "wall_s": wall, "bytes": bytes_under(out), "loads": steps["engine_loads"],
            "virtual": steps["virtual_variants"],
            "values": pl.read_parquet(out / "results.parquet").sort("variant", "task", "metric")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", default="kld:wiki_heldout:10,wiki_heldout_ppl:10")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    args = p.parse_args()
    for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                 "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("RAYMOE_CACHE", str(Path("results/.cache").resolve()))  # the cached testbed and stats
    root = Path(tempfile.mkdtemp(prefix="virtual-sweep-", dir=Path("results").resolve()))
    try:
        runs = [run(mode, root, args) for mode in ("virtual", "materialized")]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    v, m = runs
    assert v["values"].select("variant", "task", "metric").equals(m["values"].select("variant", "task", "metric"))
    diff = (v["values"]["value"] - m["values"]["value"]).abs() / m["values"]["value"].abs().clip(lower_bound=1.0)
    print(f"10 variants ({', '.join(METHODS)} at 25% and 50%), tasks {args.tasks}, {args.workers} workers")
    print(f"{'mode':>13} {'wall (s)':>9} {'written (MiB)':>14} {'engine loads':>13} {'virtual':>8}")
    for r in runs:
        print(f"{r['mode']:>13} {r['wall_s']:>9.1f} {r['bytes'] / 2**20:>14.1f} {r['loads']:>13} {r['virtual']:>8}")
    print(f"materialized / virtual: wall {m['wall_s'] / v['wall_s']:.2f}x, bytes {m['bytes'] / v['bytes']:.0f}x; "
          f"largest relative difference of a value {float(diff.max()):.2e}")


if __name__ == "__main__":
    main()
