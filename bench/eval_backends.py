"""Loglikelihood throughput of the vLLM worker vs the transformers worker, on one model and task.

    .venv/bin/python bench/eval_backends.py [--model DIR] [--task arc_easy:200]

Both workers are the fleet's Ray actors (the vLLM one in .venv-vllm); each
loads the model, builds the task's lm-eval requests, runs a short warm-up,
then times `lm.loglikelihood` over all of the task's loglikelihood requests.
Prints requests/s for each and the ratio vLLM / HF. Without --model a tiny
random Mixtral is built (dimensions vLLM's CPU attention supports).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--task", default="arc_easy:200")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--vllm-python", type=Path, default=None)
    args = ap.parse_args()
    for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1",
                 "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)

    import ray

    from raymoe.eval.backends import actor_options, check_backend, worker_class
    from raymoe.eval.options import EngineOptions
    from raymoe.eval.tasks import check_task, parse_tasks

    [task] = parse_tasks(args.task)
    check_task(task.name)
    model = args.model
    if model is None:
        from raymoe.testing import build_tiny_model

        model = build_tiny_model("mixtral", Path(tempfile.mkdtemp(prefix="raymoe-bench-")) / "mixtral", hidden=64,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    opts = EngineOptions(dtype=args.dtype, vllm_python=args.vllm_python)
    check_backend("vllm", opts, [str(model)])
    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    results = {}
    for backend in ("hf", "vllm"):  # one at a time: they would compete for the same cores
        t0 = time.perf_counter()
        worker = worker_class(backend).options(**actor_options(backend, opts, 1)).remote(f"bench-{backend}", opts)
        results[backend] = ray.get(worker.loglikelihood_throughput.remote(str(model.resolve()), task))
        results[backend]["total_s"] = time.perf_counter() - t0
        ray.kill(worker)
    ray.shutdown()
    print(f"model {model}  task {task}  dtype {args.dtype}  cpus {os.cpu_count()}")
    for backend, r in results.items():
        print(f"{backend:5s} {r['version']:22s} {r['requests']} loglikelihood requests in {r['seconds']:.2f} s "
              f"= {r['per_s']:.1f} req/s  (engine load {r['load_s']:.1f} s, actor total {r['total_s']:.1f} s)")
    print(f"throughput ratio vLLM / HF = {results['vllm']['per_s'] / results['hf']['per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
