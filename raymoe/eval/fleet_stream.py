"""The fleet's jobs and its stream: pairs submitted from any thread, finished pairs yielded in completion order.

`FleetStream` is what `EvalFleet.stream(...)` returns (see raymoe.eval.fleet for the scheduling):
`submit(variant, tasks)` and `close(cancel=False)` are thread-safe (a producer thread calls them as
variants appear); iterating it runs the fleet's scheduler in the iterating thread and yields a
`Completed` per pair as it finishes. A (variant, task) pair may be submitted once per stream.
"""

from __future__ import annotations

import datetime as _dt
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from raymoe.eval.tasks import TaskRequest
from raymoe.eval.variants import Variant

if TYPE_CHECKING:
    from raymoe.eval.fleet import EvalFleet

__all__ = ["Job", "FleetEvent", "Completed", "FleetStream"]


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


@dataclass(frozen=True)
class Completed:
    """A finished pair: its rows (raymoe.eval.results.SCHEMA), the worker, and when it ran (epoch s)."""

    job: Job
    rows: list[dict]
    worker: str
    started: float  # dispatched to the worker
    finished: float  # result seen by the driver


_CLOSE, _CANCEL = object(), object()


class FleetStream:
    """Pairs in (`submit`, `close`: any thread), finished pairs out (iterate: one thread)."""

    def __init__(self, fleet: "EvalFleet", run_id: str, on_event: Callable[[FleetEvent], None] | None,
                 progress: bool) -> None:
        self.fleet, self.run_id, self.progress = fleet, run_id, progress
        self.notify = on_event or (lambda e: None)
        self.created = _dt.datetime.now(_dt.timezone.utc)
        self.submitted = 0
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()
        self._closed = False
        self.open = True  # seen from the iterating side: more pairs may come

    def submit(self, variant: Variant, tasks: Sequence[TaskRequest]) -> None:
        """Queue (variant, task) for every task; a pair may be submitted once per stream."""
        with self._lock:
            if self._closed:
                raise RuntimeError("submit after close")
            jobs = [Job(variant, t) for t in tasks]
            dup = [j.key for j in jobs if j.key in self._keys] or len({j.key for j in jobs}) < len(jobs)
            if dup:
                raise ValueError(f"pair submitted twice: {dup}")
            for job in jobs:
                self._keys.add(job.key)
                self._inbox.put(job)
            self.submitted += len(jobs)

    def close(self, cancel: bool = False) -> None:
        """No more pairs will come; `cancel`: also drop the pairs not yet started (those running finish)."""
        with self._lock:
            self._closed = True
            self._inbox.put(_CANCEL if cancel else _CLOSE)

    def _drain(self, pending: deque[Job], block: bool) -> None:
        items = [self._inbox.get()] if block else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is _CLOSE or item is _CANCEL:
                self.open = False
                if item is _CANCEL:
                    pending.clear()
            else:
                pending.append(item)

    def __iter__(self) -> Iterator[Completed]:
        return self.fleet._serve(self)
