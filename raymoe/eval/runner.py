"""Inside a worker: one engine at a time, lm-eval tasks on it, results as metric rows.

`EngineHost` is what both worker actors (transformers and vLLM) delegate to:
it keeps the engine of the variant last asked for (switching variants
rebuilds it), writes the offline task YAMLs into its own temporary directory,
runs one task through `lm_eval.simple_evaluate`, and returns plain dicts
(metric, value, stderr, n) plus timings. It imports only what exists in both
environments (lm-eval, pydantic, raymoe's config-level modules).
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from raymoe.eval.tasks import TaskRequest, write_task_yaml

__all__ = ["Engine", "EngineHost", "metric_rows"]


class Engine(Protocol):
    """A loaded model behind lm-eval's LM interface."""

    lm: Any  # lm_eval.api.model.LM
    version: str  # e.g. "transformers 5.23.0"

    def close(self) -> None: ...


def _number(x: Any) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x)):
        return float(x)
    return None


def metric_rows(results: dict) -> list[dict]:
    """lm-eval's results dict -> [{task, metric, value, stderr, n}] (filter `none` dropped from names)."""
    rows = []
    counts = results.get("n-samples", {})
    for task, metrics in results["results"].items():
        n = counts.get(task, {}).get("effective")
        for key, value in metrics.items():
            name, comma, filt = key.partition(",")  # "acc,none"; bare keys (alias, sample_len) are not metrics
            if not comma or name.endswith("_stderr") or _number(value) is None:
                continue
            stderr = _number(metrics.get(f"{name}_stderr,{filt}"))
            metric = name if filt in ("", "none") else f"{name}[{filt}]"
            rows.append({"task": task, "metric": metric, "value": float(value), "stderr": stderr,
                         "n": None if n is None else int(n)})
    return rows


class EngineHost:
    """Holds one engine (rebuilt when the variant changes) and runs tasks on it."""

    def __init__(self, worker_id: str, backend: str, load: Callable[[str], Engine], *,
                 bootstrap_iters: int = 1000, seed: int = 0) -> None:
        self.worker_id = worker_id
        self.backend = backend
        self._load = load
        self.bootstrap_iters = bootstrap_iters
        self.seed = seed
        self.task_dir = Path(tempfile.mkdtemp(prefix=f"raymoe-tasks-{worker_id}-"))
        self.path: str | None = None
        self.engine: Engine | None = None
        self.load_s = 0.0

    def info(self) -> dict:
        return {"worker": self.worker_id, "backend": self.backend, "pid": os.getpid(),
                "host": socket.gethostname(), "loaded": self.path,
                "version": self.engine.version if self.engine else None}

    def engine_for(self, path: str) -> Engine:
        if self.path != path:
            if self.engine is not None:
                self.engine.close()
            self.engine, self.path = None, None
            t0 = time.perf_counter()
            self.engine = self._load(path)
            self.path, self.load_s = path, time.perf_counter() - t0
        assert self.engine is not None
        return self.engine

    def task_manager(self, name: str):
        from lm_eval.tasks import TaskManager

        offline = write_task_yaml(name, self.task_dir) is not None
        return TaskManager(include_path=str(self.task_dir), include_defaults=not offline)

    def evaluate(self, path: str, task: TaskRequest) -> dict:
        """Run `task` on the variant at `path`: {rows, wall_s, load_s, worker, version}."""
        from lm_eval import simple_evaluate

        t0 = time.perf_counter()
        engine = self.engine_for(path)
        out = simple_evaluate(model=engine.lm, tasks=[task.name], task_manager=self.task_manager(task.name),
                              limit=task.limit, bootstrap_iters=self.bootstrap_iters, log_samples=False,
                              random_seed=self.seed, numpy_random_seed=self.seed, torch_random_seed=self.seed,
                              fewshot_random_seed=self.seed)
        rows = metric_rows(out)
        if not rows:
            raise RuntimeError(f"lm-eval returned no metrics for task {task.name}")
        return {"rows": rows, "wall_s": time.perf_counter() - t0, "load_s": self.load_s,
                "worker": self.worker_id, "version": engine.version}

    def loglikelihood_throughput(self, path: str, task: TaskRequest) -> dict:
        """Time the engine on a task's loglikelihood requests alone: {requests, seconds, per_s}."""
        engine = self.engine_for(path)
        tm = self.task_manager(task.name)
        task_obj = next(iter(tm.load([task.name])["tasks"].values()))
        task_obj.build_all_requests(limit=task.limit, rank=0, world_size=1)
        reqs = [r for r in task_obj.instances if r.request_type == "loglikelihood"]
        if not reqs:
            raise RuntimeError(f"task {task.name} has no loglikelihood requests")
        engine.lm.loglikelihood(reqs[: min(8, len(reqs))], disable_tqdm=True)  # warm-up
        t0 = time.perf_counter()
        engine.lm.loglikelihood(reqs, disable_tqdm=True)
        dt = time.perf_counter() - t0
        return {"requests": len(reqs), "seconds": dt, "per_s": len(reqs) / dt, "version": engine.version,
                "load_s": self.load_s}
