"""MoEfication of one dense SwiGLU MLP, and the reference MoE forward used to fit and check it.

For MLP input x [T, H] the dense output is W_d a(x), a(x) = silu(W_g x) * (W_u x) [T, I].
With neuron groups G_0..G_{E-1} (and shared set S) the MoE output is

    y_t = D[:, S] a_t[S] + sum_{e in topk_t} g_te D[:, G_e] a_t[G_e],

g_te the renormalised top-k softmax gates of the fitted router and D [H, I] the
layer's down projection after fitting (`raymoe.testbed.router`): W_d with each
expert's columns scaled by c_e (`--down k|scale`), or refitted by ridge least
squares against the dense output (`--down lstsq`). `MoefyMLP` wraps a dense MLP
inside the dense model: on its first call it fits the MoE layer on its input,
then it returns either the dense output (fit on dense inputs) or the MoE output
(later layers fit on the inputs the MoE model really produces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from raymoe.testbed.neuron_groups import group_neurons
from raymoe.testbed.config import TestbedConfig
from raymoe.testbed.router import fit_router, lstsq_down, route, scale_terms, solve_scales

__all__ = ["MoeLayer", "fit_layer", "fit_layer_output", "MoefyMLP", "activations"]

_CHUNK = 2048  # tokens per chunk where [T, E, H] tensors are formed


def activations(mlp, x: torch.Tensor) -> torch.Tensor:
    """a(x) = silu(W_g x) * (W_u x).  x [T, H] -> [T, I]."""
    return F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)


@dataclass
class MoeLayer:
    """One MoEfied MLP: neuron groups, router, fitted down projection (and fit diagnostics)."""

    shared: np.ndarray  # [S] neuron ids of the shared expert (empty for layout mixtral)
    groups: list[np.ndarray]  # E arrays of m neuron ids
    router: torch.Tensor  # [E, H]
    down: torch.Tensor  # [H, I] down projection the MoE uses (expert scales folded in)
    top_k: int
    metrics: dict[str, float] = field(default_factory=dict)
    load: list[int] = field(default_factory=list)  # top-k selections per expert on the fitting tokens

    def owner(self, width: int) -> torch.Tensor:
        """[I] expert of each neuron; E marks the shared expert, E + 1 a neuron in no expert (pruned)."""
        e = len(self.groups)
        own = torch.full((width,), e + 1, dtype=torch.long)
        own[torch.as_tensor(self.shared, dtype=torch.long)] = e
        for j, g in enumerate(self.groups):
            own[torch.as_tensor(g)] = j
        return own

    def neuron_gates(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """w [T, I]: 1 on shared neurons, g_te on the neurons of routed expert e, 0 elsewhere."""
        return self.gates_to_neurons(*route(x, self.router, self.top_k), width)

    def gates_to_neurons(self, gates: torch.Tensor, idx: torch.Tensor, width: int) -> torch.Tensor:
        """`neuron_gates` from already computed routing: gates, idx [T, K] -> w [T, I]."""
        e = len(self.groups)
        w = torch.zeros(gates.shape[0], e + 2, dtype=gates.dtype)
        w.scatter_(1, idx, gates)  # [T, E+2]
        w[:, e] = 1.0
        return w[:, self.owner(width)]  # [T, I]

    def forward(self, mlp, x: torch.Tensor) -> torch.Tensor:
        """The MoE output y [T, H] for inputs x [T, H] (a direct, dense-masked computation)."""
        return self.combine(activations(mlp, x), x)

    def combine(self, act: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y = D (a * w).  act [T, I], x [T, H] -> [T, H]"""
        return (act * self.neuron_gates(x, act.shape[1])) @ self.down.T


