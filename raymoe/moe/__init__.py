"""Model adapters: per-architecture MoE facts, the expert view, per-layer weights."""

from raymoe.moe.arch import ARCHS, MoeArch, arch_for_config
from raymoe.moe.layer_weights import ExpertWeights, build_decoder_layer, load_layer_state
from raymoe.moe.safetensors_files import SafetensorsCheckpoint
from raymoe.moe.spec import MoeModelSpec, TensorRole

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
