"""Per-layer weights: on-disk per-expert tensors <-> transformers' fused in-memory layout.

`load_layer_state` returns a decoder layer's state dict in the names and shapes
its transformers module expects (experts fused: gate_up_proj [E, 2I, H],
down_proj [E, H, I]), reading only that layer's tensors. `ExpertWeights` is
the weights view methods use (per-expert matrices and expert outputs).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from raymoe.moe.safetensors_files import SafetensorsCheckpoint
from raymoe.moe.model_spec import MoeModelSpec

__all__ = ["load_layer_state", "layer_tensor_names", "ExpertWeights", "build_decoder_layer"]


def layer_tensor_names(ckpt: SafetensorsCheckpoint, layer: int) -> list[str]:
    prefix = f"model.layers.{layer}."
    return [n for n in ckpt.names if n.startswith(prefix)]


def load_layer_state(ckpt: SafetensorsCheckpoint, spec: MoeModelSpec, layer: int) -> dict[str, torch.Tensor]:
    """State dict of decoder layer `layer` relative to the layer module (e.g. `mlp.gate.weight`)."""
    prefix = f"model.layers.{layer}."
    state: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], str] = {}
    for name in layer_tensor_names(ckpt, layer):
        role = spec.role(name)
        if role.kind == "expert":
            assert role.suffix == "weight", f"unexpected expert tensor {name}"
            experts[(role.expert, role.proj)] = name
            continue
        rel = name[len(prefix):]
        if spec.arch.disk_block != "mlp" and rel.startswith(spec.arch.disk_block + "."):
            rel = "mlp." + rel[len(spec.arch.disk_block) + 1:]
        state[rel] = ckpt.get(name)
    if layer in spec.experts:
        # fill the fused tensors expert by expert: peak memory is the fused tensors plus one expert tensor
        n = spec.experts[layer]
        gate_up = down = None
        for e in range(n):
            g, u, d = (ckpt.get(experts[(e, p)]) for p in ("gate", "up", "down"))  # [I, H], [I, H], [H, I]
            if gate_up is None:
                gate_up = torch.empty((n, g.shape[0] + u.shape[0], g.shape[1]), dtype=g.dtype)  # [E, 2I, H]
                down = torch.empty((n, *d.shape), dtype=d.dtype)  # [E, H, I]
            gate_up[e, : g.shape[0]] = g
            gate_up[e, g.shape[0]:] = u
            down[e] = d
            del g, u, d
        state["mlp.experts.gate_up_proj"] = gate_up
        state["mlp.experts.down_proj"] = down
    return state


def layer_config(spec: MoeModelSpec, layer: int):
    """A transformers config object for `layer`, with that layer's routed-expert count."""
    from transformers import AutoConfig

    from raymoe.moe.variable import stock_config_dict

    cfg = stock_config_dict(spec.config)
    if layer in spec.experts:
        for key in spec.arch.count_keys:
            if key in cfg or key == spec.arch.count_keys[0]:
                cfg[key] = spec.experts[layer]
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def build_decoder_layer(spec: MoeModelSpec, layer: int, device: str | torch.device = "meta") -> torch.nn.Module:
    """An empty transformers decoder layer for `layer` (on the meta device by default)."""
    cls = getattr(importlib.import_module(spec.arch.modeling_module), spec.arch.decoder_layer)
    cfg = layer_config(spec, layer)
    with torch.device(device):
        return cls(cfg, layer)


class ExpertWeights:
    """Lazy per-expert weights of one checkpoint (the methods' weights view)."""

    def __init__(self, path, spec: MoeModelSpec | None = None):
        self.ckpt = SafetensorsCheckpoint(path)
        self.spec = spec or MoeModelSpec.from_pretrained(path)
        act = self.spec.config.get("hidden_act", "silu")
        self._act = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}[act]

    def expert(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate [I, H], up [I, H], down [H, I]) of one routed expert."""
        s = self.spec
        return tuple(self.ckpt.get(s.expert_name(layer, expert, p)) for p in ("gate", "up", "down"))

    def router(self, layer: int) -> torch.Tensor:
        return self.ckpt.get(self.spec.router_name(layer))  # [E, H]

    def flat(self, layer: int, expert: int) -> torch.Tensor:
        """All weights of one expert as a flat float32 vector (weight-space features)."""
        return torch.cat([w.float().flatten() for w in self.expert(layer, expert)])

    def outputs(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Every expert's output on inputs x [T, H] -> [T, E, H] (no gate weights applied)."""
        outs = []
        for e in range(self.spec.experts[layer]):
            g, u, d = (w.float() for w in self.expert(layer, e))
            outs.append(F.linear(self._act(F.linear(x.float(), g)) * F.linear(x.float(), u), d))  # [T, H]
        return torch.stack(outs, dim=1)  # [T, E, H]
