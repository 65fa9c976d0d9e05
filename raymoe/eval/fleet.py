"""The eval fleet: a pool of worker actors scoring (variant, task) pairs, surviving worker deaths.

Scheduling: pairs are queued variant by variant; a free worker takes the next
pair of the variant it already holds (no engine reload), else the first pair
of a variant no busy worker holds, else the first pair. When a worker dies
(`RayActorError` on its in-flight call: killed process, lost node), its pair
goes back to the front of the queue with attempt + 1 and runs on another
worker (a replacement is started when `replace_dead`). Rows are collected
only from a pair's successful call and keyed by (variant, task), so nothing
is lost or counted twice. Any other failure ends the run with an error naming
the pair; no rows are returned, so no partial results are written.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import deque
from dataclasses import dataclass
from typing import Callable

import ray
from tqdm.auto import tqdm

from raymoe import __version__
from raymoe.errors import RaymoeError
from raymoe.eval.backends import BackendError, actor_options, check_backend, worker_class
from raymoe.eval.options import FleetOptions
from raymoe.eval.tasks import TaskRequest
from raymoe.eval.variants import Variant

__all__ = ["EvalFleet", "FleetEvent", "EvalError", "Job"]


class EvalError(RaymoeError):
    """A (variant, task) pair failed on a worker, or the pool ran out of workers."""


@dataclass(frozen=True)
class Job:
    variant: Variant
    task: TaskRequest
    attempt: int = 1

    @property
    def key(self) -> tuple[str, str]:
        return self.variant.name, self.task.name


@dataclass(frozen=True)
class FleetEvent:
    """What happened: `started`, `done`, `died` (worker lost with `job` in flight), `replaced`."""

    kind: str
    worker: str
    job: Job | None = None


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, RaymoeError):
        return str(cause)
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


class EvalFleet:
    """`with EvalFleet(opts) as fleet: rows = fleet.run(variants, tasks, run_id=...)`."""

    def __init__(self, opts: FleetOptions) -> None:
        self.opts = opts
        self.workers: dict[str, ray.actor.ActorHandle] = {}
        self.info: dict[str, dict] = {}  # worker id -> pid, host, ... (taken at start, while idle)
        self.busy: dict[str, Job] = {}
        self.deaths = 0
        self._next_id = 0
        self.started = False
        self.worker_starts = 0  # workers started over the fleet's life (replacements included; never reset)

    # ---- pool ------------------------------------------------------------------------------
    def __enter__(self) -> "EvalFleet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self) -> None:
        check_backend(self.opts.backend, self.opts.engine)
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):  # inside a Ray job / pointed at a cluster
                ray.init()
            else:  # a local Ray with a CPU slot per worker
                cpus = max(os.cpu_count() or 1, int(self.opts.workers * self.opts.num_cpus) + 1)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        for _ in range(self.opts.workers):
            self._add_worker()
        self.started = True

    def _add_worker(self) -> str:
        wid = f"{self.opts.backend}-{self._next_id}"
        self._next_id += 1
        cls = worker_class(self.opts.backend)
        handle = cls.options(**actor_options(self.opts.backend, self.opts.engine, self.opts.num_cpus),
                             max_restarts=0).remote(wid, self.opts.engine)
        try:
            self.info[wid] = ray.get(handle.info.remote())
        except ray.exceptions.RayError as err:
            ray.kill(handle)
            raise BackendError(f"worker {wid} ({self.opts.backend}) failed to start: {_cause(err)}") from None
        self.workers[wid] = handle
        self.worker_starts += 1
        return wid

    def shutdown(self) -> None:
        for handle in self.workers.values():
            ray.kill(handle)
        self.workers.clear()
        self.busy.clear()
        self.started = False

    def _pick(self, wid: str, pending: deque[Job]) -> Job:
        loaded = self.info[wid].get("loaded")
        held = {j.variant.path for w, j in self.busy.items() if w != wid}
        for rule in (lambda j: j.variant.path == loaded, lambda j: j.variant.path not in held, lambda j: True):
            for job in pending:
                if rule(job):
                    pending.remove(job)
                    return job
        raise AssertionError("pending is empty")

    # ---- run -------------------------------------------------------------------------------
    def run(self, variants: list[Variant], tasks: list[TaskRequest], *, run_id: str,
            on_event: Callable[[FleetEvent], None] | None = None, progress: bool = True) -> list[dict]:
        """Score every (variant, task) pair; return the result rows (see raymoe.eval.results.SCHEMA).

        Starts the workers on first use when the fleet was not started (or entered) before."""
        if not self.started:
            self.start()
        notify = on_event or (lambda e: None)
        pending = deque(Job(v, t) for v in variants for t in tasks)
        done: dict[tuple[str, str], list[dict]] = {}
        inflight: dict[ray.ObjectRef, tuple[str, Job]] = {}
        bar = tqdm(total=len(pending), desc=f"eval {run_id}", unit="job", disable=not progress)
        created = _dt.datetime.now(_dt.timezone.utc)
        try:
            while pending or inflight:
                for wid in [w for w in self.workers if w not in self.busy]:
                    if not pending:
                        break
                    job = self._pick(wid, pending)
                    ref = self.workers[wid].evaluate.remote(job.variant.path, job.task)
                    inflight[ref] = (wid, job)
                    self.busy[wid] = job
                    notify(FleetEvent("started", wid, job))
                if not inflight:
                    raise EvalError(f"no workers left with {len(pending)} pairs to run")
                [ref], _ = ray.wait(list(inflight), num_returns=1)
                wid, job = inflight.pop(ref)
                self.busy.pop(wid, None)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError:
                    self._lost(wid, job, pending, notify)
                    continue
                except ray.exceptions.RayTaskError as err:
                    raise EvalError(f"{job.variant.name} x {job.task}: failed on {wid}: {_cause(err)}") from None
                if job.key not in done:  # a pair's rows are taken once
                    done[job.key] = self._rows(run_id, job, result, created)
                self.info[wid]["loaded"] = job.variant.path
                notify(FleetEvent("done", wid, job))
                bar.set_postfix_str(f"{job.variant.name} x {job.task.name}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
        return [row for key in sorted(done) for row in done[key]]

    def _lost(self, wid: str, job: Job, pending: deque[Job], notify) -> None:
        self.deaths += 1
        handle = self.workers.pop(wid, None)
        if handle is not None:
            ray.kill(handle)
        notify(FleetEvent("died", wid, job))
        if job.attempt >= self.opts.max_attempts:
            raise EvalError(f"{job.variant.name} x {job.task}: workers died on all {job.attempt} attempts")
        pending.appendleft(Job(job.variant, job.task, job.attempt + 1))
        if self.opts.replace_dead:
            notify(FleetEvent("replaced", self._add_worker()))

    def _rows(self, run_id: str, job: Job, result: dict, created) -> list[dict]:
        v = job.variant
        common = {"run": run_id, "variant": v.name, "limit": job.task.limit, "backend": self.opts.backend,
                  "engine": result["version"], "worker": result["worker"], "attempt": job.attempt,
                  "wall_s": result["wall_s"], "model_path": v.path, "model_type": v.model_type, "family": v.family,
                  "source_model": v.source_model, "method": v.method, "ratio": v.ratio, "uniform": v.uniform,
                  "experts_total": v.experts_total, "experts_per_layer": v.experts_per_layer,
                  "params_routed": v.params_routed, "params_total": v.params_total,
                  "checkpoint_bytes": v.checkpoint_bytes, "reference": job.task.reference,
                  "config_sha256": v.config_sha256, "plan_sha256": v.plan_sha256, "raymoe_version": __version__,
                  "created": created}
        return [{**common, **metric} for metric in result["rows"]]
