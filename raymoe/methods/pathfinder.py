"""MoE Pathfinder: keep the experts that lie on the best expert paths of each calibration cluster.

Yang, Tian, Song, "MoE Pathfinder" (arXiv 2512.18425). The MoE is a layered
directed graph over MoE layers l = 1..L. With calibration clusters c = 1..K
(k-means on pooled final hidden states, made by calibration):
- node weight  v_l(e) = softmax_e(z(loo_l) / tau) * u_l(e) * a_l(e), where
  z(loo_l) is the leave-one-out reconstruction error standardised within the layer
  (higher loss = more important), u_l the routing-probability share and a_l the
  activation-strength share (mean ||f_e|| when routed), each over the layer;
- edge weight  w_c(i -> j) = I_c(i, j) / sum I_c, the paper's transition intensity
  "activation strength of i times routing probability of j in the next layer",
  counted per token over the experts routed at that token (`edges`):
    routed (default)  I_c(i, j) = sum_{t in c} a_t(i) 1[j in S_t'] p_t'(j), a_t(i) = 1[i in S_t] ||f_i(x_t)||
                      (the routed expert's output norm), p_t'(j) the router probability of j in the
                      next MoE layer (softmax; sigmoid score for DeepSeek-V3), only where j is routed;
    corrected         the routed intensity over its independence expectation, I(i, j) I_tot / (I(i,.) I(.,j))
                      (a lift: which expert follows which, with the popularity of both removed);
    full              sum_t a_t(i) p_t'(j) over ALL j (the earlier definition; an ablation).
  `routed` is the default because it is the paper's quantity made per token; `full` sums a
  probability mass that every token spreads over all next-layer experts, so it is almost a
  product of row and column totals (row + column effects explain 99.4% of its log-edge
  variance on the testbed), the path score splits into per-node terms and the DP returns
  each layer's argmax. The measured shares: raymoe/methods/README.md ("Pathfinder").
- path score   s(P) = sum_edges log(w + eps) + sum_nodes log(v + eps).
Top paths: dynamic programming keeps the top-m partial paths into every node,
layer by layer; the top-m complete paths are exact (a k-best path's prefix is
among the k best into its node; `_extend` gathers only candidates that can still
make a node's top m).
Selection (`search_paths`): the top paths decide the kept set. Top paths share
nodes (m paths touch far fewer than m experts per layer), so the search runs in
rounds: each round every cluster adds its top-m paths under the path score with
a diversity penalty, s(P) - diversity * sum_{e in P} n_c(e), n_c(e) the number of
this cluster's earlier paths through e (the paper is silent on reaching a budget;
this choice keeps every path a best path of the paper's score among those not yet
over-used). Rounds continue until the plan built from the path frequencies keeps
only experts that lie on some path (or `max_rounds`). Frequency f_l(e) = paths
through e over every cluster and round (the paper's Figure 2 heatmap); node
weight share / 2 (< 1) only breaks ties between equal frequencies.
Counts: `uniform` keeps the top n_l per layer; global mode ranks all experts by
frequency across layers (every path crosses every layer once, so frequencies are
comparable: a layer whose paths concentrate on few experts keeps fewer), each
layer keeping at least the budget's floor (`Budget.counts_from_scores`). For
group-limited routers every original group keeps the same count (`keep_balanced`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from raymoe.methods.budget import Budget
from raymoe.methods.common import MethodConfig, StatsError, build_plan, keep_balanced, per_layer_share, single_thread
from raymoe.plan.prune_plan import PrunePlan
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    import torch

__all__ = ["Pathfinder", "PathfinderConfig", "top_paths", "node_log_weights", "edge_log_weights", "search_paths",
           "row_column_share"]

EDGES = {"routed": "trans_routed", "corrected": "trans_routed", "full": "trans_intensity"}


class PathfinderConfig(MethodConfig):
    top_m: int = Field(1, ge=1, description="paths added per cluster per search round (the top m)")
    edges: Literal["routed", "corrected", "full"] = Field("routed", description="transition intensity (see docs)")
    diversity: float = Field(1.0, ge=0, description="penalty (nats) per earlier path of the cluster through a node")
    max_rounds: int = Field(1000, ge=1, description="most search rounds before node weights fill the rest")
    temperature: float = Field(1.0, gt=0, description="softmax temperature on standardised LOO loss")
    eps: float = Field(1e-9, gt=0, description="added before every log")
    progress: bool = Field(False, description="progress bar over search rounds")
    # ablation switches (each turns one module of the paper off)
    clusters: bool = Field(True, description="per-cluster graphs (off: one graph from every calibration token)")
    paths: bool = Field(True, description="path search decides (off: node weights alone rank the experts)")


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
    below, so only ranks with score[i, r] >= tau_j - edge[i, j] are gathered.
    """
    import torch

    E, E2 = edge.shape
    q = min(m, max(4, math.ceil(m / E)))
    if E * q >= m:
        pre = (score[:, :q, None] + edge[:, None, :]).reshape(E * q, E2)  # [E*q, E']
        tau = pre.topk(m, dim=0).values[-1]  # [E']
        tau = tau - 1e-9 * (1 + tau.abs())  # rounding in (edge - tau) must not drop the candidates at tau
    else:
        tau = torch.full((E2,), -math.inf, dtype=torch.float64)
    count = torch.searchsorted((-score).contiguous(), (edge - tau[None, :]).contiguous(), right=True)  # [E, E']
    per_pair = count.T.flatten()  # [E' * E], target-major
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
    src = (first[:, None] + where).clamp_max(max(len(j) - 1, 0))
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
    import torch

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


