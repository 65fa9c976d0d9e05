"""Per-layer calibration statistics, accumulated as float64 sums (docs/METHODS.md notation).

For a micro-batch of T tokens at MoE layer l with E experts, top-k routing
S_t, gate weights g_t(e), router probabilities p_t(e) (softmax of the logits,
or the sigmoid scores for DeepSeek-V3) and routed output norms
n_t(e) = ||f_e(x_t)||, with a_t(e) = 1[e in S_t] n_t(e):
  counts       += sum_t 1[e in S_t]          prob_mass    += sum_t p_t(e)
  gate_mass    += sum_t 1[e in S_t] g_t(e)   reap_sum     += sum_t 1[e in S_t] g_t(e) n_t(e)   (REAP)
  act_norm_sum += sum_t a_t(e)               coact        += sum_t 1[i in S_t] 1[j in S_t]
and, for the previous MoE layer l- (possibly in an earlier stage: its routing
travels with the hidden states), with l the next MoE layer of l-:
  trans[l-]           += sum_t 1[i in S_t^{l-}] 1[j in S_t^l]
  trans_intensity[l-] += sum_t a_t^{l-}(i) p_t^l(j)     (full next-layer probabilities)
  trans_routed[l-]    += sum_t a_t^{l-}(i) 1[j in S_t^l] p_t^l(j)   (Pathfinder's transition intensity,
                         counted per token over the experts routed at that token in both layers)
  trans_intensity_by_cluster[l-][c], trans_routed_by_cluster[l-][c] the same over tokens of
                         sequences in calibration cluster c.
Per sequence s (C-Prune's sequence-pooled inputs): pooled_in[l][s] = sum over s's tokens of x_t
(divided by the sequence length when the totals are built).
On the probe tokens (a seeded subset per micro-batch) every expert runs:
  probe_cos_sum   += sum_t cos(f_i(x_t), f_j(x_t))      mean_output_sum += sum_t f_e(x_t)
  loo_err_sum[e]  += sum_t ||y_t - y_t^{-e}||^2, y the routed output (sum_{S_t} g f) and y^{-e}
                     the output re-routed with e masked (`raymoe.moe.routing.route`; NAEE, Lu et al. 2024)
and the probe inputs x_t and routing (the sampled routing traces) are kept per micro-batch.
Products of 0/1 and float32 values are formed in float32 per micro-batch and added to float64 sums.
"""

from __future__ import annotations

import numpy as np
import torch

from raymoe.calib.capture import LayerCapture
from raymoe.moe.routing import RoutingRule, route
from raymoe.moe.model_spec import MoeModelSpec

__all__ = ["StatsAccumulator", "all_expert_outputs", "Routing"]

Routing = tuple[int, torch.Tensor, torch.Tensor]  # (layer, index [T, k], norms [T, k])


