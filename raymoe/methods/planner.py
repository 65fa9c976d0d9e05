"""The planner actor: loads a stats store once, answers many (method, ratio, options) requests.

The central actor of the design (docs/DESIGN.md): a sweep asks it for the
plans of every (method, ratio, uniform, options) it needs; the statistics and
the expert-weights view are read once and kept. Plans come back as JSON-able
dicts (`PrunePlan.model_dump(mode="json")`), never as pickled objects on disk.
`StatsPlanner` is the plain class (usable in-process); `Planner` is it as an actor.

    planner = Planner.remote("results/stats/olmoe")
    plan = PrunePlan.model_validate(ray.get(planner.plan.remote("reap", 0.5)))
"""

from __future__ import annotations

import time
from typing import Any

import ray

__all__ = ["Planner", "StatsPlanner"]


class StatsPlanner:
    """One stats store and its expert-weights view, kept; each request validated once (`raymoe.methods.validate`)."""

    def __init__(self, stats_path: str):
        from raymoe.store import load_stats

        t0 = time.perf_counter()
        self.stats_path = str(stats_path)
        self.stats = load_stats(stats_path)
        self.load_s = time.perf_counter() - t0
        self._weights = None
        self.served = 0

    def _weights_for(self, request) -> Any:
        from raymoe.methods import open_weights

        if not request.needs_weights:
            return None
        if self._weights is None:
            self._weights = open_weights(self.stats, required=request.method.weights == "required")
        return self._weights

    def plan(self, method: str, ratio: float, uniform: bool = False,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The plan of one request as a JSON-able dict (errors are RaymoeError subclasses)."""
        from raymoe.methods import validate

        request = validate(self.stats, method, ratio, uniform=uniform, options=options)
        plan = request.run(self._weights_for(request))
        self.served += 1
        return plan.model_dump(mode="json")

    def plans(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many requests: each {"method", "ratio", "uniform"?, "options"?}."""
        return [self.plan(r["method"], r["ratio"], r.get("uniform", False), r.get("options")) for r in requests]

    def info(self) -> dict[str, Any]:
        s = self.stats
        return {"stats": self.stats_path, "manifest": s.manifest.to_json(), "experts": s.experts(), "load_s": self.load_s,
                "served": self.served}


#: the Ray actor (1 CPU, 4 GiB reserved; change with `Planner.options(...)`)
Planner = ray.remote(num_cpus=1, memory=4 * 1024**3, max_restarts=1)(StatsPlanner)
