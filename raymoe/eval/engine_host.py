"""Inside a worker: one engine at a time, lm-eval tasks on it, results as metric rows.

`EngineHost` is what both worker actors (transformers and vLLM) delegate to:
it keeps the engine of the checkpoint last asked for (switching checkpoints
rebuilds it; a virtual variant, the source checkpoint plus an expert mask
(raymoe.plan.mask), only sets the engine's router masks, before every task, so
no mask outlives the task it was set for), writes the offline task YAMLs into its own temporary directory,
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

__all__ = ["Engine", "EngineHost", "metric_rows", "load_transformers", "mask_model"]


def load_transformers(path: str, dtype: str = "float32"):
    """(model, tokenizer) of a checkpoint in transformers, eval mode (raymoe's variable-expert classes too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raymoe.moe.variable import ensure_registered

    ensure_registered()  # raymoe's variable-expert architectures load too

    dt = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return AutoModelForCausalLM.from_pretrained(path, dtype=dt).eval(), AutoTokenizer.from_pretrained(path)


def mask_model(model, path: str, mask):
    """Set a raymoe.plan.mask.ExpertMask (None: unmasked) on a transformers model of `path`, installing
    raymoe.moe.router_mask.RouterMasks on first use; returns them (None while nothing was ever masked)."""
    if mask is None and getattr(model, "_raymoe_masks", None) is None:
        return None
    from raymoe.moe.router_mask import RouterMasks
    from raymoe.moe.model_spec import MoeModelSpec

    masks = getattr(model, "_raymoe_masks", None)
    if masks is None:
        masks = RouterMasks(model, MoeModelSpec.from_pretrained(path))
        model._raymoe_masks = masks
    masks.set(mask)
    return masks


class Engine(Protocol):
    """A loaded model behind lm-eval's LM interface."""

    lm: Any  # lm_eval.api.model.LM
    version: str  # e.g. "transformers 5.23.0"

    def set_mask(self, mask: Any) -> None:
        """Mask the routers to a raymoe.plan.mask.ExpertMask (None: every expert available), in place."""

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
                 bootstrap_iters: int = 1000, seed: int = 0, dtype: str = "float32",
                 torch_model: Callable[[Engine], Any] | None = None) -> None:
        self.worker_id = worker_id
        self.dtype = dtype
        self._torch_model = torch_model  # the engine's transformers model, if it holds one (fidelity tasks)
        self.backend = backend
        self._load = load
        self.bootstrap_iters = bootstrap_iters
        self.seed = seed
        self.task_dir = Path(tempfile.mkdtemp(prefix=f"raymoe-tasks-{worker_id}-"))
        self.path: str | None = None
        self.engine: Engine | None = None
        self.load_s = 0.0
        self.loads = 0  # engine loads over the worker's life

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
            self.loads += 1
        assert self.engine is not None
        return self.engine

    def task_manager(self, name: str):
        from lm_eval.tasks import TaskManager

        offline = write_task_yaml(name, self.task_dir) is not None
        return TaskManager(include_path=str(self.task_dir), include_defaults=not offline)

    def masked_engine(self, path: str, mask: dict | None) -> Engine:
        """The engine of `path` with its routers masked to `mask` (ExpertMask.to_wire(); None: unmasked)."""
        from raymoe.plan.mask import ExpertMask

        engine = self.engine_for(path)
        engine.set_mask(ExpertMask.from_wire(mask))
        return engine

    def evaluate(self, path: str, task: TaskRequest, mask: dict | None = None) -> dict:
        """Run `task` on the checkpoint at `path`, its routers masked by `mask` (a virtual variant; None:
        the checkpoint as it is): {rows, wall_s, load_s, loads, worker, version}."""
        from lm_eval import simple_evaluate

        from raymoe.eval.fidelity import is_fidelity
        from raymoe.eval.items import attach_items

        t0 = time.perf_counter()
        if is_fidelity(task.name):
            rows, version = self._fidelity(path, task, mask)
        else:
            engine = self.masked_engine(path, mask)
            out = simple_evaluate(model=engine.lm, tasks=[task.name], task_manager=self.task_manager(task.name),
                                  limit=task.limit, bootstrap_iters=self.bootstrap_iters, log_samples=True,
                                  random_seed=self.seed, numpy_random_seed=self.seed, torch_random_seed=self.seed,
                                  fewshot_random_seed=self.seed)
            rows = attach_items(metric_rows(out), out.get("samples") or {}, iters=self.bootstrap_iters or 1000,
                                seed=self.seed)
            version = engine.version
        if not rows:
            raise RuntimeError(f"lm-eval returned no metrics for task {task.name}")
        return {"rows": rows, "wall_s": time.perf_counter() - t0, "load_s": self.load_s, "loads": self.loads,
                "worker": self.worker_id, "version": version}

    def _fidelity(self, path: str, task: TaskRequest, mask: dict | None) -> tuple[list[dict], str]:
        """A `kld:<corpus>` task: the reference's cached distribution (built once), the variant scored on it."""
        import transformers

        from raymoe.eval import reference as R
        from raymoe.eval.fidelity import FidelityError, fidelity_corpus, fidelity_rows

        if not task.reference:
            raise FidelityError(f"task {task.name} needs a reference model (--reference, or the sweep's unpruned)")
        spec = R.WindowSpec(fidelity_corpus(task.name), **({"docs": task.limit} if task.limit else {}))
        cache = Path(task.cache_dir) if task.cache_dir else R.default_cache_dir()
        ref_file = R.reference_file(task.reference, spec, cache)
        if not ref_file.is_file():
            ref_model, ref_tok = load_transformers(task.reference, self.dtype)
            R.build_reference(ref_model, ref_tok, spec, ref_file)
            del ref_model
        ref, meta = R.load_reference(ref_file)
        held = self._torch_model(self.masked_engine(path, mask)) if self._torch_model is not None else None
        if held is not None:
            model, tok = held, self.engine.lm.tokenizer
        else:  # an engine without a transformers model (vLLM): score on transformers, masked the same way
            from raymoe.plan.mask import ExpertMask

            model, tok = load_transformers(path, self.dtype)
            mask_model(model, path, ExpertMask.from_wire(mask))
        per_doc = R.score_windows(model, tok, ref, meta, batch=spec.batch, name=path)
        rows = fidelity_rows(task.name, per_doc, iters=self.bootstrap_iters or 1000, seed=self.seed)
        return rows, f"transformers {transformers.__version__}"

    def loglikelihood_throughput(self, path: str, task: TaskRequest, repeats: int = 1,
                                 mask: dict | None = None) -> dict:
        """Time the engine on a task's loglikelihood (or rolling) requests alone.

        {requests, seconds (best of `repeats`), per_s, kind, results: the scores, version, load_s}.
        """
        engine = self.masked_engine(path, mask)
        tm = self.task_manager(task.name)
        task_obj = next(iter(tm.load([task.name])["tasks"].values()))
        task_obj.build_all_requests(limit=task.limit, rank=0, world_size=1)
        kinds = {r.request_type for r in task_obj.instances}
        kind = next((k for k in ("loglikelihood", "loglikelihood_rolling") if k in kinds), None)
        if kind is None:
            raise RuntimeError(f"task {task.name} has no loglikelihood requests")
        reqs = [r for r in task_obj.instances if r.request_type == kind]
        run = engine.lm.loglikelihood if kind == "loglikelihood" else engine.lm.loglikelihood_rolling
        run(reqs[: min(8 if kind == "loglikelihood" else 1, len(reqs))], disable_tqdm=True)  # warm-up
        best, out = float("inf"), None
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            out = run(reqs, disable_tqdm=True)
            best = min(best, time.perf_counter() - t0)
        scores = [float(x[0]) if isinstance(x, tuple) else float(x) for x in out]
        return {"requests": len(reqs), "seconds": best, "per_s": len(reqs) / best, "kind": kind,
                "results": scores, "version": engine.version, "load_s": self.load_s}
