"""The vLLM plugin's config-level parts (no vllm import): entry point, coverage, MoE metadata, EPLB refusal."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest

from raymoe.eval.backends import BackendError, check_backend
from raymoe.eval.options import EngineOptions
from raymoe.moe.arch import ARCHS
from raymoe.vllm_plugin import MLA_MODEL_TYPES, VLLM_ARCHITECTURES, supports
from raymoe.vllm_plugin.common import set_moe_metadata


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("raymoe") == "raymoe.vllm_plugin:register"


def test_supported_architectures():
    assert supports("MixtralForCausalLM") and supports("OlmoeForCausalLM")  # stock: vLLM's own
    assert supports("RaymoeMixtralForCausalLM") and supports("RaymoeQwen3MoeForCausalLM")
    assert not supports("RaymoeGptOssForCausalLM")  # a raymoe name with no vLLM class
    assert all(target.startswith("raymoe.vllm_plugin.") for target in VLLM_ARCHITECTURES.values())


def test_every_family_has_a_vllm_class():
    """Each family's variable-expert architecture names a module:Class that exists (read, not imported)."""
    assert sorted(VLLM_ARCHITECTURES) == sorted(a.variable_causal_lm for a in ARCHS.values())
    for target in VLLM_ARCHITECTURES.values():
        module, cls = target.split(":")
        source = importlib.util.find_spec(module).origin
        classes = {n.name for n in ast.walk(ast.parse(open(source).read())) if isinstance(n, ast.ClassDef)}
        assert cls in classes, target
    assert set(MLA_MODEL_TYPES) == {ARCHS[f].variable_model_type for f in ("deepseek_v2", "deepseek_v3")}


def _block(n: int):
    return SimpleNamespace(n_routed_experts=n, n_logical_experts=n, n_physical_experts=n, n_local_physical_experts=n,
                           n_redundant_experts=0, experts=f"experts{n}")


def test_moe_metadata_reports_the_largest_layer():
    model = SimpleNamespace()
    set_moe_metadata(model, [_block(4), _block(8), _block(3)], False)
    assert model.num_routed_experts == model.num_logical_experts == 8
    assert model.num_moe_layers == 3 and model.moe_layers == ["experts4", "experts8", "experts3"]
    assert model.num_expert_groups == 1 and model.num_shared_experts == 0
    set_moe_metadata(model, [_block(4), _block(8)], False, expert_groups=2, shared_experts=1)  # DeepSeek
    assert (model.num_expert_groups, model.num_shared_experts, model.num_routed_experts) == (2, 1, 8)


def test_eplb_refused_on_mixed_counts_only():
    with pytest.raises(ValueError, match=r"EPLB is not supported .* counts \[3, 4, 8\]"):
        set_moe_metadata(SimpleNamespace(), [_block(4), _block(8), _block(3)], True)
    model = SimpleNamespace()
    set_moe_metadata(model, [_block(6), _block(6)], True)
    assert model.num_routed_experts == 6


def test_vllm_backend_refuses_unsupported_variable_arch(tmp_path):
    ckpt = tmp_path / "gpt-oss-mixed"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["RaymoeGptOssForCausalLM"]}))
    with pytest.raises(BackendError, match="no implementation of RaymoeGptOssForCausalLM .* use --backend hf"):
        check_backend("vllm", EngineOptions(vllm_python=sys.executable), [str(ckpt)])
    with pytest.raises(BackendError, match=r"unknown backend 'tgi' \(known: hf, vllm, sleep\)"):
        check_backend("tgi", EngineOptions())
