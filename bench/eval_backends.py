"""Loglikelihood and perplexity throughput of the eval engines, new scoring against stock, in one run.

    .venv/bin/python bench/eval_backends.py --model results/.cache/testbed/testbed-<id> \\
        --tasks arc_easy:100,piqa:100,wiki_heldout_ppl:20 [--engines hf-stock,hf-shared,vllm-stock,vllm-shared]

Each engine is a fleet worker actor (vLLM ones in .venv-vllm), started one at a
time (they would compete for the same cores) with `--cpus` CPUs (the fleet's
default is 1 per worker). It loads the model, builds each task's lm-eval
requests, warms up, then times `loglikelihood` (multiple choice) or
`loglikelihood_rolling` (perplexity) over all of them, best of `--repeats`.
Prints requests/s per (engine, task), the ratio to the first engine (the
baseline, `hf-stock` = today's transformers path) on the same task and in total
time, and the largest |score - baseline score| over the task's requests.
Without --model a tiny random Mixtral is built (dimensions vLLM's CPU attention supports).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ENGINES = {  # name -> (backend, EngineOptions fields)
    "hf-stock": ("hf", {"scoring": "stock"}),
    "hf-shared": ("hf", {"scoring": "shared"}),
    "vllm-stock": ("vllm", {"scoring": "stock"}),
    "vllm-shared": ("vllm", {"scoring": "shared"}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tasks", default="arc_easy:100,piqa:100,wiki_heldout_ppl:20")
    ap.add_argument("--engines", default="hf-stock,hf-shared")
    ap.add_argument("--cpus", type=float, default=1, help="num_cpus of each worker actor (Ray sets its threads)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--evaluate", action="store_true",
                    help="also time each task's full lm-eval run (what a fleet job does: requests, metrics, stderr)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--vllm-python", type=Path, default=None)
    args = ap.parse_args()
    for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1",
                 "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)

    from raymoe.eval.backends import BACKENDS
    from raymoe.eval.options import EngineOptions
    from raymoe.eval.tasks import check_task, parse_tasks

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        print(f"error: unknown engine {unknown[0] if unknown else '(none)'}; known: {', '.join(ENGINES)}",
              file=sys.stderr)
        return 2
    tasks = parse_tasks(args.tasks)
    for t in tasks:
        check_task(t.name)
    model = args.model
    if model is None:
        from raymoe.testing import build_tiny_model

        model = build_tiny_model("mixtral", Path(tempfile.mkdtemp(prefix="raymoe-bench-")) / "mixtral", hidden=64,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    opts = {e: EngineOptions(dtype=args.dtype, vllm_python=args.vllm_python, **ENGINES[e][1]) for e in engines}
    backends = {e: BACKENDS.get(ENGINES[e][0]) for e in engines}
    for e in engines:
        backends[e].check(opts[e], [str(model)])

    import ray

    ray.init(num_cpus=max(2, os.cpu_count() or 1, int(args.cpus)), include_dashboard=False, log_to_driver=False)
    results: dict[str, dict] = {}
    try:
        for e in engines:  # one at a time
            backend = backends[e]
            t0 = time.perf_counter()
            worker = backend.worker_class().options(**backend.actor_options(opts[e], args.cpus)).remote(
                f"bench-{e}", opts[e])
            results[e] = {str(t): ray.get(worker.loglikelihood_throughput.remote(str(model.resolve()), t,
                                                                                 args.repeats)) for t in tasks}
            if args.evaluate:
                results[e]["_evaluate"] = {str(t): ray.get(worker.evaluate.remote(str(model.resolve()), t))["wall_s"]
                                           for t in tasks}
            results[e]["_total_s"] = time.perf_counter() - t0
            ray.kill(worker)
            print(f"{e}: done in {results[e]['_total_s']:.1f} s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()

    base = engines[0]
    print(f"model {model}  dtype {args.dtype}  cpus/worker {args.cpus}  host cpus {os.cpu_count()}  "
          f"baseline {base}")
    print(f"{'engine':12s} {'task':24s} {'kind':22s} {'reqs':>5s} {'seconds':>8s} {'req/s':>8s} "
          f"{'x base':>7s} {'max|d| vs base':>15s}")
    for e in engines:
        for t in tasks:
            r, b = results[e][str(t)], results[base][str(t)]
            diff = max(abs(x - y) for x, y in zip(r["results"], b["results"]))
            print(f"{e:12s} {str(t):24s} {r['kind']:22s} {r['requests']:5d} {r['seconds']:8.2f} {r['per_s']:8.2f} "
                  f"{b['seconds'] / r['seconds']:7.2f} {diff:15.2e}")
        scored = sum(results[e][str(t)]["seconds"] for t in tasks)
        scored_base = sum(results[base][str(t)]["seconds"] for t in tasks)
        first = results[e][str(tasks[0])]
        print(f"{e:12s} {'ALL TASKS':24s} {'scoring time':22s} {'':5s} {scored:8.2f} {'':8s} "
              f"{scored_base / scored:7.2f}   ({first['version']}, engine load {first['load_s']:.1f} s, "
              f"{first.get('threads')} threads, actor total {results[e]['_total_s']:.1f} s)")
    if args.evaluate:
        print("full lm-eval task runs (EngineHost.evaluate wall seconds; x base = baseline / engine):")
        for e in engines:
            ev, evb = results[e]["_evaluate"], results[base]["_evaluate"]
            cells = "  ".join(f"{t}: {ev[t]:.1f} s ({evb[t] / ev[t]:.2f}x)" for t in ev)
            print(f"{e:12s} {cells}  total {sum(ev.values()):.1f} s ({sum(evb.values()) / sum(ev.values()):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