def edge_log_weights(stats: CalibStats, mode: str, eps: float, *, by_cluster: bool = True) -> list[list[np.ndarray]]:
    """Per cluster, log edge weights log(w_c + eps) of every transition between consecutive MoE layers
    (`by_cluster=False`: one graph over all calibration tokens)."""
    name = EDGES[mode]
    per_layer = []
    for l in stats.moe_layers[:-1]:
        s = stats.layers[l]
        m = getattr(s, name + "_by_cluster") if by_cluster else None
        if m is None:
            if getattr(s, name) is None:
                raise StatsError(f"layer {l} has no transition intensities {name!r} (pathfinder edges={mode!r} "
                                 f"needs them; calibrate again with this raymoe)")
            m = np.asarray(getattr(s, name))[None]  # [1, E, E']
        per_layer.append(np.asarray(m, dtype=np.float64))
    K = per_layer[0].shape[0] if per_layer else 1
    out = []
    for c in range(K):
        edges = []
        for m in per_layer:
            w = m[c]  # [E, E']
            if mode == "corrected":
                expect = np.outer(w.sum(1), w.sum(0)) / max(w.sum(), 1e-300)  # [E, E'] independence
                w = np.divide(w, expect, out=np.zeros_like(w), where=expect > 0)
            edges.append(np.log(w / max(w.sum(), 1e-300) + eps))
        out.append(edges)
    return out


def row_column_share(logw: np.ndarray) -> float:
    """Share of the variance of log edge weights [E, E'] explained by additive row + column effects."""
    x = np.asarray(logw, dtype=np.float64)
    fit = x.mean(1, keepdims=True) + x.mean(0, keepdims=True) - x.mean()
    total = ((x - x.mean()) ** 2).sum()
    return float(1 - ((x - fit) ** 2).sum() / total) if total > 0 else 1.0


