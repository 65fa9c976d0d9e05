"""Calibration configuration: one typed, validated object (fails before any work)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from raymoe.store.calib_stats import SCHEMA_VERSION

__all__ = ["CalibConfig", "DTYPES", "Placement"]

DTYPES = ("auto", "float32", "bfloat16", "float16")
#: how the stage actors spread over the nodes (Ray placement-group strategies)
Placement = Literal["pack", "strict_spread", "spread"]


class CalibConfig(BaseModel):
    """How a calibration pass runs and what it samples.

    Probe budget. Every expert runs on P probe tokens per micro-batch (E x P
    expert evaluations next to the k x T of the routed forward, T = micro_batch x
    seq_len) and each probe token re-routes once per expert for the leave-one-out
    errors (Pathfinder's node weights, NAEE's objective). An expert's leave-one-out
    error is an average over the probe tokens routed to it, about P_total k / E of
    them (P_total = P x micro-batches). By default
        P = max(probe_fraction x k x T / E,  ceil(probe_hits x E / (k x micro-batches)),  8)
    (at most T): probes cost at least `probe_fraction` of the routed expert compute,
    and every expert gets at least `probe_hits` routed probe hits on average
    (Mixtral E=8, k=2, 128 x 512 in 32 batches: P=26, 208 hits; DeepSeek-V3 E=256, k=8:
    P=64, 64 hits, where probes then double the expert compute; the testbed E=16, k=4,
    32 x 256 in 8 batches: P=32, 64 hits). `probe_tokens` fixes P instead.

    Calibration clusters (Pathfinder, `clusters` > 1) come from a pre-pass: one
    forward of every micro-batch without statistics, pooling the final hidden
    states (see `raymoe.calib.token_clusters`); it costs about one bare forward.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(128, ge=1, description="calibration sequences N")
    seq_len: int = Field(512, ge=2, description="tokens per sequence L")
    seed: int = Field(0, description="seed of sample windows, probe tokens and k-means")
    micro_batch: int = Field(4, ge=1, description="sequences per micro-batch")
    probe_tokens: int | None = Field(None, ge=0, description="tokens per micro-batch on which every expert runs "
                                     "(None: from probe_fraction)")
    probe_fraction: float = Field(0.05, gt=0, le=1, description="default probe cost / routed expert cost")
    probe_hits: int = Field(64, ge=0, description="default: at least this many routed probe tokens per expert "
                            "on average (leave-one-out errors)")
    clusters: int = Field(10, ge=1, description="calibration clusters K for Pathfinder (fewer if N < K)")
    stages: int | None = Field(None, ge=1, description="pipeline stages S (None: from stage_memory_gb, else 1)")
    stage_memory_gb: float | None = Field(None, gt=0, description="per-stage weight budget when S is not given")
    replicas: int = Field(1, ge=1, description="data-parallel pipeline replicas R")
    in_flight: int = Field(4, ge=1, description="micro-batches in flight per replica")
    window: int = Field(8, ge=1, description="micro-batches per replica between commits (fault recovery unit)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per stage actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per stage actor")
    placement: Placement = "pack"
    max_restarts: int = Field(3, ge=0, description="restarts of a dead stage actor (its window is redone)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    local: bool = Field(False, description="run all stages in this process (no Ray)")

    @model_validator(mode="after")
    def _check(self) -> "CalibConfig":
        if self.stages is not None and self.stage_memory_gb is not None:
            raise ValueError("give either stages or stage_memory_gb, not both")
        return self

    @property
    def num_batches(self) -> int:
        return -(-self.samples // self.micro_batch)

    @computed_field  # part of model_dump, so caches keyed by the config change with the schema
    @property
    def stats_schema(self) -> int:
        return SCHEMA_VERSION

    def probe_count(self, top_k: int, max_experts: int) -> int:
        """Probe tokens P per micro-batch (see the class docstring)."""
        tokens = self.micro_batch * self.seq_len
        if self.probe_tokens is not None:
            return min(self.probe_tokens, tokens)
        by_cost = round(self.probe_fraction * top_k * tokens / max_experts)
        by_hits = math.ceil(self.probe_hits * max_experts / (top_k * self.num_batches))
        return min(tokens, max(8, by_cost, by_hits))

    def manifest(self) -> dict:
        """The part of the config that decides the statistics (not how they were computed)."""
        keep = ("samples", "seq_len", "seed", "micro_batch", "probe_tokens", "probe_fraction", "probe_hits",
                "clusters", "dtype", "stats_schema")
        return {k: getattr(self, k) for k in keep}
