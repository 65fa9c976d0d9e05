"""Eval fixtures: tiny checkpoints vLLM's CPU build can serve, their pruned variants, a local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

# vLLM's CPU attention supports head sizes 32, 64, 80, ...: hidden 64 over 2 heads
VLLM_DIMS = dict(hidden=64, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
FAMILY_DIMS = {"mixtral": {}, "qwen3_moe": {"head_dim": 32}}
UNIFORM_KEEP = [0, 2, 3, 4, 5, 7]
MIXED_KEEP = [[1, 2, 5, 6], [0, 1, 2, 4, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], [3, 4, 6]]
VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"


def _plan(src: Path, kind: str):
    from raymoe.moe import MoeModelSpec
    from raymoe.plan import LayerPlan, PrunePlan

    spec = MoeModelSpec.from_pretrained(src)
    keep = {l: UNIFORM_KEEP if kind == "uniform" else MIXED_KEEP[i % len(MIXED_KEEP)]
            for i, l in enumerate(spec.moe_layers)}
    return PrunePlan(method=f"manual-{kind}", ratio=None, model=str(src), model_type=spec.arch.family,
                     layers=[LayerPlan(layer=l, num_experts=spec.experts[l], keep=k) for l, k in keep.items()])


@pytest.fixture(scope="session")
def eval_models(tmp_path_factory):
    """eval_models(family) -> {"base": path, "uniform": path, "mixed": path} (built once per session)."""
    from raymoe.checkpoint import apply_plan
    from raymoe.testing import build_tiny_model

    cache: dict[str, dict[str, Path]] = {}

    def make(family: str) -> dict[str, Path]:
        if family not in cache:
            root = tmp_path_factory.mktemp(f"eval-{family}")
            base = build_tiny_model(family, root / "base", **VLLM_DIMS, **FAMILY_DIMS[family])
            cache[family] = {"base": base, **{k: apply_plan(base, _plan(base, k), root / k, progress=False)
                                              for k in ("uniform", "mixed")}}
        return cache[family]

    return make


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the eval tests (started here unless one is running; shut down if started here)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def vllm_python():
    if not VLLM_PYTHON.exists():  # `make test` (and so CI) builds it: a missing env is a failure, not a skip
        pytest.fail(f"no vLLM environment at {VLLM_PYTHON.parent.parent}: create it with `make vllm-env`, "
                    "or deselect these tests with -m 'not vllm'")
    return VLLM_PYTHON
