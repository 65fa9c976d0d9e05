"""The eval fleet: a pool of worker actors scoring (variant, task) pairs as they arrive, surviving worker deaths.

Two ways in:
- `fleet.run(variants, tasks, run_id=...)` scores a fixed set and returns every row (`raymoe eval`);
- `stream = fleet.stream(run_id=...)`: `stream.submit(variant, tasks)` from any thread, as variants
  appear (the sweep's producer thread), `stream.close()` when no more will come, and
  `for done in stream:` yields a `Completed` (job, rows, worker, start and finish times) for each pair
  as it finishes, in completion order; the caller writes it at once, so a killed driver loses only
  pairs still in flight. Iterating the stream is what schedules: do it in one thread.

Scheduling: a free worker takes the oldest pending pair of the checkpoint it holds (no engine reload;
virtual variants of one source all hold the source, so a worker keeps scoring plans of the model it has),
else the oldest pair of a variant no other worker is running or holds, else the oldest pair of a
variant no busy worker runs, else the oldest pair. So with more workers than tasks per variant, the
workers spread over the variants available (pairs of different variants run at once), and each
worker keeps its variant while it has pairs left. No worker idles while a pair is pending (engine
reuse orders the pending pairs; it never holds one back). Workers start on the first pair submitted
(all at once, after `ensure_ray` and a check that one worker fits some node) and replacements start
in the background while the others keep working.

Faults: when a worker dies (`RayActorError` on its in-flight call: killed process, lost node), its
pair goes back to the front of the queue with attempt + 1 (at most `max_attempts`) and runs on
another worker (a replacement is started when `replace_dead`). Rows are taken only from a pair's
successful call, so nothing is lost or counted twice. Any other failure ends the stream with an
error naming the pair; pairs yielded before it stay valid.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterator

import ray
from tqdm.auto import tqdm

from raymoe import __version__
from raymoe.errors import RaymoeError, EvalError
from raymoe.eval.backends import BACKENDS, BackendError
from raymoe.eval.fleet_stream import Completed, FleetEvent, FleetStream, Job
from raymoe.eval.options import FleetOptions
from raymoe.eval.tasks import TaskRequest
from raymoe.eval.variants import Variant
from raymoe.ray_cluster import RayResources, check_fits, ensure_ray

__all__ = ["EvalFleet", "FleetStream", "FleetEvent", "Completed", "EvalError", "Job"]

POLL_S = 0.05  # how often a fleet with idle workers looks for new submissions while pairs run


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, RaymoeError):
        return str(cause)
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


class EvalFleet:
    """`with EvalFleet(opts) as fleet: rows = fleet.run(variants, tasks, run_id=...)`, or `fleet.stream(...)`."""

    def __init__(self, opts: FleetOptions) -> None:
        self.opts = opts
        self.backend = BACKENDS.get(opts.backend)
        self.workers: dict[str, ray.actor.ActorHandle] = {}  # started and ready
        self.info: dict[str, dict] = {}  # worker id -> pid, host, loaded variant path, ...
        self.busy: dict[str, Job] = {}
        self.deaths = 0
        self._next_id = 0
        self._starting: dict[ray.ObjectRef, tuple[str, ray.actor.ActorHandle]] = {}  # info ref -> worker
        self.started = False
        self.worker_starts = 0  # workers started over the fleet's life (replacements included; never reset)
        self.engine_loads: dict[str, int] = {}  # worker id -> model loads it reported (dead workers kept)

    # ---- pool ------------------------------------------------------------------------------
    def __enter__(self) -> "EvalFleet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self) -> None:
        """Connect to Ray (raymoe.ray_cluster.ensure_ray), check a worker fits a node, start the workers."""
        o, backend = self.opts, self.backend
        backend.check(o.engine)
        ensure_ray(RayResources(min_cpus=o.workers * o.num_cpus + 1))
        need = backend.actor_options(o.engine, o.num_cpus)
        check_fits({"CPU": need["num_cpus"], "GPU": need.get("num_gpus", 0)}, what=f"an eval worker ({backend.name})")
        refs = [self._launch() for _ in range(o.workers)]
        for ref in refs:  # they start in parallel
            self._ready(ref)
        self.started = True

    def _launch(self) -> ray.ObjectRef:
        wid = f"{self.backend.name}-{self._next_id}"
        self._next_id += 1
        options = self.backend.actor_options(self.opts.engine, self.opts.num_cpus)
        handle = self.backend.worker_class().options(**options, max_restarts=0).remote(wid, self.opts.engine)
        ref = handle.info.remote()
        self._starting[ref] = (wid, handle)
        self.worker_starts += 1
        return ref

    def _ready(self, ref: ray.ObjectRef) -> None:
        wid, handle = self._starting.pop(ref)
        try:
            self.info[wid] = ray.get(ref)
        except ray.exceptions.RayError as err:
            ray.kill(handle)
            raise BackendError(f"worker {wid} ({self.backend.name}) failed to start: {_cause(err)}") from None
        self.workers[wid] = handle

    def shutdown(self) -> None:
        for handle in [*self.workers.values(), *(h for _, h in self._starting.values())]:
            ray.kill(handle)
        self.workers.clear()
        self._starting.clear()
        self.busy.clear()
        self.started = False

    def _pick(self, wid: str, pending: deque[Job]) -> Job:
        loaded = self.info[wid].get("loaded")
        running = {j.variant.path for w, j in self.busy.items() if w != wid}
        held = running | {i.get("loaded") for w, i in self.info.items() if w != wid and w in self.workers}
        for rule in (lambda j: j.variant.path == loaded, lambda j: j.variant.path not in held,
                     lambda j: j.variant.path not in running, lambda j: True):
            for job in pending:
                if rule(job):
                    pending.remove(job)
                    return job
        raise AssertionError("pending is empty")

    # ---- scoring ---------------------------------------------------------------------------
    def stream(self, *, run_id: str, on_event: Callable[[FleetEvent], None] | None = None,
               progress: bool = True) -> FleetStream:
        """A stream of pairs to score (see the module docstring); workers start on its first pair."""
        return FleetStream(self, run_id, on_event, progress)

    def run(self, variants: list[Variant], tasks: list[TaskRequest], *, run_id: str,
            on_event: Callable[[FleetEvent], None] | None = None, progress: bool = True) -> list[dict]:
        """Score every (variant, task) pair; return the result rows sorted by (variant, task)."""
        stream = self.stream(run_id=run_id, on_event=on_event, progress=progress)
        for v in variants:
            stream.submit(v, tasks)
        stream.close()
        done = {c.job.key: c.rows for c in stream}
        return [row for key in sorted(done) for row in done[key]]

    def _dispatch(self, pending: deque[Job], inflight: dict, notify) -> None:
        paths = {j.variant.path for j in pending}
        # idle workers whose variant has pairs left choose first, so no other worker takes those pairs
        idle = sorted((w for w in self.workers if w not in self.busy),
                      key=lambda w: self.info[w].get("loaded") not in paths)
        for wid in idle:
            if not pending:
                break
            job = self._pick(wid, pending)
            ref = self.workers[wid].evaluate.remote(job.variant.path, job.task, job.variant.mask)
            inflight[ref] = (wid, job, time.time())
            self.busy[wid] = job
            notify(FleetEvent("started", wid, job))

    def _serve(self, stream: FleetStream) -> Iterator[Completed]:
        notify = stream.notify
        pending: deque[Job] = deque()
        inflight: dict[ray.ObjectRef, tuple[str, Job, float]] = {}
        bar = tqdm(total=0, desc=f"eval {stream.run_id}", unit="job", disable=not stream.progress)
        try:
            while True:
                quiet = not pending and not inflight and not self._starting
                stream._drain(pending, block=stream.open and quiet)
                if bar.total != stream.submitted:
                    bar.total = stream.submitted
                    bar.refresh()
                if not pending and not inflight and not (stream.open and self._starting):
                    if not stream.open:
                        return
                    continue
                if pending and not self.started:
                    self.start()
                self._dispatch(pending, inflight, notify)
                if pending and not inflight and not self._starting:
                    raise EvalError(f"no workers left with {len(pending)} pairs to run")
                poll = stream.open and len(self.busy) < len(self.workers)
                ready, _ = ray.wait([*inflight, *self._starting], num_returns=1, timeout=POLL_S if poll else None)
                for ref in ready:
                    if ref in self._starting:
                        self._ready(ref)
                        continue
                    wid, job, t0 = inflight.pop(ref)
                    self.busy.pop(wid, None)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        self._lost(wid, job, pending, notify)
                        continue
                    except ray.exceptions.RayTaskError as err:
                        raise EvalError(f"{job.variant.name} x {job.task}: failed on {wid}: {_cause(err)}") from None
                    self.info[wid]["loaded"] = job.variant.path
                    self.engine_loads[wid] = int(result.get("loads") or 0)
                    notify(FleetEvent("done", wid, job))
                    bar.set_postfix_str(f"{job.variant.name} x {job.task.name}", refresh=False)
                    bar.update(1)
                    yield Completed(job, self._rows(stream, job, result), wid, t0, time.time())
        finally:
            bar.close()

    def _lost(self, wid: str, job: Job, pending: deque[Job], notify) -> None:
        self.deaths += 1
        handle = self.workers.pop(wid, None)
        self.info.pop(wid, None)
        if handle is not None:
            ray.kill(handle)
        notify(FleetEvent("died", wid, job))
        if job.attempt >= self.opts.max_attempts:
            raise EvalError(f"{job.variant.name} x {job.task}: workers died on all {job.attempt} attempts")
        pending.appendleft(Job(job.variant, job.task, job.attempt + 1))
        if self.opts.replace_dead:
            self._launch()
            notify(FleetEvent("replaced", f"{self.backend.name}-{self._next_id - 1}"))

    def _rows(self, stream: FleetStream, job: Job, result: dict) -> list[dict]:
        v = job.variant
        common = {"run": stream.run_id, "variant": v.name, "limit": job.task.limit, "backend": self.backend.name,
                  "engine": result["version"], "worker": result["worker"], "attempt": job.attempt,
                  "wall_s": result["wall_s"], "model_path": v.path, "model_type": v.model_type, "family": v.family,
                  "source_model": v.source_model, "method": v.method, "ratio": v.ratio, "uniform": v.uniform,
                  "experts_total": v.experts_total, "experts_per_layer": v.experts_per_layer,
                  "params_routed": v.params_routed, "params_total": v.params_total,
                  "checkpoint_bytes": v.checkpoint_bytes, "reference": job.task.reference,
                  "config_sha256": v.config_sha256, "plan_sha256": v.plan_sha256, "virtual": v.virtual,
                  "plan_path": v.plan_path, "raymoe_version": __version__,
                  "created": stream.created}
        return [{**common, **metric} for metric in result["rows"]]