def expert_outputs(groups: list[np.ndarray], act: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """f_e(x_t) = down[:, G_e] a_t[G_e] for all experts.  act [T, I], down [H, I] -> [T, E, H]."""
    ids = torch.as_tensor(np.stack(groups))  # [E, m]
    return torch.einsum("tem,hem->teh", act[:, ids], down[:, ids])


def _chunks(t: int):
    return (slice(i, i + _CHUNK) for i in range(0, t, _CHUNK))


def fit_layer(mlp, x: torch.Tensor, cfg: TestbedConfig, rng: np.random.Generator) -> MoeLayer:
    """MoEfy one dense MLP on its calibration inputs x [T, H]."""
    return fit_layer_output(mlp, x, cfg, rng)[0]


def fit_layer_output(mlp, x: torch.Tensor, cfg: TestbedConfig,
                     rng: np.random.Generator) -> tuple[MoeLayer, torch.Tensor]:
    """`fit_layer`, plus the fitted layer's output on x [T, H] (= `layer.forward(mlp, x)`, computed once).

    Every intermediate (activations, routing, gated activations, dense output)
    is computed once and shared by the fit, the diagnostics and the output.
    """
    w_d = mlp.down_proj.weight  # [H, I]
    act = activations(mlp, x)  # [T, I]
    shared_n = cfg.shared if cfg.layout == "shared" else 0
    shared, groups = group_neurons(act, w_d, experts=cfg.experts, shared=shared_n, strata=cfg.strata,
                                   coact_tokens=cfg.coact_tokens, rng=rng)
    k = cfg.top_k
    norms = torch.cat([expert_outputs(groups, act[c], w_d).norm(dim=2) for c in _chunks(len(x))])  # [T, E]
    with torch.enable_grad():
        router = fit_router(x, norms, temperature=cfg.router_temperature, steps=cfg.router_steps)
    gates, idx = route(x, router, k)  # [T, K]
    layer = MoeLayer(shared, groups, router, w_d.clone(), k)
    scales = torch.full((cfg.experts,), float(k))
    if cfg.down == "scale":
        a, b = torch.zeros(cfg.experts, cfg.experts), torch.zeros(cfg.experts)
        for c in _chunks(len(x)):
            da, db = scale_terms(expert_outputs(groups, act[c], w_d), gates[c], idx[c])
            a, b = a + da, b + db
        scales = solve_scales(a, b, k)
    for j, g in enumerate(groups):
        layer.down[:, torch.as_tensor(g)] *= scales[j]
    gated = act * layer.gates_to_neurons(gates, idx, act.shape[1])  # [T, I] u = a * w
    dense = act @ w_d.T  # [T, H]
    if cfg.down == "lstsq":
        layer.down = lstsq_down(gated, dense, layer.down, ridge=cfg.ridge)
    out = gated @ layer.down.T  # [T, H] = layer.combine(act, x)
    layer.metrics = _diagnostics(layer, out, dense, x, norms, idx)
    layer.load = torch.bincount(idx.flatten(), minlength=cfg.experts).tolist()
    return layer, out


def _diagnostics(layer: MoeLayer, out, dense, x, norms, idx) -> dict[str, float]:
    """Relative output error, router recall of the norm top-k, load balance, gate sharpness."""
    err = (out - dense).norm() / dense.norm()
    oracle = norms.topk(layer.top_k, dim=1).indices  # [T, K]
    recall = (idx[:, :, None] == oracle[:, None, :]).any(2).float().mean()
    load = torch.bincount(idx.flatten(), minlength=len(layer.groups)).float()
    load = load / load.sum()  # [E]
    probs = torch.softmax(x @ layer.router.T, dim=1)  # [T, E]
    return {
        "rel_err": float(err),
        "router_recall": float(recall),
        "load_max_over_mean": float(load.max() * len(load)),
        "load_min_over_mean": float(load.min() * len(load)),
        "top1_prob": float(probs.max(1).values.mean()),
    }


class MoefyMLP(torch.nn.Module):
    """Stands in for a dense MLP: fits its MoE layer on the first input it sees, then routes.

    `fit(mlp, x)` returns (layer, its output on x or None); the MoE output of the
    fitting call is that output when given (it is what `layer.forward` computes).
    """

    def __init__(self, mlp, fit: Callable[[object, torch.Tensor], tuple[MoeLayer, torch.Tensor | None]], *,
                 emit_moe: bool):
        super().__init__()
        self.mlp = mlp
        self.fit = fit
        self.emit_moe = emit_moe
        self.layer: MoeLayer | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])  # [T, H]
        y = None
        if self.layer is None:
            self.layer, y = self.fit(self.mlp, x)
        if not self.emit_moe:
            y = self.mlp(x)
        elif y is None:
            y = self.layer.forward(self.mlp, x)
        return y.reshape(shape)
