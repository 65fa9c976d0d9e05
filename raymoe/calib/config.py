"""Calibration configuration: one typed, validated object (fails before any work)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CalibConfig", "DTYPES"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


class CalibConfig(BaseModel):
    """How a calibration pass runs and what it samples.

    Cost of the sampled statistics per micro-batch of T = micro_batch x seq_len
    tokens: every expert runs on P probe tokens, E x P expert evaluations next
    to the k x T of the routed forward. By default P = probe_fraction x k x T / E
    (at least 8), so the probes add about `probe_fraction` of the routed expert
    compute whatever E (Mixtral E=8, k=2, T=2048: P=51; DeepSeek-V3 E=256, k=8: P=8).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(128, ge=1, description="calibration sequences N")
    seq_len: int = Field(512, ge=2, description="tokens per sequence L")
    seed: int = Field(0, description="seed of sample windows, probe tokens and k-means")
    micro_batch: int = Field(4, ge=1, description="sequences per micro-batch")
    probe_tokens: int | None = Field(None, ge=0, description="tokens per micro-batch on which every expert runs "
                                     "(None: from probe_fraction)")
    probe_fraction: float = Field(0.05, gt=0, le=1, description="default probe cost / routed expert cost")
    clusters: int = Field(10, ge=1, description="calibration clusters K for Pathfinder (fewer if N < K)")
    stages: int | None = Field(None, ge=1, description="pipeline stages S (None: from stage_memory_gb, else 1)")
    stage_memory_gb: float | None = Field(None, gt=0, description="per-stage weight budget when S is not given")
    replicas: int = Field(1, ge=1, description="data-parallel pipeline replicas R")
    in_flight: int = Field(4, ge=1, description="micro-batches in flight per replica")
    window: int = Field(8, ge=1, description="micro-batches per replica between commits (fault recovery unit)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per stage actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per stage actor")
    placement: Literal["pack", "strict_spread", "spread"] = "pack"
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

    def probe_count(self, top_k: int, max_experts: int) -> int:
        """Probe tokens P per micro-batch (see the class docstring)."""
        tokens = self.micro_batch * self.seq_len
        if self.probe_tokens is not None:
            return min(self.probe_tokens, tokens)
        return min(tokens, max(8, round(self.probe_fraction * top_k * tokens / max_experts)))

    def manifest(self) -> dict:
        """The part of the config that decides the statistics (not how they were computed)."""
        keep = ("samples", "seq_len", "seed", "micro_batch", "probe_tokens", "probe_fraction", "clusters", "dtype")
        return {k: getattr(self, k) for k in keep}
