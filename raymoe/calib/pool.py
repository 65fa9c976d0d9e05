"""A pool of stage actors: R pipeline replicas x S stages, each replica in its own placement group.

Every replica reserves S bundles ({CPU: num_cpus, GPU: num_gpus}) in one
placement group: PACK (default: stages share nodes where they fit), SPREAD,
or STRICT_SPREAD (every stage on a different node). A group that cannot be
placed within `timeout` seconds is an error naming the request.
"""

from __future__ import annotations

import math

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raymoe.calib.actor import StageActor
from raymoe.calib.shard import CalibrationError

__all__ = ["StagePool", "STRATEGIES"]

STRATEGIES = {"pack": "PACK", "spread": "SPREAD", "strict_spread": "STRICT_SPREAD"}


class StagePool:
    def __init__(self, replicas: int, stages: int, *, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 placement: str = "pack", max_restarts: int = 3, timeout: float = 120.0):
        bundle = {k: v for k, v in (("CPU", num_cpus), ("GPU", num_gpus)) if v > 0}
        if not bundle:
            raise CalibrationError("a stage actor needs num_cpus > 0 or num_gpus > 0")
        self.replicas, self.stages, self.num_gpus = replicas, stages, num_gpus
        self.placement = placement
        self.pgs, self.actors = [], []
        try:
            for _ in range(replicas):
                pg = placement_group([dict(bundle) for _ in range(stages)], strategy=STRATEGIES[placement])
                self.pgs.append(pg)
                try:
                    ray.get(pg.ready(), timeout=timeout)
                except ray.exceptions.GetTimeoutError:
                    raise CalibrationError(
                        f"cannot place {replicas} x {stages} stage actors with {bundle} each "
                        f"({STRATEGIES[placement]}) on this Ray cluster ({ray.cluster_resources()})") from None
                threads = max(1, math.floor(num_cpus))
                self.actors.append([
                    StageActor.options(
                        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=s),
                    ).remote(threads)
                    for s in range(stages)
                ])
        except BaseException:
            self.shutdown()
            raise

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"

    def all_actors(self) -> list:
        return [a for row in self.actors for a in row]

    def nodes(self) -> list[list[str]]:
        """Node id of every actor, [replica][stage]."""
        return [[p["node"] for p in ray.get([a.ping.remote() for a in row])] for row in self.actors]

    def shutdown(self) -> None:
        for a in self.all_actors():
            ray.kill(a, no_restart=True)
        for pg in self.pgs:
            remove_placement_group(pg)
        self.actors, self.pgs = [], []
