"""What one MoE layer's forward exposes to the statistics: router hook + a recording experts kernel.

- A forward hook on the router (`layer.mlp.gate`, output `(router_logits,
  top_k_weights, top_k_index)`) keeps the MoE input x [T, H] and the router's
  outputs. It returns None, so the module's output is unchanged.
- The routed experts' per-token outputs f_e(x_t) never leave transformers'
  experts module (its output is the gate-weighted sum), and recomputing them
  would double the expert FLOPs. So raymoe registers an experts
  implementation, `raymoe_calib`, in transformers' `ExpertsInterface` (the
  library's extension point for expert kernels): the computation of
  transformers' default `grouped_mm` kernel, plus ||f_e(x_t)|| for every
  routed (t, e), written to the layer's `LayerCapture`. The layer's config
  selects it through `config._experts_implementation`; its output equals the
  `grouped_mm` kernel's bit for bit (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LayerCapture", "IMPLEMENTATION", "CHUNK_ROWS", "register_experts_implementation", "attach"]

IMPLEMENTATION = "raymoe_calib"


@dataclass
class LayerCapture:
    """One forward's router and expert facts for one MoE layer (overwritten every call)."""

    x: torch.Tensor | None = None  # [T, H] MoE block input
    logits: torch.Tensor | None = None  # [T, E]
    weights: torch.Tensor | None = None  # [T, k] gate weights the experts used
    index: torch.Tensor | None = None  # [T, k] routed experts
    norms: torch.Tensor | None = None  # [T, k] ||f_e(x_t)|| of the routed experts (float32)

    def clear(self) -> None:
        self.x = self.logits = self.weights = self.index = self.norms = None


#: token-expert pairs per grouped matmul call: bounds the kernel's working memory (whole experts per call)
CHUNK_ROWS = 1024


def _chunks(ends: list[int], max_rows: int) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive experts (e0, e1, first row, end row) of at most max_rows rows (or one expert)."""
    out, e0, r0 = [], 0, 0
    for e, end in enumerate(ends):
        if end - r0 > max_rows and e > e0:
            out.append((e0, e, r0, ends[e - 1]))
            e0, r0 = e, ends[e - 1]
    out.append((e0, len(ends), r0, ends[-1]))
    return [c for c in out if c[3] > c[2]]


def calib_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' `grouped_mm` experts kernel (its default), recording the routed output norms.

    Token-expert pairs are sorted by expert; runs of whole experts (at most
    `CHUNK_ROWS` pairs, so the [pairs, 2I] intermediate stays bounded) go through
    grouped matmuls (`_grouped_linear`, transformers' own dispatch; each expert's
    rows are one group, so splitting between experts leaves every result
    unchanged); the per-pair outputs f_e(x_t) [S, H] give the norms; the
    gate-weighted pairs are summed per token (reshape + sum, as transformers does).
    """
    from transformers.integrations.moe import _grouped_linear

    num_tokens, hidden_dim = hidden_states.shape
    k = top_k_index.size(-1)
    expert_ids_g, perm = torch.sort(top_k_index.reshape(-1))  # [S]
    w_g = top_k_weights.reshape(-1)[perm]  # [S]
    histc_input = expert_ids_g.float() if hidden_states.device.type in ("cpu", "mps") else expert_ids_g.int()
    per_expert = torch.histc(histc_input, bins=self.num_experts, min=0, max=self.num_experts - 1)
    offsets = torch.cumsum(per_expert, dim=0, dtype=torch.int32)  # [E]
    up = self.gate_up_proj if self.has_gate else self.up_proj
    up_bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    out = torch.empty(perm.shape[0], hidden_dim, dtype=hidden_states.dtype, device=hidden_states.device)  # [S, H]
    for e0, e1, r0, r1 in _chunks(offsets.tolist(), getattr(self, "_raymoe_chunk_rows", CHUNK_ROWS)):
        offs = offsets[e0:e1] - r0
        ids = expert_ids_g[r0:r1]
        h = _grouped_linear(hidden_states[perm[r0:r1] // k], up[e0:e1], offs,
                            bias=None if up_bias is None else up_bias[ids], is_transposed=self.is_transposed)
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)  # [s, I]
        out[r0:r1] = _grouped_linear(h, self.down_proj[e0:e1], offs,
                                     bias=self.down_proj_bias[ids] if self.has_bias else None,
                                     is_transposed=self.is_transposed)  # [s, H]
        del h
    if self.has_post_expert_norm:
        out = self.post_expert_norm(out)
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(perm.size(0), device=perm.device)
    capture = getattr(self, "_raymoe_capture", None)
    if capture is not None:
        capture.norms = out.float().norm(dim=-1)[inv_perm].view(num_tokens, k)  # [T, k]
    weighted = (out * w_g.unsqueeze(-1))[inv_perm]  # [S, H] in token order
    return weighted.view(num_tokens, k, hidden_dim).sum(dim=1).to(hidden_states.dtype)  # [T, H]


def register_experts_implementation() -> None:
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(IMPLEMENTATION, calib_experts_forward)


def _router_hook(capture: LayerCapture):
    def hook(module, args, output) -> None:
        x = args[0]
        capture.x = x.reshape(-1, x.shape[-1])  # [T, H]
        capture.logits, capture.weights, capture.index = output[0], output[1], output[2]
        return None

    return hook


def attach(layer: torch.nn.Module) -> LayerCapture:
    """Route one decoder layer's MoE block through the recording kernel; return its capture slot."""
    register_experts_implementation()
    capture = LayerCapture()
    experts = layer.mlp.experts
    experts.config._experts_implementation = IMPLEMENTATION
    experts._raymoe_capture = capture
    layer.mlp.gate.register_forward_hook(_router_hook(capture))
    return capture
