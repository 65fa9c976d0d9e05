"""Model adapters: per-architecture MoE facts, the expert view, per-layer weights.

Names are imported on first use: `raymoe.moe.model_spec` and `raymoe.moe.arch` read
configs only, while the weight views (`layer_weights`, `safetensors_files`)
import torch, so `from raymoe.moe import MoeModelSpec` stays light.
"""

from __future__ import annotations

import importlib

__all__ = [
    "ARCHS",
    "MoeArch",
    "arch_for_config",
    "MoeModelSpec",
    "TensorRole",
    "SafetensorsCheckpoint",
    "ExpertWeights",
    "load_layer_state",
    "build_decoder_layer",
]

_WHERE = {
    "ARCHS": "arch", "MoeArch": "arch", "arch_for_config": "arch",
    "MoeModelSpec": "model_spec", "TensorRole": "model_spec",
    "SafetensorsCheckpoint": "safetensors_files",
    "ExpertWeights": "layer_weights", "load_layer_state": "layer_weights", "build_decoder_layer": "layer_weights",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"raymoe.moe.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
