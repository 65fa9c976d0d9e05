"""One Ray start-up policy for every entry point (sweep, `raymoe eval`, the fleet, calibration).

`ensure_ray(RayResources(...))`:
1. Ray already initialised in this process: use it as it is;
2. an address (`RayResources.address`, else `$RAY_ADDRESS`, e.g. inside `ray job submit`): join that
   cluster; the CPU/GPU counts are the cluster's own and the requested ones are ignored;
3. otherwise: start a new local Ray (`address="local"`: never one that another process started with
   `ray start`) on loopback (127.0.0.1, no dashboard) with `num_cpus` logical CPUs
   (default: max(os.cpu_count(), ceil(min_cpus)), so every actor the caller reserves fits) and
   `num_gpus` GPUs (default: Ray's detection).

`check_fits(need, what=...)` then checks a per-actor request (e.g. {"GPU": 2} per eval worker)
against the nodes of the cluster now connected: an actor that no node can hold would wait forever,
so it is a user error, raised before any work starts.
"""

from __future__ import annotations

import math
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from raymoe.errors import ResourceError

__all__ = ["RayResources", "ensure_ray", "check_fits", "node_resources", "ResourceError"]

LOOPBACK = "127.0.0.1"


class RayResources(BaseModel):
    """What the caller wants from Ray: where it runs, and what a local Ray must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None  # join this cluster ("auto", "ray://...", "HOST:PORT"); None: $RAY_ADDRESS
    num_cpus: float | None = Field(None, gt=0)  # a local Ray's logical CPUs (None: see min_cpus)
    num_gpus: float | None = Field(None, ge=0)  # a local Ray's GPUs (None: detected)
    min_cpus: float = Field(0, ge=0)  # CPUs the caller's concurrent actors reserve (a local Ray gets >= this)

    def local_cpus(self) -> int:
        if self.num_cpus is not None:
            return math.ceil(self.num_cpus)
        return max(os.cpu_count() or 1, math.ceil(self.min_cpus))


def ensure_ray(resources: RayResources | None = None) -> Literal["running", "joined", "local"]:
    """Make sure this process is connected to Ray (see the module docstring); returns which case applied."""
    import ray

    res = resources or RayResources()
    if ray.is_initialized():
        return "running"
    address = res.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
        return "joined"
    kwargs = {} if res.num_gpus is None else {"num_gpus": res.num_gpus}
    ray.init(address="local", num_cpus=res.local_cpus(), include_dashboard=False, log_to_driver=False,
             _node_ip_address=LOOPBACK, **kwargs)
    return "local"


def node_resources() -> list[dict[str, float]]:
    """The total resources of every alive node of the connected cluster."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def check_fits(need: dict[str, float], *, what: str) -> None:
    """Raise ResourceError (one line) unless some alive node can hold one actor asking `need` ({"GPU": 2})."""
    need = {k: v for k, v in need.items() if v and v > 0}
    if not need:
        return
    nodes = node_resources()
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return
    asked = ", ".join(f"{v:g} {k}" for k, v in sorted(need.items()))
    most = ", ".join(f"{max((node.get(k, 0.0) for node in nodes), default=0.0):g} {k}" for k in sorted(need))
    raise ResourceError(f"{what} asks for {asked} each, but no node of the Ray cluster has that much "
                        f"(at most {most} per node, {len(nodes)} node(s))")
