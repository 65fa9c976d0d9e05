"""Benchmark apply_plan: peak extra memory and throughput, as ratios measured in one run.

    .venv/bin/python bench/apply.py [--hidden 768 --intermediate 1536 --layers 4 --shard 80MB --repeat 3]

Builds a random multi-shard Mixtral checkpoint (>= 200 MB, float32), then in this run
applies 50% plans (keep 4 of 8 per layer):
- `prune`: no merges;
- `merge`: plus one 2-expert merge group per layer (computed in float32);
- `merge-aligned`: the same group with a neuron permutation of the merged-away member
  (raymoe/plan/alignment.py), the case the issue's targets are for;
- `merge-all-aligned`: every removed expert merged into a kept one, all aligned (what
  hc-smoe / m-smoe / c-prune-merge plans look like: every kept expert is computed).
Each case runs `--repeat` times; every repetition first copies the shards (the reference
throughput: bytes / s of a plain file copy, measured right before, so load drifts on the
shared machine hit both) and then applies the plan, sampling this process's RSS every
2 ms in a thread; peak extra RSS = max RSS during apply - RSS before. The process runs
with MALLOC_MMAP_THRESHOLD_=65536 (set by re-executing itself), so freed buffers leave
RSS and each case's peak is its own, not memory retained from an earlier case.
Prints per case the median over repetitions of apply throughput / copy throughput over
the bytes each writes (target >= 0.5) and the max of peak extra RSS / largest source
tensor (target <= 3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def sample_peak(stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process()
    peak = 0
    while not stop.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.002)
    out.append(peak)


def timed_copy(files: list[Path], dst: Path) -> float:
    dst.mkdir()
    t0 = time.perf_counter()
    for f in files:
        shutil.copyfile(f, dst / f.name)
    dt = time.perf_counter() - t0
    shutil.rmtree(dst)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shard", default="80MB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # see the docstring: per-case peaks
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))

    from raymoe.checkpoint import apply_plan
    from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint
    from raymoe.plan import Alignment, LayerPlan, MergeGroup, PrunePlan
    from raymoe.testing import build_tiny_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="raymoe-bench-apply-"))
    src = build_tiny_model("mixtral", work / "src", hidden=args.hidden, intermediate_size=args.intermediate,
                           layers=args.layers, max_shard_size=args.shard, num_attention_heads=8,
                           num_key_value_heads=8)
    spec = MoeModelSpec.from_pretrained(src)
    ckpt = SafetensorsCheckpoint(src)
    largest = max(i.nbytes for i in ckpt.infos.values())
    print(f"checkpoint: {ckpt.total_bytes / 1e6:.0f} MB in {len(ckpt.files)} shards, "
          f"largest tensor {largest / 1e6:.1f} MB")
    assert ckpt.total_bytes >= 200e6, "benchmark checkpoint must be at least 200 MB"

    merge = [MergeGroup(target=0, members=[0, 1], weights=[0.6, 0.4])]
    merge_all = [MergeGroup(target=t, members=[t, t + 1], weights=[0.6, 0.4]) for t in (0, 2, 4, 6)]
    rng = np.random.default_rng(0)

    def alignment(merges):
        perms = {l: {m: rng.permutation(spec.expert_intermediate) for g in merges for m in g.members[1:]}
                 for l in spec.moe_layers}
        return Alignment.from_permutations(perms, spec.expert_intermediate, "weights")

    cases = (("prune", [], None), ("merge", merge, None), ("merge-aligned", merge, alignment(merge)),
             ("merge-all-aligned", merge_all, alignment(merge_all)))
    for name, merges, align in cases:
        layers = [LayerPlan(layer=l, num_experts=8, keep=[0, 2, 4, 6], merges=merges) for l in spec.moe_layers]
        plan = PrunePlan(method="bench", model=str(src), model_type="mixtral", layers=layers, alignment=align)
        ratios, extras = [], []
        for rep in range(args.repeat):
            t_copy = timed_copy(ckpt.files, work / "copy")
            base = psutil.Process().memory_info().rss
            stop, peak = threading.Event(), []
            th = threading.Thread(target=sample_peak, args=(stop, peak))
            th.start()
            t0 = time.perf_counter()
            out = apply_plan(src, plan, work / name, progress=False)
            t_apply = time.perf_counter() - t0
            stop.set()
            th.join()
            written = SafetensorsCheckpoint(out).total_bytes
            ratios.append((written / t_apply) / (ckpt.total_bytes / t_copy))
            extras.append(peak[0] - base)
            print(f"[{name}] rep {rep}: copy {ckpt.total_bytes / t_copy / 1e6:.0f} MB/s, apply {written / 1e6:.0f} MB "
                  f"in {t_apply:.2f} s = {written / t_apply / 1e6:.0f} MB/s, peak extra RSS {extras[-1] / 1e6:.1f} MB")
            shutil.rmtree(out)
        print(f"[{name}] RATIO peak_extra_rss / largest_tensor = {max(extras) / largest:.2f}  (target <= 3)")
        print(f"[{name}] RATIO apply_throughput / copy_throughput = {statistics.median(ratios):.2f} "
              f"(median of {args.repeat}; min {min(ratios):.2f}, max {max(ratios):.2f})  (target >= 0.5)")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
