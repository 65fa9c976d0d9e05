"""The eval fleet at scale, simulated: the real EvalFleet on a multi-node `ray.cluster_utils.Cluster`.

Engine: the `sleep` benchmark backend (raymoe.eval.sleep_worker), so every cost is known. Job costs:
each (variant, task) pair costs U[19, 36] s (the per-task times measured on the testbed) / SCALE;
a worker that switches variant first pays an engine load of 11.4 s (vLLM) or 1.3 s (transformers)
/ SCALE. Variants are submitted to the fleet's stream as a producer would (all at once by default,
or one every --produce-s seconds).

Printed per run, measured in that run (t0 = first submission, workers already started):
- ideal = S / W, S = sum of job costs (engine loads excluded, so engine reuse counts), W = workers;
  with a worker killed at t_k (no replacement): ideal = (S - t_k) / (W - 1), the makespan if the
  surviving worker-time were all job time;
- efficiency = ideal / makespan (target >= 0.9) and its inverse, makespan / ideal;
- utilisation = time workers spent in calls (loads included) / worker-time available;
- loads, and the bound on efficiency that one load per variant already imposes:
  S / (S + V * load) (each variant must be loaded at least once).

With virtual variants (`vllm-virtual`, `hf-virtual`: every variant a plan scored on one source model,
raymoe.plan.mask) a worker loads the source once for all of them, so the bound is S / (S + W * load).

    python bench/fleet_scale.py                 # 4 nodes x 2 workers, 40 variants x 3 tasks, SCALE 20
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time

import numpy as np

LOAD_S = {"vllm": 11.4, "hf": 1.3}  # engine load measured on the testbed (bench/eval_backends.py)
TASK_S = (19.0, 36.0)  # per-task evaluation time on the testbed, s
TASKS = ("arc_easy", "piqa", "wiki_heldout_ppl")


def run_once(args, engine: str, costs: np.ndarray, kill: bool) -> dict:
    from raymoe.eval.fleet import EvalFleet
    from raymoe.eval.options import FleetOptions
    from raymoe.eval.sleep_worker import write_sleep_source, write_sleep_variant
    from raymoe.eval.tasks import TaskRequest

    base, _, mode = engine.partition("-")
    load = LOAD_S[base] / args.scale
    tasks = [TaskRequest(t) for t in TASKS[: args.tasks]]
    root = tempfile.mkdtemp(prefix="fleet-scale-")
    per = {f"v{i:03d}": {t.name: float(costs[i, j]) for j, t in enumerate(tasks)} for i in range(args.variants)}
    if mode == "virtual":
        variants = write_sleep_source(f"{root}/source", load, per)
    else:
        variants = [write_sleep_variant(f"{root}/{name}", name, load, c) for name, c in per.items()]
    workers = args.nodes * args.workers_per_node
    fleet = EvalFleet(FleetOptions(backend="sleep", workers=workers, num_cpus=1, replace_dead=not kill))
    fleet.start()
    nodes = {i["node"] for i in fleet.info.values()}
    stream = fleet.stream(run_id=f"{engine}{'-kill' if kill else ''}", progress=False)
    killed: dict = {}
    S = float(costs.sum())
    kill_at = 0.4 * S / workers  # seconds after t0

    def on_event(event):  # kill a busy worker once, about 40% into the ideal makespan
        if kill and not killed and event.kind == "done" and time.time() - t0 >= kill_at:
            victim = next((w for w in fleet.busy if w != event.worker), None)
            if victim is not None:
                killed.update(worker=victim, t=time.time() - t0)
                os.kill(fleet.info[victim]["pid"], signal.SIGKILL)

    stream.notify = on_event

    def produce():
        for v in variants:
            stream.submit(v, tasks)
            if args.produce_s:
                time.sleep(args.produce_s)
        stream.close()

    t0 = time.time()
    threading.Thread(target=produce, daemon=True).start()
    done = list(stream)
    makespan = max(c.finished for c in done) - t0
    fleet.shutdown()
    assert len(done) == args.variants * len(tasks) and len({c.job.key for c in done}) == len(done)
    loads, last = 0, {}
    for c in sorted(done, key=lambda c: c.started):
        loads += last.get(c.worker) != c.job.variant.path
        last[c.worker] = c.job.variant.path
    busy = sum(c.finished - c.started for c in done)
    if kill:
        ideal = (S - killed["t"]) / (workers - 1)
        available = (workers - 1) * makespan + killed["t"]
    else:
        ideal, available = S / workers, workers * makespan
    return {"engine": engine, "kill": kill, "workers": workers, "nodes": len(nodes), "jobs": len(done),
            "S": S, "ideal": ideal, "makespan": makespan, "eff": ideal / makespan, "util": busy / available,
            "loads": loads, "load": load,
            "bound": S / (S + (workers if mode == "virtual" else args.variants) * load),
            "killed": killed, "retried": sum(c.job.attempt > 1 for c in done)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--workers-per-node", type=int, default=2)
    p.add_argument("--variants", type=int, default=40)
    p.add_argument("--tasks", type=int, default=3, choices=[1, 2, 3])
    p.add_argument("--scale", type=float, default=20.0, help="every cost is divided by this")
    p.add_argument("--engines", default="hf,vllm,vllm-virtual",
                   help="engine-load costs to simulate: hf, vllm (a checkpoint per variant), hf-virtual, vllm-virtual")
    p.add_argument("--kill-engine", default="hf,vllm-virtual",
                   help="engine costs of the runs with a worker killed ('' none)")
    p.add_argument("--produce-s", type=float, default=0.0, help="seconds between variant submissions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for k in ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        os.environ.setdefault(k, "0")
    import ray
    from ray.cluster_utils import Cluster

    from raymoe.ray_cluster import RayResources, ensure_ray

    costs = np.random.default_rng(args.seed).uniform(*TASK_S, size=(args.variants, args.tasks)) / args.scale
    t = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.workers_per_node,
                                                            "node_ip_address": "127.0.0.1"})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.workers_per_node, node_ip_address="127.0.0.1")
    ensure_ray(RayResources(address=cluster.address))
    print(f"cluster: {args.nodes} nodes x {args.workers_per_node} CPUs, up in {time.perf_counter() - t:.0f} s; "
          f"{args.variants} variants x {args.tasks} tasks, job cost U[{TASK_S[0]:g}, {TASK_S[1]:g}] s / {args.scale:g}, "
          f"loads {', '.join(f'{k} {v:g} s' for k, v in LOAD_S.items())} / {args.scale:g}")
    runs = [(e, False) for e in args.engines.split(",") if e]
    runs += [(e, True) for e in args.kill_engine.split(",") if e]
    try:
        results = [run_once(args, e, costs, kill) for e, kill in runs]
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"{'loads':>12} {'kill':>5} {'W':>3} {'nodes':>5} {'S (s)':>7} {'ideal':>7} {'makespan':>9} "
          f"{'ideal/mk':>9} {'mk/ideal':>9} {'util':>6} {'loads':>6} {'bound':>6}")
    for r in results:
        print(f"{r['engine']:>12} {'yes' if r['kill'] else 'no':>5} {r['workers']:>3} {r['nodes']:>5} {r['S']:>7.1f} "
              f"{r['ideal']:>7.2f} {r['makespan']:>9.2f} {r['eff']:>9.3f} {1 / r['eff']:>9.3f} {r['util']:>6.3f} "
              f"{r['loads']:>6} {r['bound']:>6.3f}")
        if r["kill"]:
            print(f"       killed {r['killed']['worker']} at {r['killed']['t']:.1f} s; {r['retried']} pair re-run; "
                  f"ideal = (S - t_kill) / (W - 1)")


if __name__ == "__main__":
    main()
