"""A benchmark backend (`sleep`): an engine of known cost, for measuring the fleet's scheduling alone.

Not a scorer. A "variant" is a directory holding `sleep.json`:
`{"load_s": 0.57, "task_s": {"arc_easy": 1.2, ...}}`. Switching a worker to another variant sleeps
`load_s` (the engine load; a virtual variant, the same directory with another mask, costs no
load); a (variant, task) pair sleeps `task_s[task]` and returns one row,
metric `sleep_s` = that cost. Used by `bench/fleet_scale.py` on a `ray.cluster_utils.Cluster`;
`write_sleep_variant` makes such a directory and the `Variant` that names it; `write_sleep_source`
one directory for many virtual variants (costs per mask id under `"virtual"`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import ray

from raymoe.eval.options import EngineOptions
from raymoe.eval.tasks import TaskRequest

__all__ = ["SleepWorker", "write_sleep_variant", "write_sleep_source", "SLEEP_FILE"]

SLEEP_FILE = "sleep.json"


def write_sleep_variant(path: str | Path, name: str, load_s: float, task_s: dict[str, float]):
    """Write `path/sleep.json`; return a `Variant` for it (placeholder provenance)."""
    from raymoe.eval.variants import Variant

    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    (path / SLEEP_FILE).write_text(json.dumps({"load_s": load_s, "task_s": task_s}))
    return Variant(name=name, path=str(path), model_type="sleep", family="sleep", experts_per_layer=[1],
                   source_model=str(path), method="sleep", uniform=True, config_sha256="")


def write_sleep_source(path: str | Path, load_s: float, variants: dict[str, dict[str, float]]) -> list:
    """One "source model" directory and a virtual `Variant` per entry of `variants` (name -> task costs):
    they share the directory, so a worker loads it once for all of them; each one's mask id keys its costs."""
    from raymoe.eval.variants import Variant

    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    (path / SLEEP_FILE).write_text(json.dumps({"load_s": load_s, "task_s": {}, "virtual": variants}))
    return [Variant(name=name, path=str(path), model_type="sleep", family="sleep", experts_per_layer=[1],
                    source_model=str(path), method="sleep", uniform=True, config_sha256="", virtual=True,
                    mask={"id": name, "keep": {}, "num_experts": {}}) for name in variants]


@ray.remote(num_cpus=1)
class SleepWorker:
    """Sleeps for the engine loads and pairs its variants' `sleep.json` files name."""

    def __init__(self, worker_id: str, opts: EngineOptions) -> None:
        self.worker_id = worker_id
        self.path: str | None = None
        self.costs: dict = {}
        self.loads = 0

    def info(self) -> dict:
        return {"worker": self.worker_id, "backend": "sleep", "pid": os.getpid(), "host": socket.gethostname(),
                "loaded": self.path, "version": "sleep", "node": ray.get_runtime_context().get_node_id()}

    def evaluate(self, path: str, task: TaskRequest, mask: dict | None = None) -> dict:
        t0 = time.perf_counter()
        if path != self.path:
            self.path = None
            self.costs = json.loads((Path(path) / SLEEP_FILE).read_text())
            time.sleep(self.costs["load_s"])
            self.path, self.loads = path, self.loads + 1
        table = self.costs["virtual"][mask["id"]] if mask is not None else self.costs["task_s"]
        cost = float(table[task.name])
        time.sleep(cost)
        return {"rows": [{"task": task.name, "metric": "sleep_s", "value": cost, "stderr": None, "n": 1}],
                "wall_s": time.perf_counter() - t0, "load_s": self.costs["load_s"], "worker": self.worker_id,
                "version": "sleep", "loads": self.loads}
