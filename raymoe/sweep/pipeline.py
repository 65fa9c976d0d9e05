"""`raymoe run SPEC.yaml`: calibrate -> plan -> apply -> evaluate -> report, resumable.

The graph on Ray:
- the model (a checkpoint, or the testbed built once and cached),
- one calibration per (model hash, data, calibration config), cached under
  `<output>/../.cache/stats/<id>` and shared by every run that asks the same,
- a planner actor holding the statistics answers every (method, options, ratio),
- a producer thread writes each plan (`plans/<id>/plan.json`) and submits the variant's unrecorded
  (variant, task) pairs to the eval fleet's stream as it lands; the fleet schedules pairs of every
  variant submitted so far over all its workers (raymoe.eval.fleet), so evaluation overlaps
  production and several variants are scored at once,
- a pruning plan is scored *virtually* by default: on the source model with its removed experts
  masked out of routing (raymoe.plan.mask; equal to its checkpoint's results), so nothing is
  written but plan.json and each worker loads the source once for all of them; plans that merge
  experts, and the variants `materialize` names (or all, `materialize: true` / `raymoe run
  --materialize`), are applied into `variants/<id>/` and scored as checkpoints,
- the main thread writes each pair as it completes: `rows/<step id>.parquet`, then its record.
Every finished step leaves a record (raymoe.sweep.records); a rerun of a killed
sweep skips recorded steps and ends with the same `results.parquet` (rows in grid order, not in
completion order). Ray is joined or started by raymoe.ray_cluster.ensure_ray; a worker or stage
asking for more GPUs than any node has is refused before anything is written.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from raymoe.atomic import atomic_write_json
from raymoe.sweep.records import StepLog, StepRecord, step_id
from raymoe.sweep.sweep_spec import SweepSpec, fleet_options

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
        """The variant's step key: the options as written and the validated config with every default, so a
        changed default (e.g. merge alignment switched on) is a new variant, never a stale checkpoint."""
        return {"method": self.method, "options": self.options, "config": _config(self.method, self.options),
                "ratio": self.ratio, "uniform": self.uniform, "stats": stats_id}


@functools.lru_cache(maxsize=None)
def _config_json(method: str, options_json: str) -> str:
    from raymoe.methods import load_method, parse_options

    return json.dumps(parse_options(load_method(method), json.loads(options_json)).model_dump(mode="json"),
                      sort_keys=True)


def _config(method: str, options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(_config_json(method, json.dumps(options, sort_keys=True)))


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

        cfg = self.spec.testbed or TestbedConfig()
        params = {"testbed": cfg.model_dump(mode="json")}

        def build(sid):
            res = build_testbed(cfg, self.cache / "testbed" / sid, progress=self.progress)  # cached by hash
            return {"model": self.rel(Path(res.path))}, {}

        rec = self.step("testbed", params, build)
        return (self.run_dir / rec.outputs["model"]).resolve()

    def calibrate(self, model: Path) -> Path:
        from raymoe.calib.calibration import calibrate, model_hash
        from raymoe.moe import SafetensorsCheckpoint
        from raymoe.store import save_stats
        from raymoe.sweep.sweep_spec import calib_config

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


def _materializes(spec: SweepSpec, cell: SweepVariant) -> bool:
    m = spec.materialize
    return m is True or (isinstance(m, list) and (cell.method in m or cell.name in m))


class _Scoring:
    """The sweep's side of the fleet stream: which eval steps a variant still needs, and writing each one."""

    def __init__(self, sw: _Sweep, stream, tasks: list, bar) -> None:
        self.sw, self.stream, self.tasks, self.bar = sw, stream, tasks, bar
        self.steps: dict[tuple[str, str], tuple[str, dict]] = {}  # (variant, task) -> (step id, params)
        self._lock = threading.Lock()

    def params(self, vparams: dict, task) -> dict:
        from raymoe.eval.fidelity import is_fidelity
        from raymoe.eval.reference import CACHE_VERSION as FIDELITY_VERSION

        params = vparams | {"task": task.name, "limit": task.limit, "backend": self.sw.spec.eval.backend}
        if is_fidelity(task.name):  # a new fidelity estimator is a new step
            params["fidelity_version"] = FIDELITY_VERSION
        return params

    def offer(self, variant, vparams: dict) -> None:
        """Submit the variant's tasks not yet recorded (any thread); count the recorded ones as done."""
        todo = []
        for t in self.tasks:
            params = self.params(vparams, t)
            sid = step_id("eval", params)
            if self.sw.log.done(sid) is None:
                with self._lock:
                    self.steps[(variant.name, t.name)] = (sid, params)
                todo.append(t)
        self.bar.update(len(self.tasks) - len(todo))
        if todo:
            self.stream.submit(variant, todo)

    def write(self, done) -> None:
        """Record one finished pair: `rows/<step id>.parquet`, then its step record (atomic, in that order)."""
        from raymoe.eval.results import write_results

        with self._lock:
            sid, params = self.steps[done.job.key]
        name, task = done.job.key

        def write(sid):
            path = self.sw.run_dir / "rows" / f"{sid}.parquet"
            write_results(path, done.rows, overwrite=True)
            eval_s = max((r.get("wall_s") or 0.0 for r in done.rows), default=0.0)  # the fleet's job time
            return {"rows": self.sw.rel(path)}, {"variant": name, "task": task, "eval_s": eval_s,
                                                  "worker": done.worker, "started": done.started,
                                                  "finished": done.finished, "attempt": done.job.attempt}

        self.sw.step("eval", params, write)
        self.bar.update(1)
        self.bar.set_postfix_str(name, refresh=False)


