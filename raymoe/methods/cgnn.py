"""C-GNN-PRUNE: entropy-guided allocation, interaction graph, GNN embedding, communities, selection.

Li, Wang, Wang, "C-GNN-PRUNE: A Unified Graph-Based Framework for Structure-Aware
Pruning of Mixture-of-Experts Models" (AAAI 2026). Only the abstract is public;
shared/METHODS.md makes its four modules precise:
1. Entropy-guided allocation. u_l(e) = count_l(e) / sum, H_l = -sum u log u / log E_l.
   Removal share r_l = min(c (1 - H_l + eps)^alpha, 1 - floor_l / E_l), the scalar
   c found by bisection so that sum_l (1 - r_l) E_l = N (the global budget);
   the real counts are then rounded (largest remainder, n_group steps).
   Lower-entropy layers (concentrated usage, more redundancy) lose more.
   `uniform` skips this and keeps n_l = round((1 - r) E_l).
2-4. Interaction graph, GCN auto-encoder, Leiden communities: cgnn_graph.py.
5. Activation-aware selection: importance_e = saliency_e * u_l(e) (REAP saliency);
   each community keeps its most important expert; the kept set is then trimmed
   or filled to n_l by importance.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from raymoe.methods.budget import Budget
from raymoe.methods.cgnn_graph import interaction_graph, jaccard, knn_mask, leiden_communities, node_features, \
    train_gae
from raymoe.methods.common import MethodConfig, build_plan, per_layer_share
from raymoe.plan.schema import PrunePlan
from raymoe.store.schema import CalibStats

__all__ = ["CGnnPrune", "CGnnConfig", "entropy_targets", "select_from_communities"]


class CGnnConfig(MethodConfig):
    alpha: float = Field(1.0, ge=0, description="entropy allocation exponent")
    eps: float = Field(0.05, gt=0, description="added to 1 - H before the exponent")
    lam: float = Field(0.5, ge=0, le=1, description="interaction graph: weight of functional similarity")
    beta: float = Field(0.5, ge=0, le=1, description="community graph: weight of embedding similarity")
    pca_dims: int = Field(8, ge=0, description="principal components of the mean output in the node features")
    hidden: int = Field(32, ge=1, description="GCN hidden width")
    dim: int = Field(16, ge=1, description="embedding width")
    epochs: int = Field(100, ge=0, description="auto-encoder training epochs")
    lr: float = Field(0.01, gt=0, description="Adam learning rate")
    knn: int = Field(16, ge=1, description="edges per node for message passing and Leiden")
    seed: int = Field(0, description="GCN initialisation and Leiden seed")
    progress: bool = Field(False, description="progress bar over layers")


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


def select_from_communities(labels: np.ndarray, importance: np.ndarray, n: int) -> list[int]:
    """Best expert per community, trimmed or filled to n by importance (module 5)."""
    reps = [max(np.flatnonzero(labels == c), key=lambda e: (importance[e], -e)) for c in np.unique(labels)]
    reps = sorted(reps, key=lambda e: (-importance[e], e))[:n]
    if len(reps) < n:
        rest = [e for e in np.lexsort((np.arange(len(importance)), -importance)) if e not in set(reps)]
        reps += rest[: n - len(reps)]
    return sorted(int(e) for e in reps)


class CGnnPrune:
    name: ClassVar[str] = "c-gnn-prune"
    summary: ClassVar[str] = ("entropy-guided allocation, expert interaction graph, GCN auto-encoder, "
                              "Leiden communities, activation-aware selection (C-GNN-PRUNE)")
    weights: ClassVar[str] = "none"
    Config = CGnnConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: CGnnConfig) -> PrunePlan:
        layers = stats.moe_layers
        if budget.uniform:
            counts = budget.uniform_counts()
        else:
            counts = budget.counts_from_targets(entropy_targets(stats, budget, config.alpha, config.eps))
        graphs = []
        for l in layers:
            s = stats.layers[l]
            w = interaction_graph(s, config.lam)  # [E, E]
            graphs.append((node_features(s, config.pca_dims), w * knn_mask(w, config.knn), w))
        z = train_gae(graphs, hidden=config.hidden, dim=config.dim, epochs=config.epochs, lr=config.lr,
                      seed=config.seed)
        keep, scores = {}, {}
        for i, l in enumerate(tqdm(layers, desc="c-gnn-prune: communities", disable=not config.progress)):
            s = stats.layers[l]
            zn = z[i] / np.maximum(np.linalg.norm(z[i], axis=1, keepdims=True), 1e-12)
            sim = config.beta * np.clip(zn @ zn.T, 0, None) + (1 - config.beta) * jaccard(s)  # [E, E]
            np.fill_diagonal(sim, 0.0)
            labels, _ = leiden_communities(sim, counts[l], seed=config.seed, knn=config.knn)
            importance = s.reap * per_layer_share(s.counts)  # [E]
            keep[l] = (select_from_communities(labels, importance, counts[l]) if counts[l] < s.num_experts
                       else list(range(s.num_experts)))
            scores[l] = {"importance": importance, "community": labels.astype(float),
                         "usage": per_layer_share(s.counts), "entropy": np.full(s.num_experts, s.entropy)}
        return build_plan(self.name, config, stats, budget, keep, scores)

