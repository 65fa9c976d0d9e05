"""Neuron alignment of merge groups: permute each member's intermediate neurons to match its target.

An expert f(x) = D (act(G x) * (U x)) (G, U [I, H], D [H, I]) computes the same
function with its I neurons in any order, so two experts can be near-identical
functions whose weights, averaged neuron by neuron, preserve neither. Before a
group is averaged, each member m is permuted to match the group's target t by
the assignment
    pi_m = argmax_pi sum_i S[i, pi(i)]        (scipy.optimize.linear_sum_assignment)
over a similarity S [I, I] between t's neuron i and m's neuron j:
- `activations` (default): the Pearson correlation over the calibration probe tokens
  x_p (LayerStats.probe_inputs, up to `tokens` of them) of the neurons' activations
  h_e(x)_i = act(G_e x)_i (U_e x)_i; a neuron constant on the probe tokens correlates
  0 with every neuron; plus 1e-6 times the weight similarity below, which breaks ties
  among such neurons;
- `weights` (weight matching, as in Git Re-Basin, Ainsworth et al. 2023): the cosine of
  the neurons' weight vectors [G_i, U_i, D_:,i] (concatenated, [3H]).
A layer without probe inputs falls back to `weights` (the plan records the basis).
M-SMoE (Li et al., ICLR 2024) permutes neurons before merging; HC-SMoE and C-Prune merge
without; here every merge method aligns unless `align=none`.
An expert and a neuron-permuted copy of it align exactly (S[i, pi(i)] = 1 is the unique
maximum for distinct neurons), so their average is the original expert.
Cost per member: an [I, I] assignment (O(I^3)); fine for I <= 2048, seconds at I = 2048.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Mapping

import numpy as np

from raymoe.methods.common import probe_subset
from raymoe.plan.alignment import Alignment
from raymoe.plan.prune_plan import MergeGroup
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    import torch

__all__ = ["AlignBasis", "neuron_activations", "weight_features", "correlation", "match", "align_groups",
           "alignment_for"]

AlignBasis = Literal["activations", "weights", "none"]

_ACT = ("silu", "gelu", "relu")  # torch.nn.functional names


def _stack(weights, layer: int, experts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate [n, I, H], up [n, I, H], down [n, H, I]) of the listed experts, float32."""
    import torch

    g, u, d = zip(*(weights.expert(layer, e) for e in experts))
    return torch.stack(g).float(), torch.stack(u).float(), torch.stack(d).float()


def neuron_activations(weights, layer: int, experts: list[int], x: torch.Tensor, stacked=None) -> torch.Tensor:
    """h_e(x) = act(x G_e^T) * (x U_e^T) on inputs x [T, H] -> [n, T, I] for the listed experts."""
    import torch
    import torch.nn.functional as F

    g, u, _ = stacked or _stack(weights, layer, experts)
    name = weights.spec.config.get("hidden_act", "silu")
    if name not in _ACT:
        raise KeyError(name)
    act = getattr(F, name)
    xf = x.float()
    return act(torch.einsum("th,nih->nti", xf, g)) * torch.einsum("th,nih->nti", xf, u)  # [n, T, I]


def weight_features(weights, layer: int, experts: list[int], stacked=None) -> torch.Tensor:
    """Per expert and neuron i, the weights [G_i, U_i, D_:,i] -> [n, I, 3H]."""
    import torch

    g, u, d = stacked or _stack(weights, layer, experts)
    return torch.cat([g, u, d.transpose(1, 2)], dim=2)  # [n, I, 3H]


def _unit_columns(z: torch.Tensor) -> torch.Tensor:
    """Columns of z [..., T, I] centred and scaled to norm 1 (constant columns: 0)."""
    import torch

    z = z - z.mean(-2, keepdim=True)
    norm = z.norm(dim=-2, keepdim=True)
    scale = z.abs().amax(dim=(-2, -1), keepdim=True)
    return torch.where(norm > 1e-6 * (scale + 1e-30), z / norm.clamp_min(1e-30), torch.zeros_like(z))


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the columns of a [T, I] and b [T, J] -> [I, J] (0 for constant columns)."""
    return _unit_columns(a).T @ _unit_columns(b)  # [I, J]


def match(sim: torch.Tensor) -> np.ndarray:
    """The permutation pi [I] maximising sum_i sim[i, pi(i)] (rows: target neurons, columns: member's)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(sim.double().numpy(), maximize=True)
    pi = np.empty(len(rows), dtype=np.int64)
    pi[rows] = cols
    return pi


def align_groups(weights, layer: int, groups: list[MergeGroup], x: torch.Tensor | None) -> dict[int, np.ndarray]:
    """member -> pi for every merged-away member of one layer's groups (x: probe inputs [T, H] or None).

    The layer's experts in merge groups are read once and stacked; similarities are batched."""
    import torch
    import torch.nn.functional as F

    pairs = [(g.target, m) for g in groups for m in g.members if m != g.target]  # (target, member)
    if not pairs:
        return {}
    experts = sorted({e for pair in pairs for e in pair})
    row = {e: i for i, e in enumerate(experts)}
    t_idx = torch.tensor([row[t] for t, _ in pairs])
    m_idx = torch.tensor([row[m] for _, m in pairs])
    stacked = _stack(weights, layer, experts)
    w = F.normalize(weight_features(weights, layer, experts, stacked), dim=2)  # [n, I, 3H]
    sim = torch.bmm(w[t_idx], w[m_idx].transpose(1, 2))  # [p, I, I] cosine
    if x is not None:
        h = _unit_columns(neuron_activations(weights, layer, experts, x, stacked))  # [n, T, I]
        sim = torch.bmm(h[t_idx].transpose(1, 2), h[m_idx]) + 1e-6 * sim  # [p, I, I] correlation
    return {m: match(sim[k]) for k, (_, m) in enumerate(pairs)}


def alignment_for(stats: CalibStats, weights, merges: Mapping[int, list[MergeGroup]], basis: AlignBasis,
                  tokens: int, seed: int) -> Alignment | None:
    """The plan's Alignment for its merge groups (None for `none`, or when nothing merges)."""
    import torch

    if basis == "none" or not any(merges.values()):
        return None
    if weights is None:
        from raymoe.methods.common import StatsError

        raise StatsError(f"neuron alignment ({basis}) needs the expert weights (or align=none)")
    perms: dict[int, dict[int, np.ndarray]] = {}
    used: set[str] = set()
    for l, groups in sorted(merges.items()):
        if not groups:
            continue
        x = None
        if basis == "activations" and stats.layers[l].probe_inputs is not None \
                and len(stats.layers[l].probe_inputs):
            x = probe_subset(stats, l, tokens, seed)  # [T, H]
        used.add("activations" if x is not None else "weights")
        with torch.no_grad():
            perms[l] = align_groups(weights, l, groups, x)
    return Alignment.from_permutations(perms, weights.spec.expert_intermediate,
                                       used.pop() if len(used) == 1 else "mixed")
