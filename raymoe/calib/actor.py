"""The stage actor: a Ray process hosting one `Stage` (one contiguous range of decoder layers).

The actor starts empty and is given its stage by `setup` (idempotent for the
same model and range), so a pool of actors can serve several calibrations
without paying the process start again, and so that the driver can set up a
restarted actor (Ray re-runs only `__init__` on restart). Resources are on the
decorator; the pool overrides them per run through `.options`.
"""

from __future__ import annotations

import gc
import os

import ray

from raymoe.calib.shard import StageRange

__all__ = ["StageActor"]


@ray.remote(num_cpus=1, max_restarts=3, max_task_retries=0)
class StageActor:
    def __init__(self, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.stage = None
        self.key: tuple | None = None

    def ping(self) -> dict:
        import resource

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "key": self.key,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

    def setup(self, model_path: str, stage: StageRange, num_clusters: int, dtype: str, device: str) -> dict:
        from raymoe.calib.stage import Stage

        key = (str(model_path), stage, num_clusters, dtype, device)
        if key != self.key:
            self.stage, self.key = None, None
            gc.collect()
            self.stage = Stage(model_path, stage, num_clusters=num_clusters, dtype=dtype, device=device)
            self.key = key
        return self.info()

    def forward(self, mb):
        return self.stage.forward(mb)

    def take_stats(self) -> dict:
        return self.stage.take_stats()

    def rollback(self) -> None:
        if self.stage is not None:
            self.stage.rollback()

    def info(self) -> dict:
        out = self.stage.info() if self.stage is not None else {"pid": os.getpid()}
        out["node"] = ray.get_runtime_context().get_node_id()
        return out

    def release(self) -> None:
        self.stage, self.key = None, None
        gc.collect()