def all_expert_outputs(experts: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every expert's output f_e(x) on x [P, H] -> [P, E, H] float32.

    One grouped matmul over E groups of the same P rows (transformers' `_grouped_linear`,
    the kernel of the forward itself), so the fused expert weights are read in place.
    """
    from transformers.integrations.moe import _grouped_linear

    P, E = x.shape[0], experts.num_experts
    x_g = x.repeat(E, 1)  # [E*P, H], rows of expert e at [e*P, (e+1)*P)
    offsets = torch.arange(1, E + 1, dtype=torch.int32, device=x.device) * P  # [E]
    h = _grouped_linear(x_g, experts.gate_up_proj, offsets, is_transposed=experts.is_transposed)  # [E*P, 2I]
    h = _grouped_linear(experts._apply_gate(h), experts.down_proj, offsets, is_transposed=experts.is_transposed)
    return h.float().view(E, P, -1).transpose(0, 1)  # [P, E, H]


def _onehot(index: torch.Tensor, num: int, values: torch.Tensor | None = None) -> torch.Tensor:
    src = torch.ones(index.shape, dtype=torch.float32) if values is None else values.float()
    return torch.zeros(index.shape[0], num, dtype=torch.float32).scatter_(1, index.long(), src)  # [T, E]


def _routed_output(w: torch.Tensor, ix: torch.Tensor, outs: torch.Tensor) -> torch.Tensor:
    h = outs.shape[-1]
    picked = outs.gather(1, ix.long().unsqueeze(-1).expand(-1, -1, h))  # [P, k, H]
    return (w.float().unsqueeze(-1) * picked).sum(1)  # [P, H]


class StatsAccumulator:
    """Sums of one process's share of the layers; `take()` hands them over and starts afresh."""

    def __init__(self, spec: MoeModelSpec, num_clusters: int):
        self.spec = spec
        self.rule = RoutingRule.for_spec(spec)
        self.num_clusters = max(1, num_clusters)
        self.reset()

    def reset(self) -> None:
        self.layers: dict[int, dict] = {}
        self.probes: dict[int, dict[int, np.ndarray]] = {}  # batch -> layer -> [P, H]
        self.traces: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # batch -> layer -> ([P,k],[P,k])
        self.pooled: dict[int, np.ndarray] = {}  # sequence -> [H]
        self.pooled_in: dict[int, dict[int, np.ndarray]] = {}  # layer -> sequence -> [H] sum of MoE inputs

    def _acc(self, layer: int) -> dict:
        if layer not in self.layers:
            self.layers[layer] = {"tokens": 0.0, "probe_tokens": 0.0}
        return self.layers[layer]

    @staticmethod
    def _add(acc: dict, name: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        acc[name] = value if name not in acc else acc[name] + value

    # ---- one MoE layer of one micro-batch -------------------------------------------------------
    def update(self, layer: int, cap: LayerCapture, token_cluster: torch.Tensor, probe: torch.Tensor,
               batch_id: int, experts: torch.nn.Module, bias: torch.Tensor | None,
               prev: Routing | None, seq_ids: np.ndarray | None = None) -> Routing:
        E = self.spec.experts[layer]
        idx, g, n = cap.index.long().cpu(), cap.weights.float().cpu(), cap.norms.float().cpu()  # [T, k] each
        logits = cap.logits.float().cpu()  # [T, E]
        probs = torch.softmax(logits, -1) if self.rule.scoring == "softmax" else torch.sigmoid(logits)  # [T, E]
        routed = _onehot(idx, E)  # [T, E]
        acc = self._acc(layer)
        acc["tokens"] += float(idx.shape[0])
        flat = idx.flatten()
        self._add(acc, "counts", routed.sum(0))
        self._add(acc, "prob_mass", probs.sum(0, dtype=torch.float64))
        self._add(acc, "gate_mass", torch.zeros(E, dtype=torch.float64).index_add_(0, flat, g.flatten().double()))
        self._add(acc, "reap_sum", torch.zeros(E, dtype=torch.float64).index_add_(0, flat, (g * n).flatten().double()))
        self._add(acc, "act_norm_sum", torch.zeros(E, dtype=torch.float64).index_add_(0, flat, n.flatten().double()))
        self._add(acc, "coact", routed.T @ routed)  # [E, E]
        if seq_ids is not None:
            x = cap.x.detach().float().cpu()  # [B*L, H]
            per_seq = x.view(len(seq_ids), -1, x.shape[-1]).sum(1, dtype=torch.float64).numpy()  # [B, H]
            rows = self.pooled_in.setdefault(layer, {})
            for s, row in zip(seq_ids.tolist(), per_seq):
                rows[int(s)] = row.copy()
        if prev is not None:
            self._transition(prev, routed, probs, token_cluster)
        if probe.numel() > 0:
            self._probe(layer, acc, cap.x, logits, idx, g, probe, batch_id, experts, bias)
        return (layer, idx, n)

    def _transition(self, prev: Routing, routed: torch.Tensor, probs: torch.Tensor, cluster: torch.Tensor) -> None:
        layer, idx, norms = prev
        E_prev = self.spec.experts[layer]
        before = _onehot(idx, E_prev)  # [T, E-]
        strength = _onehot(idx, E_prev, norms)  # a_t(i) [T, E-]
        routed_p = routed * probs  # 1[j in S_t] p_t(j) [T, E]
        acc = self._acc(layer)
        self._add(acc, "trans", before.T @ routed)  # [E-, E]
        self._add(acc, "trans_intensity", strength.T @ probs)  # [E-, E]
        self._add(acc, "trans_routed", strength.T @ routed_p)  # [E-, E]
        by_cluster = torch.zeros(2, self.num_clusters, E_prev, routed.shape[1], dtype=torch.float64)  # [2, K, E-, E]
        for c in cluster.unique().tolist():
            rows = cluster == c
            by_cluster[0, c] += (strength[rows].T @ probs[rows]).double()
            by_cluster[1, c] += (strength[rows].T @ routed_p[rows]).double()
        self._add(acc, "trans_intensity_by_cluster", by_cluster[0])
        self._add(acc, "trans_routed_by_cluster", by_cluster[1])

    def _probe(self, layer: int, acc: dict, x: torch.Tensor, logits: torch.Tensor, idx: torch.Tensor,
               g: torch.Tensor, probe: torch.Tensor, batch_id: int, experts: torch.nn.Module,
               bias: torch.Tensor | None) -> None:
        E = self.spec.experts[layer]
        xp = x[probe.to(x.device)]  # [P, H]
        outs = all_expert_outputs(experts, xp).cpu()  # [P, E, H]
        unit = outs / outs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self._add(acc, "probe_cos_sum", torch.einsum("peh,pfh->ef", unit, unit))  # [E, E]
        self._add(acc, "mean_output_sum", outs.sum(0))  # [E, H]
        logits = logits[probe]  # [P, E]
        _, w, ix = route(self.rule, logits, bias)
        y = _routed_output(w, ix, outs)  # [P, H]
        loo = torch.zeros(E, dtype=torch.float64)
        if E - 1 >= self.rule.top_k:
            for e in range(E):
                mask = torch.ones(E, dtype=torch.bool)
                mask[e] = False
                _, w_e, ix_e = route(self.rule, logits, bias, mask)
                loo[e] = float(((y - _routed_output(w_e, ix_e, outs)) ** 2).sum())
        self._add(acc, "loo_err_sum", loo)
        acc["probe_tokens"] += float(probe.numel())
        self.probes.setdefault(batch_id, {})[layer] = xp.float().cpu().numpy().copy()
        self.traces.setdefault(batch_id, {})[layer] = (idx[probe].numpy().astype(np.int32), g[probe].numpy().copy())

    def add_pooled(self, seq_ids: list[int], pooled: torch.Tensor) -> None:
        for s, row in zip(seq_ids, pooled.double().numpy()):
            self.pooled[int(s)] = row.copy()

    # ---- hand-over --------------------------------------------------------------------------------
    def take(self) -> dict:
        """This process's partial sums since the last take (numpy), then reset."""
        layers = {l: {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in acc.items()}
                  for l, acc in self.layers.items()}
        out = {"layers": layers, "probes": self.probes, "traces": self.traces, "pooled": self.pooled,
               "pooled_in": self.pooled_in}
        self.reset()
        return out
