"""Tiny checkpoints of every family that vLLM's CPU build can serve, pruned uniformly and per layer.

vLLM CPU attention needs head_dim 32, 64, ...; its MLA kernel (DeepSeek-V2/V3)
needs kv_lora_rank + qk_rope_head_dim = 576.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

_SMALL = dict(hidden=64, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
_MLA = dict(hidden=128, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
            kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=64)
FAMILY_DIMS = {"qwen2_moe": _SMALL, "olmoe": _SMALL, "deepseek_v2": _MLA, "deepseek_v3": _MLA,
               "mixtral": _SMALL, "qwen3_moe": {**_SMALL, "head_dim": 32}}
UNIFORM_KEEP = [0, 2, 3, 4, 5, 7]  # 3 + 3 in DeepSeek-V3's two groups of 4
# per MoE layer, cycled; each keeps an equal count (>= 2) in both groups {0..3}, {4..7} except the last,
# which only the families without group-limited routing get (DeepSeek has 3 MoE layers: dense first layer)
MIXED_KEEP = [[1, 2, 5, 6], [0, 1, 2, 4, 6, 7], list(range(8)), [3, 4, 6]]


def plan_for(src: Path, kind: str):
    from raymoe.moe import MoeModelSpec
    from raymoe.plan import LayerPlan, PrunePlan

    spec = MoeModelSpec.from_pretrained(src)
    keep = {l: UNIFORM_KEEP if kind == "uniform" else MIXED_KEEP[i % len(MIXED_KEEP)]
            for i, l in enumerate(spec.moe_layers)}
    return PrunePlan(method=f"manual-{kind}", ratio=None, model=str(src), model_type=spec.arch.family,
                     layers=[LayerPlan(layer=l, num_experts=spec.experts[l], keep=k) for l, k in keep.items()])


def _zero_attention_output(path: Path) -> None:
    """Zero every `self_attn.o_proj.weight` of a single-file checkpoint, in place."""
    from safetensors.torch import load_file, save_file

    file = path / "model.safetensors"
    tensors = load_file(file)
    zeroed = [n for n in tensors if n.endswith("self_attn.o_proj.weight")]
    assert zeroed, f"no attention output projection in {file}"
    for name in zeroed:
        tensors[name].zero_()
    save_file(tensors, file, metadata={"format": "pt"})


@pytest.fixture(scope="session")
def pruning_plan():
    """pruning_plan(src, "uniform" | "mixed") -> the PrunePlan these tests apply."""
    return plan_for


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    """family_models(family) -> {"base", "uniform", "mixed"} checkpoint paths (built once per session).

    `family` may carry the suffix ":noattn": larger random weights (initializer_range 0.1, so the logits
    have clear margins) and every attention output projection zeroed, so only embeddings, MoE / dense MLP
    layers and the head act. That isolates the routing path from DeepSeek's MLA kernel, whose CPU build
    differs from transformers already for a stock model.
    """
    from raymoe.checkpoint import apply_plan
    from raymoe.testing import build_tiny_model

    cache: dict[str, dict[str, Path]] = {}

    def make(family: str) -> dict[str, Path]:
        if family not in cache:
            name, _, variant = family.partition(":")
            root = tmp_path_factory.mktemp(f"vllm-{name}-{variant}")
            extra = dict(initializer_range=0.1) if variant == "noattn" else {}
            base = build_tiny_model(name, root / "base", **FAMILY_DIMS[name], **extra)
            if variant == "noattn":
                _zero_attention_output(base)
            cache[family] = {"base": base, **{k: apply_plan(base, plan_for(base, k), root / k, progress=False)
                                              for k in ("uniform", "mixed")}}
        return cache[family]

    return make


@pytest.fixture(scope="session")
def vllm_python():
    if not VLLM_PYTHON.exists():  # `make test` (and so CI) builds it: a missing env is a failure, not a skip
        pytest.fail(f"no vLLM environment at {VLLM_PYTHON.parent.parent}: create it with `make vllm-env`, "
                    "or deselect these tests with -m 'not vllm'")
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def vllm_worker(vllm_python, request):
    """One raymoe vLLM worker actor for the test module (joins the running Ray, or starts a small local one)."""
    import ray

    from raymoe.eval.backends import actor_options
    from raymoe.eval.options import EngineOptions
    from raymoe.eval.vllm_worker import VLLMWorker

    if not ray.is_initialized():  # shut down after the module (tests/conftest.py)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    opts = EngineOptions(vllm_python=vllm_python)
    worker = VLLMWorker.options(**actor_options("vllm", opts, 1)).remote(f"vllm-{request.module.__name__}", opts)
    yield worker
    ray.kill(worker)
