"""C-GNN-PRUNE: entropy-guided allocation, interaction graph, GNN embedding, communities, selection.

Li, Wang, Wang, "C-GNN-PRUNE: A Unified Graph-Based Framework for Structure-Aware
Pruning of Mixture-of-Experts Models" (AAAI 2026). Only the abstract is public;
docs/METHODS.md makes its modules precise:
1. Entropy-guided allocation (`entropy_allocation`). u_l(e) = count_l(e) / sum,
   H_l = -sum u log u / log E_l. Removal share r_l = min(c (1 - H_l + eps)^alpha, 1 - floor_l / E_l),
   the scalar c found by bisection so that sum_l (1 - r_l) E_l = N (the global budget);
   the real counts are then rounded (largest remainder, n_group steps).
   Lower-entropy layers (concentrated usage, more redundancy) lose more.
   Off: every layer's target is (1 - r) E_l (rounded to meet N). `uniform` skips this
   module either way and keeps n_l = round((1 - r) E_l).
2. Interaction graph (cgnn_graph.py): w = lam max(0, funcsim) + (1 - lam) coact, coact the
   positive PMI of co-activation against quasi-independence (not popularity); functional
   node features (mean-output PCA, ranked activation norm; usage only with `usage_features`).
3. GCN auto-encoder embedding z_e (`gnn`, cgnn_graph.py). Community graph
   S = beta max(0, cos(z_i, z_j)) + (1 - beta) coact. Off: S = w (the interaction graph itself).
4. Leiden communities on S (`communities`), resolution searched for C_l = ceil(community_ratio n_l)
   communities (cgnn_select.py says why fewer than n_l).
5. Activation-aware selection (cgnn_select.py): I_e = saliency_e u_l(e); each community keeps its
   most important expert, the other n_l - C_l slots go by importance; per ORIGINAL group for
   group-limited routers (n_group > 1: keep_balanced). Off (`communities=false`): the top n_l by
   importance per group; no graph, GNN or Leiden is computed (`gnn` then has no effect).
Plan scores per layer: importance, usage, entropy, and community (when communities are on).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from raymoe.methods.budget import Budget
from raymoe.methods.cgnn_graph import coactivation, interaction_graph, knn_mask, leiden_communities, \
    node_features, train_gae
from raymoe.methods.cgnn_select import community_target, importance, select_from_communities
from raymoe.methods.common import MethodConfig, build_plan, keep_balanced
from raymoe.plan.prune_plan import PrunePlan
from raymoe.store.calib_stats import CalibStats

__all__ = ["CGnnPrune", "CGnnConfig", "entropy_targets", "select_from_communities"]


class CGnnConfig(MethodConfig):
    alpha: float = Field(1.0, ge=0, description="entropy allocation exponent")
    eps: float = Field(0.05, gt=0, description="added to 1 - H before the exponent")
    lam: float = Field(0.5, ge=0, le=1, description="interaction graph: weight of functional similarity")
    pmi_prior: float = Field(1.0, gt=0, description="pseudo-count of co-activations in the positive PMI")
    usage_features: bool = Field(False, description="add usage, probability mass and saliency to the node features")
    beta: float = Field(0.5, ge=0, le=1, description="community graph: weight of embedding similarity")
    community_ratio: float = Field(0.5, gt=0, le=1, description="communities per layer = ceil(ratio n_l); "
                                                                "the rest of n_l is filled by importance")
    pca_dims: int = Field(8, ge=0, description="principal components of the mean output in the node features")
    hidden: int = Field(32, ge=1, description="GCN hidden width")
    dim: int = Field(16, ge=1, description="embedding width")
    epochs: int = Field(100, ge=0, description="auto-encoder training epochs")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    knn: int = Field(16, ge=1, description="edges per node for message passing and Leiden")
    seed: int = Field(0, description="GCN initialisation and Leiden seed")
    progress: bool = Field(False, description="progress bar over layers")
    # ablation switches: each turns one module off
    entropy_allocation: bool = Field(True, description="module 1: entropy-guided per-layer counts (off: equal share)")
    gnn: bool = Field(True, description="module 3: GCN auto-encoder embeddings in the community graph "
                                        "(off: the interaction graph alone)")
    communities: bool = Field(True, description="module 4: Leiden communities, one kept each "
                                                "(off: top n_l by importance)")


def entropy_targets(stats: CalibStats, budget: Budget, alpha: float, eps: float) -> dict[int, float]:
    """Real-valued kept counts E_l (1 - r_l) meeting the global budget (module 1)."""
    layers = stats.moe_layers
    E = np.array([budget.experts[l] for l in layers], dtype=np.float64)
    floors = budget.floors()
    rmax = np.array([1 - floors[l] / budget.experts[l] for l in layers])  # [L]
    w = (1 - np.array([stats.layers[l].entropy for l in layers]) + eps) ** alpha  # [L]
    removed_target = E.sum() - budget.total

    def removed(c: float) -> float:
        return float((np.minimum(c * w, rmax) * E).sum())

    lo, hi = 0.0, 1.0
    while removed(hi) < removed_target and hi < 1e12:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < removed_target else (lo, mid)
    r = np.minimum(hi * w, rmax)
    return {l: float(E[i] * (1 - r[i])) for i, l in enumerate(layers)}


def layer_counts(stats: CalibStats, budget: Budget, config: CGnnConfig) -> dict[int, int]:
    """n_l: uniform, entropy-guided (module 1), or the equal share (1 - r) E_l rounded to meet N."""
    if budget.uniform:
        return budget.uniform_counts()
    if config.entropy_allocation:
        return budget.counts_from_targets(entropy_targets(stats, budget, config.alpha, config.eps))
    return budget.counts_from_targets({l: (1 - budget.ratio) * e for l, e in budget.experts.items()})


def _embeddings(stats: CalibStats, config: CGnnConfig) -> list[np.ndarray]:
    """GCN auto-encoder embeddings of every layer's experts (modules 2-3) -> [E_l, dim] per layer."""
    graphs = []
    for l in stats.moe_layers:
        s = stats.layers[l]
        w = interaction_graph(s, config.lam, config.pmi_prior)  # [E, E]
        graphs.append((node_features(s, config.pca_dims, config.usage_features), w * knn_mask(w, config.knn), w))
    return train_gae(graphs, hidden=config.hidden, dim=config.dim, epochs=config.epochs, lr=config.lr,
                     seed=config.seed)


