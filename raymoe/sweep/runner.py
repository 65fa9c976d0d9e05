"""`raymoe run SPEC.yaml`: calibrate -> plan -> apply -> evaluate -> report, resumable.

The graph on Ray:
- the model (a checkpoint, or the testbed built once and cached),
- one calibration per (model hash, data, calibration config), cached under
  `<output>/../.cache/stats/<id>` and shared by every run that asks the same,
- a planner actor holding the statistics answers every (method, options, ratio),
- a producer thread applies plans into `variants/<id>/` while the eval fleet
  scores the variants already written (stages overlap),
- each (variant, task) evaluation writes `rows/<step id>.parquet`.
Every finished step leaves a record (raymoe.sweep.records); a rerun of a killed
sweep skips recorded steps and ends with the same `results.parquet`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from raymoe.io import atomic_write_json
from raymoe.sweep.records import StepLog, StepRecord, step_id
from raymoe.sweep.spec import SweepSpec, fleet_options

__all__ = ["run_sweep", "SweepVariant", "variant_grid"]


@dataclass(frozen=True)
class SweepVariant:
    """One cell of the grid: a method with options at a ratio."""

    method: str
    options: dict[str, Any]
    ratio: float
    uniform: bool

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.method}@{self.ratio:g}" + (f"[{opts}]" if opts else "")

    def params(self, stats_id: str) -> dict[str, Any]:
        return {"method": self.method, "options": self.options, "ratio": self.ratio, "uniform": self.uniform,
                "stats": stats_id}


def variant_grid(spec: SweepSpec) -> list[SweepVariant]:
    return [SweepVariant(m.name, opts, r, spec.uniform)
            for m in spec.methods for opts in m.option_sets() for r in spec.ratios]


class _Sweep:
    def __init__(self, spec: SweepSpec, progress: bool):
        self.spec, self.progress = spec, progress
        self.run_dir = Path(spec.output).resolve()
        self.cache = Path(os.environ.get("RAYMOE_CACHE", self.run_dir.parent / ".cache")).resolve()
        self.log = StepLog(self.run_dir)
        self.redone: list[str] = []  # step ids executed by this invocation

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.run_dir)

    def step(self, kind: str, params: dict, fn) -> StepRecord:
        """Run `fn(sid) -> (outputs, info)` unless the step is already recorded as done."""
        sid = step_id(kind, params)
        rec = self.log.done(sid)
        if rec is not None:
            return rec
        t0 = time.perf_counter()
        outputs, info = fn(sid)
        self.redone.append(sid)
        return self.log.record(StepRecord(id=sid, kind=kind, params=params, outputs=outputs, info=info,
                                          wall_s=time.perf_counter() - t0))

    # ---- model and statistics -------------------------------------------------------------
    def model(self) -> Path:
        if self.spec.model != "testbed":
            return Path(self.spec.model).resolve()
        from raymoe.testbed import TestbedConfig, build_testbed

        cfg = TestbedConfig.parse(**(self.spec.testbed.options if self.spec.testbed else {}))
        params = {"testbed": cfg.model_dump(mode="json")}

        def build(sid):
            res = build_testbed(cfg, self.cache / "testbed" / sid, progress=self.progress)  # cached by hash
            return {"model": self.rel(Path(res.path))}, {}

        rec = self.step("testbed", params, build)
        return (self.run_dir / rec.outputs["model"]).resolve()

    def calibrate(self, model: Path) -> Path:
        from raymoe.calib.run import calibrate, model_hash
        from raymoe.moe import SafetensorsCheckpoint
        from raymoe.store import save_stats
        from raymoe.sweep.spec import calib_config

        c = self.spec.calibration
        cfg = calib_config(self.spec)
        params = {"model": model_hash(model, SafetensorsCheckpoint(model)), "data": c.data,
                  "config": cfg.model_dump(mode="json")}

        def run(sid):
            out = self.cache / "stats" / sid
            if not out.is_dir():  # another run may have calibrated the same already
                save_stats(calibrate(model, cfg, c.data, progress=self.progress), out)
            return {"stats": self.rel(out)}, {}

        rec = self.step("calibrate", params, run)
        return (self.run_dir / rec.outputs["stats"]).resolve()


def _variant_from(path: Path, name: str):
    from raymoe.eval.variants import Variant

    return Variant.from_path(path, name=name)


def _produce(sw: _Sweep, stats_dir: Path, stats_id: str, grid: list[SweepVariant], ready: queue.Queue,
             errors: list) -> None:
    """Plan and apply every grid cell not yet written; put (cell, Variant) on `ready` as each lands."""
    try:
        import ray

        from raymoe.checkpoint import apply_plan
        from raymoe.methods.planner import Planner
        from raymoe.plan import PrunePlan

        planner = None  # the central planner actor, started only if some plan is still missing
        for cell in grid:
            def build(sid, cell=cell):
                nonlocal planner
                planner = planner or Planner.options(memory=None).remote(str(stats_dir))
                raw = ray.get(planner.plan.remote(cell.method, cell.ratio, cell.uniform, cell.options))
                plan = PrunePlan.model_validate(raw)
                out = sw.run_dir / "variants" / sid
                apply_plan(plan.model, plan, out, overwrite=True, progress=False)
                return {"model": sw.rel(out)}, {"name": cell.name, "counts": list(plan.counts().values())}

            rec = sw.step("variant", cell.params(stats_id), build)
            ready.put((cell.name, _variant_from(sw.run_dir / rec.outputs["model"], cell.name)))
    except BaseException as err:  # surfaced by the consumer
        errors.append(err)
    finally:
        ready.put(None)


def _evaluate(sw: _Sweep, fleet, variant, tasks, vparams: dict) -> list[str]:
    """Score `variant` on the tasks not yet recorded; return the eval step ids of all its tasks."""
    from raymoe.eval.fidelity import is_fidelity
    from raymoe.eval.reference import CACHE_VERSION as FIDELITY_VERSION
    from raymoe.eval.results import write_results

    pending, ids = [], []
    for t in tasks:
        params = vparams | {"task": t.name, "limit": t.limit, "backend": sw.spec.eval.backend}
        if is_fidelity(t.name):  # a new fidelity estimator is a new step
            params["fidelity_version"] = FIDELITY_VERSION
        ids.append(step_id("eval", params))
        if sw.log.done(ids[-1]) is None:
            pending.append((t, params))
    if not pending:
        return ids
    rows = fleet.run([variant], [t for t, _ in pending], run_id=sw.spec.name, progress=False)
    for t, params in pending:
        mine = [r for r in rows if r["task"] == t.name]

        def write(sid, mine=mine):
            path = sw.run_dir / "rows" / f"{sid}.parquet"
            write_results(path, mine, overwrite=True)
            eval_s = max((r.get("wall_s") or 0.0 for r in mine), default=0.0)  # the fleet's job time
            return {"rows": sw.rel(path)}, {"variant": variant.name, "task": t.name, "eval_s": eval_s}

        sw.step("eval", params, write)
    return ids


def run_sweep(spec: SweepSpec, *, progress: bool = True) -> Path:
    """Run (or resume) the sweep; returns the run directory (results.parquet, report/)."""
    import ray
    from tqdm.auto import tqdm

    from raymoe.eval.backends import check_backend
    from raymoe.eval.fidelity import is_fidelity
    from raymoe.eval.fleet import EvalFleet
    from raymoe.eval.results import write_results
    from raymoe.eval.tasks import parse_tasks
    from raymoe.report import build_report

    sw = _Sweep(spec, progress)
    res = spec.resources
    if not ray.is_initialized():
        if res.address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=res.address or os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            ray.init(num_cpus=res.num_cpus or max(os.cpu_count() or 1, 4), num_gpus=res.num_gpus,
                     include_dashboard=False, log_to_driver=False)
    opts = fleet_options(spec)
    check_backend(opts.backend, opts.engine)  # e.g. no vLLM environment: fail before any work
    model = sw.model()
    stats_dir = sw.calibrate(model)
    stats_id = stats_dir.name
    atomic_write_json(sw.run_dir / "run.json", {"name": spec.name, "model": str(model), "stats": str(stats_dir),
                                                "spec": spec.model_dump(mode="json")})
    # fidelity tasks (kld:<corpus>) score every variant against the sweep's unpruned model
    tasks = [replace(t, limit=spec.eval.limits.get(t.name, t.limit),
                     **({"reference": str(model), "cache_dir": str(sw.cache / "kld")} if is_fidelity(t.name) else {}))
             for t in parse_tasks(spec.eval.tasks, limit=spec.eval.limit)]
    grid = variant_grid(spec)
    total = (len(grid) + int(spec.baseline)) * len(tasks)
    ready: queue.Queue = queue.Queue()
    errors: list = []
    producer = threading.Thread(target=_produce, args=(sw, stats_dir, stats_id, grid, ready, errors), daemon=True)
    producer.start()
    bar = tqdm(total=total, desc=f"sweep {spec.name}", unit="eval", disable=not progress)
    eval_ids: list[str] = []
    fleet = EvalFleet(opts)  # workers start on the first evaluation still to do (none on a finished rerun)
    try:
        if spec.baseline:
            eval_ids += _evaluate(sw, fleet, _variant_from(model, "unpruned"), tasks,
                                  {"variant": "unpruned", "stats": stats_id})
            bar.update(len(tasks))
        while (item := ready.get()) is not None:
            name, variant = item
            cell = next(c for c in grid if c.name == name)
            eval_ids += _evaluate(sw, fleet, variant, tasks, {"variant": step_id("variant", cell.params(stats_id))})
            bar.update(len(tasks))
            bar.set_postfix_str(name, refresh=False)
    finally:
        fleet.shutdown()
    bar.close()
    producer.join()
    if errors:
        raise errors[0]
    frames = [pl.read_parquet(sw.run_dir / sw.log.done(sid).outputs["rows"]) for sid in eval_ids]
    rows = pl.concat(frames).to_dicts() if frames else []
    write_results(sw.run_dir / "results.parquet", rows, overwrite=True)
    build_report(sw.run_dir, stats_dir)
    atomic_write_json(sw.run_dir / "steps.json", {"executed": sw.redone,
                                                  "eval_workers_started": fleet.worker_starts > 0,
                                                  "eval_worker_starts": fleet.worker_starts})
    return sw.run_dir
