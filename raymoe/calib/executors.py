"""Executors: how micro-batches flow through the stages.

`LocalExecutor` runs every stage in this process, one micro-batch after the
other (the single-process reference path). `RayExecutor` streams them through
a `StagePool`: a micro-batch's chain `stage_0.forward -> ... -> stage_S-1`
is submitted as Ray object refs (hidden states never pass through the
driver), `in_flight` chains per replica at a time, replicas fed round-robin
(micro-batch b goes to replica b mod R).

Fault handling: statistics are committed per *window* (`window` micro-batches
of one replica): when a window's batches are all done, the driver takes the
partial sums of that replica's actors and adds them to the totals. If a stage
actor dies (`RayActorError`), Ray restarts it (`max_restarts`); the driver
waits for the replica's actors, sets the restarted one up again, discards the
uncommitted sums of the whole replica (`rollback`) and redoes that window, so
the result equals an undisturbed run. Other replicas go on meanwhile.

Ray is imported by `RayExecutor` only, so the in-process path needs torch and
numpy alone (bench/gpu_check.py runs it where Ray is not installed).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Callable

import numpy as np
from tqdm.auto import tqdm

from raymoe.calib.batches import MicroBatch
from raymoe.calib.reduce import Totals
from raymoe.calib.shard import CalibrationError, StageRange
from raymoe.calib.stage import Stage

if TYPE_CHECKING:
    from raymoe.calib.pool import StagePool

__all__ = ["LocalExecutor", "RayExecutor"]

EventHook = Callable[[str, dict], None]

ray = None  # imported by the first RayExecutor (`_import_ray`): the in-process path runs without Ray
_ACTOR_ERRORS: tuple[type[BaseException], ...] = ()


def _import_ray() -> None:
    global ray, _ACTOR_ERRORS
    if ray is None:
        import ray as _ray

        ray = _ray
        _ACTOR_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)


class LocalExecutor:
    """All stages in this process (no Ray)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.stages: list[Stage] = []

    def setup(self, model_path: str, stages: list[StageRange], num_clusters: int, dtype: str) -> list[dict]:
        self.stages = [Stage(model_path, st, num_clusters=num_clusters, dtype=dtype, device=self.device)
                       for st in stages]
        return [s.info() for s in self.stages]

    def pooled(self, batches: list[MicroBatch], progress: bool = True) -> np.ndarray:
        """The cluster pre-pass: pooled final hidden states of every sequence [N, H] (no statistics)."""
        rows = {}
        for mb in tqdm(batches, desc="calibrate: cluster pre-pass", unit="batch", disable=not progress):
            x = mb
            for stage in self.stages:
                x = stage.forward(x)
            rows.update(zip(x.seq_ids.tolist(), x.pooled))
        return np.stack([rows[i] for i in range(len(rows))])

    def run(self, batches: list[MicroBatch], totals: Totals, progress: bool = True) -> dict:
        for mb in tqdm(batches, desc="calibrate", unit="batch", disable=not progress):
            x = mb
            for stage in self.stages:
                x = stage.forward(x)
        for stage in self.stages:
            totals.add(stage.take_stats())
        return {"restarts": 0, "redone_windows": 0}

    def close(self) -> None:
        self.stages = []


class _Replica:
    def __init__(self, index: int, actors: list, batches: list[MicroBatch], window: int):
        self.index, self.actors = index, actors
        self.windows = deque(batches[i:i + window] for i in range(0, len(batches), window))
        self.current: list[MicroBatch] = []
        self.queue: deque[MicroBatch] = deque()
        self.inflight: dict = {}  # ref -> batch
        self.done = 0
        self.failures = 0

    def next_window(self) -> bool:
        if self.current or not self.windows:
            return bool(self.current)
        self.current = list(self.windows.popleft())
        self.queue, self.done, self.failures = deque(self.current), 0, 0
        return True