def _produce(sw: _Sweep, model: Path, stats_dir: Path, stats_id: str, grid: list[SweepVariant],
             scoring: _Scoring, vparams: list, errors: list) -> None:
    """Plan every grid cell not yet planned; apply the ones that merge or are to be materialised; offer
    each variant to the fleet as it lands. `vparams[i]` gets cell i's eval key (virtual or checkpoint)."""
    try:
        import ray

        from raymoe.eval.variants import Variant
        from raymoe.methods.planner import Planner
        from raymoe.plan import PrunePlan

        planner = None  # the central planner actor, started only if some plan is still missing
        for i, cell in enumerate(grid):
            def plan(sid, cell=cell):
                nonlocal planner
                planner = planner or Planner.options(memory=None).remote(str(stats_dir))
                p = PrunePlan.model_validate(ray.get(planner.plan.remote(cell.method, cell.ratio, cell.uniform,
                                                                         cell.options)))
                out = sw.run_dir / "plans" / sid / "plan.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                p.save(out)
                return {"plan": sw.rel(out)}, {"name": cell.name, "counts": list(p.counts().values()),
                                               "merges": bool(p.merged_members())}

            params = cell.params(stats_id)
            prec = sw.step("plan", params, plan)
            plan_file = sw.run_dir / prec.outputs["plan"]
            if prec.info["merges"] or _materializes(sw.spec, cell):
                def apply(sid, plan_file=plan_file):
                    from raymoe.checkpoint import apply_plan

                    p = PrunePlan.load(plan_file)
                    out = sw.run_dir / "variants" / sid
                    apply_plan(p.model, p, out, overwrite=True, progress=False)
                    return {"model": sw.rel(out)}, {"name": cell.name, "counts": list(p.counts().values())}

                rec = sw.step("variant", params, apply)
                vparams[i] = {"variant": rec.id}
                variant = _variant_from(sw.run_dir / rec.outputs["model"], cell.name)
            else:
                vparams[i] = {"plan": prec.id, "virtual": True}
                variant = Variant.from_plan(plan_file, model, cell.name)
            scoring.offer(variant, vparams[i])
    except BaseException as err:  # surfaced by the consumer
        errors.append(err)
    finally:
        scoring.stream.close(cancel=bool(errors))  # on an error, pairs still queued are dropped


def _start(spec: SweepSpec):
    """Ray (raymoe.ray_cluster.ensure_ray) and the checks that need it, before anything is written."""
    from raymoe.eval.backends import check_backend
    from raymoe.ray_cluster import RayResources, check_fits, ensure_ray
    from raymoe.sweep.sweep_spec import calib_config

    res, opts, cfg = spec.resources, fleet_options(spec), calib_config(spec)
    check_backend(opts.backend, opts.engine)  # e.g. no vLLM environment: fail before any work
    # CPUs of the stage actors (stages from a memory budget count as 1 here), or of the workers + the planner
    calib_cpus = 0 if cfg.local else (cfg.stages or 1) * cfg.replicas * cfg.num_cpus
    ensure_ray(RayResources(address=res.address, num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                            min_cpus=max(calib_cpus, opts.workers * opts.num_cpus + 1)))
    check_fits({"CPU": opts.num_cpus, "GPU": res.worker_gpus}, what="an eval worker (resources.worker_gpus)")
    if not cfg.local:
        check_fits({"CPU": cfg.num_cpus, "GPU": res.stage_gpus}, what="a calibration stage (resources.stage_gpus)")
    return opts


def run_sweep(spec: SweepSpec, *, progress: bool = True) -> Path:
    """Run (or resume) the sweep; returns the run directory (results.parquet, report/)."""
    from tqdm.auto import tqdm

    from raymoe.eval.fidelity import is_fidelity
    from raymoe.eval.fleet import EvalFleet
    from raymoe.eval.results import conform, write_results
    from raymoe.eval.tasks import parse_tasks
    from raymoe.report import build_report

    opts = _start(spec)
    sw = _Sweep(spec, progress)
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
    base = [{"variant": "unpruned", "stats": stats_id}] if spec.baseline else []
    cells: list = [None] * len(grid)  # each cell's eval key, filled by the producer
    bar = tqdm(total=(len(base) + len(grid)) * len(tasks), desc=f"sweep {spec.name}", unit="eval", disable=not progress)
    fleet = EvalFleet(opts)  # workers start on the first evaluation still to do (none on a finished rerun)
    scoring = _Scoring(sw, fleet.stream(run_id=spec.name, progress=False), tasks, bar)
    errors: list = []
    if spec.baseline:
        scoring.offer(_variant_from(model, "unpruned"), base[0])
    producer = threading.Thread(target=_produce, args=(sw, model, stats_dir, stats_id, grid, scoring, cells, errors),
                                daemon=True)
    producer.start()
    try:
        for done in scoring.stream:  # pairs of every variant written so far, as workers finish them
            scoring.write(done)
    finally:
        fleet.shutdown()
    bar.close()
    producer.join()
    if errors:
        raise errors[0]
    eval_ids = [step_id("eval", scoring.params(vp, t)) for vp in base + cells for t in tasks]
    frames = [conform(pl.read_parquet(sw.run_dir / sw.log.done(sid).outputs["rows"])) for sid in eval_ids]
    rows = pl.concat(frames).to_dicts() if frames else []
    write_results(sw.run_dir / "results.parquet", rows, overwrite=True)
    build_report(sw.run_dir, stats_dir)
    atomic_write_json(sw.run_dir / "steps.json", {"executed": sw.redone,
                                                  "eval_workers_started": fleet.worker_starts > 0,
                                                  "eval_worker_starts": fleet.worker_starts,
                                                  "engine_loads": sum(fleet.engine_loads.values()),
                                                  "virtual_variants": sum(1 for c in cells if c.get("virtual"))})
    return sw.run_dir