def best_paths(node_logw: list[torch.Tensor], edge_logw_t: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The best path of each of K graphs at once (Viterbi, m = 1): node_logw[l] [K, E_l], edge_logw_t[l]
    [K, E_{l+1}, E_l] (transposed: the max runs over the contiguous last axis) -> (scores [K], paths [K, L]).
    The forward keeps only the best value into every node; the backtrack recomputes each argmax on one
    row per graph (ties: the lower expert index)."""
    import torch

    score = [node_logw[0]]  # per layer [K, E_l]
    buf: dict = {}  # one work tensor per shape (a fresh 2.6 MB tensor per transition costs page faults)
    for l, edge in enumerate(edge_logw_t):
        work = buf.setdefault(edge.shape, torch.empty(edge.shape, dtype=edge.dtype))
        torch.add(score[-1][:, None, :], edge, out=work)  # [K, E', E]
        score.append(torch.amax(work, dim=2) + node_logw[l + 1])  # [K, E']
    rows = torch.arange(score[0].shape[0])
    val, node = score[-1].max(dim=1)  # [K]
    paths = torch.zeros((len(node), len(node_logw)), dtype=torch.long)
    paths[:, -1] = node
    for l in range(len(edge_logw_t) - 1, -1, -1):
        node = (score[l] + edge_logw_t[l][rows, node]).argmax(dim=1)  # [K]
        paths[:, l] = node
    return val.numpy(), paths.numpy()


def _priority(freq: dict[int, np.ndarray], nodes: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    # frequency decides; half the node-weight share (< 1) only breaks ties between equal frequencies
    return {l: freq[l] + 0.5 * per_layer_share(np.exp(nodes[l] - nodes[l].max())) for l in freq}


def _select(priority: dict[int, np.ndarray], budget: Budget) -> dict[int, list[int]]:
    counts = budget.counts_from_scores(priority)
    return {l: keep_balanced(priority[l], counts[l], budget.n_group) for l in priority}


def search_paths(nodes: dict[int, np.ndarray], edges: list[list[np.ndarray]], budget: Budget, cfg: PathfinderConfig):
    """Diversified top-path search (module docstring).

    Returns (frequency [E_l] per layer, rounds run).
    With top_m = 1 every cluster's round is one Viterbi pass, all clusters batched (`best_paths`).
    """
    import torch

    layers = sorted(nodes)
    K = len(edges)
    freq = {l: np.zeros(len(nodes[l])) for l in layers}
    used = [torch.zeros(K, len(nodes[l]), dtype=torch.float64) for l in layers]  # [K, E_l] paths through node
    node_t = [torch.as_tensor(nodes[l], dtype=torch.float64)[None] for l in layers]  # [1, E_l]
    edge_t = [torch.as_tensor(np.stack([e[j].T for e in edges]), dtype=torch.float32).contiguous()
              for j in range(len(layers) - 1)]  # [K, E', E] float32 (the search; scores below in float64)
    rounds = 0
    floors = budget.uniform_counts() if budget.uniform else budget.floors()
    bar = tqdm(total=cfg.max_rounds, desc="pathfinder: search rounds", disable=not cfg.progress)
    with single_thread():
        while rounds < cfg.max_rounds:
            rounds += 1
            bar.update(1)
            penalised = [(node_t[j] - cfg.diversity * used[j]).float() for j in range(len(layers))]  # [K, E_l]
            if cfg.top_m == 1:
                _, paths = best_paths(penalised, edge_t)  # [K, L]
                owners = np.arange(K)
            else:
                found = [top_paths([p[c].double().numpy() for p in penalised], edges[c], cfg.top_m)[1]
                         for c in range(K)]
                owners = np.concatenate([np.full(len(f), c) for c, f in enumerate(found)])
                paths = np.concatenate(found)  # [K*m, L]
            for j, l in enumerate(layers):
                np.add.at(freq[l], paths[:, j], 1.0)
                used[j].index_put_((torch.as_tensor(owners), torch.as_tensor(paths[:, j])),
                                   torch.ones(len(paths), dtype=torch.float64), accumulate=True)
            on_path = {l: int(np.count_nonzero(freq[l])) for l in layers}
            if sum(on_path.values()) < budget.total or min(on_path[l] - floors[l] for l in layers) < 0:
                continue  # not enough experts on paths yet (a necessary condition, cheaper than the plan)
            keep = _select(_priority(freq, nodes), budget)
            if all(freq[l][keep[l]].min() > 0 for l in layers):
                break
    bar.close()
    return freq, rounds


class Pathfinder:
    name: ClassVar[str] = "pathfinder"
    summary: ClassVar[str] = "keep experts on the diversified top expert paths of each calibration cluster (MoE Pathfinder)"
    weights: ClassVar[str] = "none"
    Config = PathfinderConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: PathfinderConfig) -> PrunePlan:
        nodes = node_log_weights(stats, config.temperature, config.eps)
        if config.paths:
            edges = edge_log_weights(stats, config.edges, config.eps, by_cluster=config.clusters)
            freq, rounds = search_paths(nodes, edges, budget, config)
        else:  # ablation: no path search, the node weights alone rank the experts
            freq, rounds = {l: np.zeros(len(nodes[l])) for l in nodes}, 0
        priority = _priority(freq, nodes)
        keep = _select(priority, budget)
        scores = {l: {"path_freq": freq[l], "node_logw": nodes[l], "priority": priority[l],
                      "search_rounds": np.full(len(freq[l]), float(rounds))} for l in freq}
        return build_plan(self.name, config, stats, budget, keep, scores)