class RayExecutor:
    """Stream micro-batches through a pool of stage actors (see the module docstring)."""

    def __init__(self, pool: StagePool, *, in_flight: int = 4, window: int = 8, max_window_retries: int = 3,
                 revive_timeout: float = 180.0, on_event: EventHook | None = None):
        self.pool, self.in_flight, self.window = pool, in_flight, window
        self.max_window_retries, self.revive_timeout = max_window_retries, revive_timeout
        self.on_event = on_event or (lambda name, info: None)
        self.setup_args: tuple | None = None
        _import_ray()

    def setup(self, model_path: str, stages: list[StageRange], num_clusters: int, dtype: str) -> list[dict]:
        if len(stages) != self.pool.stages:
            raise CalibrationError(f"the stage pool has {self.pool.stages} stages, the shard plan {len(stages)}")
        self.stage_ranges = stages
        self.setup_args = (str(model_path), num_clusters, dtype, self.pool.device)
        refs = [a.setup.remote(model_path, stages[s], num_clusters, dtype, self.pool.device)
                for row in self.pool.actors for s, a in enumerate(row)]
        return ray.get(refs)

    def pooled(self, batches: list[MicroBatch], progress: bool = True) -> np.ndarray:
        """The cluster pre-pass on the replicas (round-robin, `in_flight` chains each); a replica whose
        actor fails is revived and its unfinished pre-pass batches are submitted again."""
        R = len(self.pool.actors)
        reps = [_Replica(r, self.pool.actors[r], [], self.window) for r in range(R)]
        for r, rep in enumerate(reps):
            rep.queue = deque(batches[r::R])
        rows, failures = {}, 0
        with tqdm(total=len(batches), desc="calibrate: cluster pre-pass", unit="batch",
                  disable=not progress) as bar:
            while any(rep.queue or rep.inflight for rep in reps):
                for rep in reps:
                    while rep.queue and len(rep.inflight) < self.in_flight:
                        self._submit(rep, rep.queue.popleft(), quiet=True)
                owner = {ref: rep for rep in reps for ref in rep.inflight}
                ready, _ = ray.wait(list(owner), num_returns=1)
                for ref in ready:
                    rep = owner[ref]
                    mb = rep.inflight.pop(ref)
                    try:
                        out = ray.get(ref)
                    except _ACTOR_ERRORS as err:
                        failures += 1
                        if failures > self.max_window_retries:
                            raise CalibrationError(f"cluster pre-pass: stage actors failed {failures} times "
                                                   f"({type(err).__name__}: {err})") from None
                        rep.queue.extendleft([mb, *rep.inflight.values()])
                        rep.inflight.clear()
                        self._revive(rep)
                        break
                    rows.update(zip(out.seq_ids.tolist(), out.pooled))
                    bar.update(1)
        return np.stack([rows[i] for i in range(len(rows))])

    # ---- the streaming loop ---------------------------------------------------------------------
    def _submit(self, rep: _Replica, mb: MicroBatch, quiet: bool = False) -> None:
        ref = mb
        for actor in rep.actors:
            ref = actor.forward.remote(ref)
        rep.inflight[ref] = mb
        if quiet:  # the pre-pass reports no events
            return
        self.on_event("submitted", {"replica": rep.index, "batch": mb.batch_id, "actors": rep.actors})

    def _revive(self, rep: _Replica) -> int:
        """Wait for the replica's actors, set restarted ones up again, drop uncommitted sums."""
        model_path, num_clusters, dtype, device = self.setup_args
        deadline = time.monotonic() + self.revive_timeout
        restarted = 0
        for s, actor in enumerate(rep.actors):
            while True:
                try:
                    state = ray.get(actor.ping.remote(), timeout=30)
                    break
                except (*_ACTOR_ERRORS, ray.exceptions.GetTimeoutError) as err:
                    if time.monotonic() > deadline:
                        raise CalibrationError(f"stage actor {s} of replica {rep.index} did not come back "
                                               f"after a failure ({type(err).__name__}); raise max_restarts "
                                               f"or check the cluster") from None
                    time.sleep(0.5)
            if state["key"] is None:
                restarted += 1
                ray.get(actor.setup.remote(model_path, self.stage_ranges[s], num_clusters, dtype, device))
        ray.get([a.rollback.remote() for a in rep.actors])
        return restarted

    def _fail(self, rep: _Replica, err: Exception, bar) -> int:
        rep.failures += 1
        if rep.failures > self.max_window_retries:
            raise CalibrationError(f"replica {rep.index}: a stage actor failed {rep.failures} times in one window "
                                   f"({type(err).__name__}: {err})") from None
        if rep.inflight:  # let the window's other calls settle (they fail or finish) before the rollback
            ray.wait(list(rep.inflight), num_returns=len(rep.inflight), timeout=self.revive_timeout)
        rep.inflight.clear()
        restarted = self._revive(rep)
        bar.update(-rep.done)
        rep.queue, rep.done = deque(rep.current), 0
        self.on_event("redo", {"replica": rep.index, "restarted": restarted})
        return restarted

    def run(self, batches: list[MicroBatch], totals: Totals, progress: bool = True) -> dict:
        R = len(self.pool.actors)
        reps = [_Replica(r, self.pool.actors[r], batches[r::R], self.window) for r in range(R)]
        restarts = redone = 0
        with tqdm(total=len(batches), desc="calibrate", unit="batch", disable=not progress) as bar:
            while any([rep.next_window() for rep in reps]):  # a list: every replica starts its next window
                for rep in reps:
                    while rep.queue and len(rep.inflight) < self.in_flight:
                        self._submit(rep, rep.queue.popleft())
                owner = {ref: rep for rep in reps for ref in rep.inflight}
                ready, _ = ray.wait(list(owner), num_returns=1)
                for ref in ready:
                    rep = owner[ref]
                    if ref not in rep.inflight:
                        continue
                    try:
                        ray.get(ref)
                    except _ACTOR_ERRORS as err:
                        restarts += self._fail(rep, err, bar)
                        redone += 1
                        continue
                    del rep.inflight[ref]
                    rep.done += 1
                    bar.update(1)
                    if rep.done == len(rep.current):
                        try:
                            parts = ray.get([a.take_stats.remote() for a in rep.actors])
                        except _ACTOR_ERRORS as err:
                            restarts += self._fail(rep, err, bar)
                            redone += 1
                            continue
                        for part in parts:
                            totals.add(part)
                        self.on_event("committed", {"replica": rep.index,
                                                    "batches": [m.batch_id for m in rep.current]})
                        rep.current = []
        return {"restarts": restarts, "redone_windows": redone}

    def close(self) -> None:
        self.pool.shutdown()
