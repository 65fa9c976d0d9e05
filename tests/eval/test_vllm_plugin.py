"""The vLLM plugin's config-level parts (no vllm import): entry point, coverage, MoE metadata, EPLB refusal."""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest

from raymoe.eval.backends import BackendError, check_backend
from raymoe.eval.options import EngineOptions
from raymoe.vllm_plugin import VLLM_ARCHITECTURES, supports
from raymoe.vllm_plugin.common import set_moe_metadata


def test_entry_point_is_declared():
    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("raymoe") == "raymoe.vllm_plugin:register"


def test_supported_architectures():
    assert supports("MixtralForCausalLM") and supports("OlmoeForCausalLM")  # stock: vLLM's own
    assert supports("RaymoeMixtralForCausalLM") and supports("RaymoeQwen3MoeForCausalLM")
    assert not supports("RaymoeOlmoeForCausalLM")
    assert all(target.startswith("raymoe.vllm_plugin.") for target in VLLM_ARCHITECTURES.values())


def _block(n: int):
    return SimpleNamespace(n_routed_experts=n, n_logical_experts=n, n_physical_experts=n, n_local_physical_experts=n,
                           n_redundant_experts=0, experts=f"experts{n}")


def _vllm_config(eplb: bool):
    return SimpleNamespace(parallel_config=SimpleNamespace(enable_eplb=eplb))


def test_moe_metadata_reports_the_largest_layer():
    model = SimpleNamespace()
    set_moe_metadata(model, [_block(4), _block(8), _block(3)], _vllm_config(False))
    assert model.num_routed_experts == model.num_logical_experts == 8
    assert model.num_moe_layers == 3 and model.moe_layers == ["experts4", "experts8", "experts3"]


def test_eplb_refused_on_mixed_counts_only():
    with pytest.raises(ValueError, match=r"EPLB is not supported .* counts \[3, 4, 8\]"):
        set_moe_metadata(SimpleNamespace(), [_block(4), _block(8), _block(3)], _vllm_config(True))
    model = SimpleNamespace()
    set_moe_metadata(model, [_block(6), _block(6)], _vllm_config(True))
    assert model.num_routed_experts == 6


def test_vllm_backend_refuses_unsupported_variable_arch(tmp_path):
    ckpt = tmp_path / "olmoe-mixed"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["RaymoeOlmoeForCausalLM"]}))
    with pytest.raises(BackendError, match="no implementation of RaymoeOlmoeForCausalLM .* use --backend hf"):
        check_backend("vllm", EngineOptions(vllm_python=sys.executable), [str(ckpt)])
    with pytest.raises(BackendError, match="unknown backend 'tgi'; known: hf, vllm"):
        check_backend("tgi", EngineOptions())
