"""`calibrate`: one calibration pass from a checkpoint and text to `CalibStats`.

Order of work: the model spec and shard plan (fail fast on a missing or
non-MoE model, or S > layers), the data (tokenised N x L samples), the
executor (Ray stage pool, or all stages in-process), the cluster pre-pass
(pooled final hidden states -> k-means clusters, see `raymoe.calib.token_clusters`;
skipped when K = 1), micro-batches with their probe tokens, the pass, then the
reduction into `CalibStats` with its manifest.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import raymoe
from raymoe.calib.batches import make_batches
from raymoe.calib.token_clusters import assign_clusters, effective_clusters
from raymoe.calib.config import CalibConfig
from raymoe.calib.executors import EventHook, LocalExecutor, RayExecutor
from raymoe.calib.reduce import Totals
from raymoe.calib.shard import CalibrationError, StageRange, plan_stages
from raymoe.data.text import CalibData, calibration_data
from raymoe.errors import CheckpointError
from raymoe.moe.safetensors_files import SafetensorsCheckpoint, model_hash
from raymoe.moe.model_spec import MoeModelSpec
from raymoe.store.manifest import ModelFacts, StatsManifest
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    from raymoe.calib.pool import StagePool

__all__ = ["calibrate", "prepare", "model_hash", "load_tokenizer", "Prepared"]


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: no usable tokenizer ({str(err).splitlines()[0]})") from None


class Prepared:
    """Everything checked before any actor starts: spec, checkpoint, stages, data."""

    def __init__(self, model: str | Path, config: CalibConfig, data: str | Path | CalibData):
        self.path = Path(model).resolve()
        self.spec = MoeModelSpec.from_pretrained(self.path)
        self.ckpt = SafetensorsCheckpoint(self.path)
        budget = int(config.stage_memory_gb * 2**30) if config.stage_memory_gb else None
        self.stages: list[StageRange] = plan_stages(self.spec, self.ckpt, config.stages, budget)
        if isinstance(data, CalibData):
            self.data = data
        else:
            tok = load_tokenizer(self.path)
            self.data = calibration_data(data, tok, config.samples, config.seq_len, config.seed)
        self.config = config
        self.num_clusters = effective_clusters(config.clusters, self.data.samples)
        self.probe_tokens = config.probe_count(self.spec.top_k, max(self.spec.experts.values()))


def prepare(model: str | Path, config: CalibConfig, data: str | Path | CalibData) -> Prepared:
    return Prepared(model, config, data)


def _manifest(prep: Prepared, run_info: dict) -> StatsManifest:
    """The store's manifest: the model with its config.json (family, expert counts, top_k, groups derived
    from it), so the statistics plan without the checkpoint; the data; the config; how the pass ran."""
    cfg = prep.config
    return StatsManifest(
        model=ModelFacts(path=str(prep.path), hash=model_hash(prep.path, prep.ckpt), config=dict(prep.spec.config)),
        data=dict(prep.data.info, hash=prep.data.hash),
        calibration=dict(cfg.manifest(), num_clusters=prep.num_clusters, probe_tokens_per_batch=prep.probe_tokens,
                         cluster_features="pooled final hidden states (pre-pass, k-means before the pass)"),
        run=dict(run_info, stages=[s.to_dict() for s in prep.stages], replicas=cfg.replicas, local=cfg.local,
                 placement=cfg.placement),
        raymoe_version=raymoe.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _start_ray(address: str | None, cpus_needed: float) -> None:
    """Join `address` / $RAY_ADDRESS, or start a local Ray holding the logical CPUs the stage actors reserve."""
    from raymoe.ray_cluster import RayResources, ensure_ray

    ensure_ray(RayResources(address=address, min_cpus=cpus_needed))


def calibrate(model: str | Path | Prepared, config: CalibConfig | None = None, data: str | Path | CalibData = "wiki",
              *, pool: StagePool | None = None, progress: bool = True, on_event: EventHook | None = None,
              ray_address: str | None = None, device: str = "cpu") -> CalibStats:
    """Run one calibration pass. `pool`: an existing stage pool to reuse (it is left running);
    `device`: where the in-process executor runs (`config.local`; Ray is not imported then)."""
    prep = model if isinstance(model, Prepared) else Prepared(model, config or CalibConfig(), data)
    cfg = prep.config
    own_pool = False
    if cfg.local:
        executor = LocalExecutor(device=device)
    else:
        import ray

        from raymoe.calib.pool import StagePool

        if not ray.is_initialized():
            _start_ray(ray_address, len(prep.stages) * cfg.replicas * cfg.num_cpus)
        if pool is None:
            pool = StagePool(cfg.replicas, len(prep.stages), num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
                             placement=cfg.placement, max_restarts=cfg.max_restarts)
            own_pool = True
        elif (len(pool.actors), pool.stages) != (cfg.replicas, len(prep.stages)):
            raise CalibrationError(f"stage pool is {len(pool.actors)} x {pool.stages}, "
                                   f"the run needs {cfg.replicas} x {len(prep.stages)}")
        executor = RayExecutor(pool, in_flight=cfg.in_flight, window=cfg.window, on_event=on_event)
    try:
        t0 = time.perf_counter()
        infos = executor.setup(str(prep.path), prep.stages, prep.num_clusters, cfg.dtype)
        t_setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        if prep.num_clusters > 1:
            pre = make_batches(prep.data.ids, None, cfg.micro_batch, 0, cfg.seed, prepass=True)
            clusters = assign_clusters(executor.pooled(pre, progress=progress), cfg.clusters, cfg.seed)
        else:
            clusters = np.zeros(prep.data.samples, dtype=np.int64)
        t_clusters = time.perf_counter() - t1
        batches = make_batches(prep.data.ids, clusters, cfg.micro_batch, prep.probe_tokens, cfg.seed)
        totals = Totals()
        t1 = time.perf_counter()
        info = executor.run(batches, totals, progress=progress)
        seconds = time.perf_counter() - t1
    finally:
        if own_pool:
            executor.close()
    tokens = int(prep.data.ids.size)
    run_info = dict(info, setup_seconds=round(t_setup, 3), cluster_seconds=round(t_clusters, 3),
                    pass_seconds=round(seconds, 3), tokens=tokens,
                    tokens_per_second=round(tokens / max(seconds, 1e-9), 1),
                    actors=[{k: v for k, v in i.items() if k != "loaded"} | {"loaded_tensors": len(i["loaded"])}
                            for i in infos])
    stats = totals.build(prep.spec, _manifest(prep, run_info), batches, clusters, prep.num_clusters,
                         prep.data.seq_len)
    stats.extra["actor_loaded"] = [i["loaded"] for i in infos]
    return stats
