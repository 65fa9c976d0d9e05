"""MoE Pathfinder: keep the experts that lie on the best expert paths of each calibration cluster.

Yang, Tian, Song, "MoE Pathfinder" (arXiv 2512.18425). The MoE is a layered
directed graph over MoE layers l = 1..L. With calibration clusters c = 1..K
(k-means on pooled hidden states, made by calibration):
- node weight  v_l(e) = softmax_e(z(loo_l) / tau) * u_l(e) * a_l(e), where
  z(loo_l) is the leave-one-out reconstruction error standardised within the layer
  (higher loss = more important), u_l the routing-probability share and a_l the
  activation-strength share (mean ||f_e|| when routed), each over the layer;
- edge weight  w_c(i -> j) = I_c(i, j) / sum I_c, I_c = trans_intensity_by_cluster
  = sum over the cluster's tokens of a_t^l(i) p_t^{l'}(j);
- path score   s(P) = sum_edges log(w + eps) + sum_nodes log(v + eps).
Dynamic programming keeps the top-m partial paths into every node, layer by
layer; the top-m complete paths are exact (a k-best path's prefix is among the
k best into its node). Each transition gathers only the candidates that can
still make a node's top m (`_extend`), which keeps m = 100 cheap. Experts on the top paths of every cluster are counted;
the frequency map (layer x expert, the paper's Figure 2 heatmap) decides, node
weight breaking ties; the most frequent are kept to the global budget, at least
top_k per layer (`uniform`: the top n_l per layer).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from raymoe.methods.budget import Budget
from raymoe.methods.common import MethodConfig, StatsError, build_plan, per_layer_share, single_thread, top_n
from raymoe.plan.schema import PrunePlan
from raymoe.store.schema import CalibStats

__all__ = ["Pathfinder", "PathfinderConfig", "top_paths", "node_log_weights", "path_frequencies"]


class PathfinderConfig(MethodConfig):
    top_m: int | None = Field(None, ge=1, description="paths kept per node (none: ceil(max n_l / K))")
    temperature: float = Field(1.0, gt=0, description="softmax temperature on standardised LOO loss")
    eps: float = Field(1e-9, gt=0, description="added before every log")
    progress: bool = Field(False, description="progress bar over clusters")


def node_log_weights(stats: CalibStats, tau: float, eps: float) -> dict[int, np.ndarray]:
    """log v_l(e) for every MoE layer [E_l]."""
    out = {}
    for l in stats.moe_layers:
        s = stats.layers[l]
        loo = np.asarray(s.loo_err, dtype=np.float64)
        z = (loo - loo.mean()) / (loo.std() + 1e-12) / tau  # [E]
        soft = np.exp(z - z.max())
        soft /= soft.sum()
        v = soft * per_layer_share(s.prob_mass) * per_layer_share(s.act_norm)  # [E]
        out[l] = np.log(v + eps)
    return out


def _extend(score: torch.Tensor, edge: torch.Tensor, m: int):
    """Top-m partial paths into every node of the next layer.

    score [E, m] (rows sorted descending, -inf where unfilled), edge [E, E'] ->
    (values [E', m], previous node [E', m], previous rank [E', m]). A candidate
    (i, r) -> j scores score[i, r] + edge[i, j]. tau_j, the m-th best candidate
    among the first q ranks of every node, bounds the m-th best overall from
    below, so only ranks with score[i, r] >= tau_j - edge[i, j] are gathered
    (a few per pair instead of m), and each target node takes its top m of them.
    """
    E, E2 = edge.shape
    q = min(m, max(4, math.ceil(m / E)))
    if E * q >= m:
        pre = (score[:, :q, None] + edge[:, None, :]).reshape(E * q, E2)  # [E*q, E']
        tau = pre.topk(m, dim=0).values[-1]  # [E']
        tau = tau - 1e-9 * (1 + tau.abs())  # rounding in (edge - tau) must not drop the candidates at tau
    else:
        tau = torch.full((E2,), -math.inf, dtype=torch.float64)
    count = torch.searchsorted((-score).contiguous(), (edge - tau[None, :]).contiguous(), right=True)  # [E, E']
    per_pair = count.T.flatten()  # [E' * E], target-major: candidates come grouped by target node
    pair = torch.repeat_interleave(torch.arange(E2 * E), per_pair)  # [N]
    rank = torch.arange(len(pair)) - (torch.cumsum(per_pair, 0) - per_pair)[pair]  # [N]
    j, i = pair // E, pair % E
    v = score[i, rank] + edge[i, j]  # [N]
    size = count.sum(0)  # [E'] candidates per target node
    first = torch.cumsum(size, 0) - size
    width = max(1, int(size.max()))
    table = torch.full((E2, width), -math.inf, dtype=torch.float64)
    table[j, torch.arange(len(j)) - first[j]] = v  # [E', width]
    k = min(m, width)
    top, where = table.topk(k, dim=1)  # [E', k]
    src = (first[:, None] + where).clamp_max(max(len(j) - 1, 0))  # candidate index of each pick
    val = torch.full((E2, m), -math.inf, dtype=torch.float64)
    prev_node = torch.zeros((E2, m), dtype=torch.long)
    prev_rank = torch.zeros((E2, m), dtype=torch.long)
    val[:, :k] = top
    if len(j):
        prev_node[:, :k], prev_rank[:, :k] = i[src], rank[src]
    return val, prev_node, prev_rank


def top_paths(node_logw: list[np.ndarray], edge_logw: list[np.ndarray], m: int) -> tuple[np.ndarray, np.ndarray]:
    """The m best paths through a layered graph (one node per layer).

    node_logw[l]: [E_l]; edge_logw[l]: [E_l, E_{l+1}]. Returns (scores [m'], paths [m', L])
    best first, m' = min(m, number of paths).
    """
    L = len(node_logw)
    score = torch.full((len(node_logw[0]), m), -math.inf, dtype=torch.float64)  # [E, m]
    score[:, 0] = torch.as_tensor(node_logw[0], dtype=torch.float64)
    back = []  # per transition: (prev node [E', m], prev rank [E', m])
    for l in range(L - 1):
        edge = torch.as_tensor(edge_logw[l], dtype=torch.float64)  # [E, E']
        val, prev_node, prev_rank = _extend(score, edge, m)  # [E', m] each
        score = val + torch.as_tensor(node_logw[l + 1], dtype=torch.float64)[:, None]
        back.append((prev_node, prev_rank))
    flat = score.reshape(-1)  # [E_L * m]
    n_paths = int(torch.isfinite(flat).sum())
    val, arg = flat.topk(min(m, n_paths))
    node, rank = arg // m, arg % m
    paths = torch.zeros((len(val), L), dtype=torch.long)
    paths[:, L - 1] = node
    for l in range(L - 2, -1, -1):
        pn, pr = back[l]
        node, rank = pn[node, rank], pr[node, rank]
        paths[:, l] = node
    return val.numpy(), paths.numpy()


def _cluster_edges(stats: CalibStats, eps: float) -> list[list[np.ndarray]]:
    """Per cluster, log edge weights of every transition between consecutive MoE layers."""
    layers = stats.moe_layers
    per_layer = []
    for l in layers[:-1]:
        s = stats.layers[l]
        m = s.trans_intensity_by_cluster
        if m is None:
            if s.trans_intensity is None:
                raise StatsError(f"layer {l} has no transition intensities (pathfinder needs them)")
            m = np.asarray(s.trans_intensity)[None]  # [1, E, E']
        per_layer.append(np.asarray(m, dtype=np.float64))
    K = per_layer[0].shape[0] if per_layer else 1
    out = []
    for c in range(K):
        edges = []
        for m in per_layer:
            w = m[c] / max(m[c].sum(), 1e-300)  # [E, E']
            edges.append(np.log(w + eps))
        out.append(edges)
    return out


def path_frequencies(stats: CalibStats, m: int, tau: float, eps: float,
                     progress: bool = False) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """(frequency per layer [E_l], log node weight per layer [E_l]) over every cluster's top-m paths."""
    layers = stats.moe_layers
    nodes = node_log_weights(stats, tau, eps)
    freq = {l: np.zeros(stats.layers[l].num_experts) for l in layers}
    for edges in tqdm(_cluster_edges(stats, eps), desc="pathfinder: clusters", disable=not progress):
        with single_thread():
            _, paths = top_paths([nodes[l] for l in layers], edges, m)  # [m, L]
        for j, l in enumerate(layers):
            np.add.at(freq[l], paths[:, j], 1.0)
    return freq, nodes


class Pathfinder:
    name: ClassVar[str] = "pathfinder"
    summary: ClassVar[str] = "keep experts on the top-m expert paths of each calibration cluster (MoE Pathfinder)"
    weights: ClassVar[str] = "none"
    Config = PathfinderConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: PathfinderConfig) -> PrunePlan:
        K = max(1, stats.num_clusters)
        m = config.top_m or max(1, math.ceil(max(budget.uniform_counts().values()) / K))
        freq, nodes = path_frequencies(stats, m, config.temperature, config.eps, config.progress)
        # frequency decides; half the node-weight share (< 1) only breaks ties between equal frequencies
        priority = {l: freq[l] + 0.5 * per_layer_share(np.exp(nodes[l] - nodes[l].max())) for l in freq}
        counts = budget.counts_from_scores(priority)
        keep = {l: top_n(priority[l], counts[l]) for l in stats.moe_layers}
        scores = {l: {"path_freq": freq[l], "node_logw": nodes[l], "priority": priority[l]} for l in freq}
        return build_plan(self.name, config.model_copy(update={"top_m": m}), stats, budget, keep, scores)