class CGnnPrune:
    name: ClassVar[str] = "c-gnn-prune"
    summary: ClassVar[str] = ("entropy-guided allocation, expert interaction graph (positive PMI), GCN "
                              "auto-encoder, Leiden communities, activation-aware selection (C-GNN-PRUNE)")
    weights: ClassVar[str] = "none"
    Config = CGnnConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: CGnnConfig) -> PrunePlan:
        layers = stats.moe_layers
        counts = layer_counts(stats, budget, config)
        z = _embeddings(stats, config) if config.communities and config.gnn else None
        keep, scores = {}, {}
        for i, l in enumerate(tqdm(layers, desc="c-gnn-prune: communities", disable=not config.progress)):
            s = stats.layers[l]
            imp = importance(s)  # [E]
            scores[l] = {"importance": imp, "usage": s.usage, "entropy": np.full(s.num_experts, s.entropy)}
            if counts[l] >= s.num_experts:
                keep[l] = list(range(s.num_experts))
                continue
            if not config.communities:
                keep[l] = keep_balanced(imp, counts[l], budget.n_group)
                continue
            if z is not None:
                zn = z[i] / np.maximum(np.linalg.norm(z[i], axis=1, keepdims=True), 1e-12)  # [E, dim]
                sim = config.beta * np.clip(zn @ zn.T, 0, None) + (1 - config.beta) * coactivation(
                    s, config.pmi_prior)  # [E, E]
            else:
                sim = interaction_graph(s, config.lam, config.pmi_prior)  # [E, E]
            np.fill_diagonal(sim, 0.0)
            target = community_target(counts[l], config.community_ratio)
            labels, _ = leiden_communities(sim, target, seed=config.seed, knn=config.knn)
            keep[l] = select_from_communities(labels, imp, counts[l], budget.n_group)
            scores[l]["community"] = labels.astype(float)
        return build_plan(self.name, config, stats, budget, keep, scores)
