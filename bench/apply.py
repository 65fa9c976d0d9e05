"""Benchmark apply_plan: peak extra memory and throughput, as ratios measured in one run.

    .venv/bin/python bench/apply.py [--hidden 768 --intermediate 1536 --layers 4 --shard 80MB]

Builds a random multi-shard Mixtral checkpoint (>= 200 MB), then in this run:
- copies its shards (the reference throughput: bytes / s of a plain file copy),
- applies two 50% plans: `prune` (keep 4 of 8 per layer) and `merge` (the same
  plus one 2-expert merge group per layer, computed in float32), sampling this
  process's RSS every 2 ms in a thread; peak extra RSS = max RSS during apply -
  RSS before.
Prints, per plan, peak extra RSS / largest source tensor (target <= 3) and
apply throughput / copy throughput over the bytes each writes (target >= 0.5).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil


def sample_peak(stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process()
    peak = 0
    while not stop.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.002)
    out.append(peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shard", default="80MB")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    from raymoe.checkpoint import apply_plan
    from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint
    from raymoe.plan import LayerPlan, MergeGroup, PrunePlan
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

    t0 = time.perf_counter()
    (work / "copy").mkdir()
    for f in ckpt.files:
        shutil.copyfile(f, work / "copy" / f.name)
    t_copy = time.perf_counter() - t0
    copy_rate = ckpt.total_bytes / t_copy

    print(f"copy : {ckpt.total_bytes / 1e6:.0f} MB in {t_copy:.2f} s = {copy_rate / 1e6:.0f} MB/s")
    merge = [MergeGroup(target=0, members=[0, 1], weights=[0.6, 0.4])]
    for name, merges in (("prune", []), ("merge", merge)):
        layers = [LayerPlan(layer=l, num_experts=8, keep=[0, 2, 4, 6], merges=merges) for l in spec.moe_layers]
        plan = PrunePlan(method="bench", model=str(src), model_type="mixtral", layers=layers)
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
        apply_rate = written / t_apply
        extra = peak[0] - base
        print(f"[{name}] apply: {written / 1e6:.0f} MB in {t_apply:.2f} s = {apply_rate / 1e6:.0f} MB/s, "
              f"peak extra RSS {extra / 1e6:.1f} MB")
        print(f"[{name}] RATIO peak_extra_rss / largest_tensor = {extra / largest:.2f}  (target <= 3)")
        print(f"[{name}] RATIO apply_throughput / copy_throughput = {apply_rate / copy_rate:.2f}  (target >= 0.5)")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
