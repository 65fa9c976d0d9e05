"""Neuron grouping: importance, the shared expert, and balanced co-activation clusters.

MoEfication (Zhang et al., "MoEfication: Transformer Feed-forward Layers are
Mixtures of Experts", Findings of ACL 2022) groups the neurons of a dense FFN
that fire together into experts. For a SwiGLU MLP with activations
a_t = silu(W_g x_t) * (W_u x_t) and down projection W_d:
- importance of neuron i: imp_i = mean_t |a_ti| * ||W_d[:, i]|| (its mean output magnitude);
- co-activation pattern of neuron i: the binary vector over sampled tokens t of
  "i is among the top 1/E of the routed neurons by |a_ti| * ||W_d[:, i]||";
- balanced k-means on the L2-normalised patterns (cosine), each step's
  assignment solved exactly under equal cluster sizes (Hungarian on the cost
  matrix with each centroid repeated `size` times).
Importance strata: the routed neurons sorted by importance are cut into S equal
strata and each stratum is clustered into E/S experts, so experts differ in
importance (load imbalance as in trained MoEs) instead of all being alike.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["neuron_importance", "coactivation_patterns", "balanced_kmeans", "group_neurons"]


def neuron_importance(act: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """imp_i = mean_t |a_ti| * ||W_d[:, i]||.  act [T, I], down [H, I] -> [I]."""
    return act.abs().mean(0) * down.norm(dim=0)  # [I]


def coactivation_patterns(contrib: torch.Tensor, frac: float) -> np.ndarray:
    """Binary patterns [n, T]: neuron i is in token t's top `frac` of |contribution|.  contrib [T, n]."""
    t, n = contrib.shape
    top = max(1, int(round(n * frac)))
    idx = contrib.abs().topk(top, dim=1).indices  # [T, top]
    pat = torch.zeros(t, n, dtype=torch.float32)
    pat.scatter_(1, idx, 1.0)
    return pat.T.contiguous().numpy()  # [n, T]


def balanced_kmeans(feats: np.ndarray, k: int, rng: np.random.Generator, iters: int = 12) -> np.ndarray:
    """Cluster the rows of feats [n, d] into k clusters of exactly n/k rows (cosine distance); labels [n]."""
    n = feats.shape[0]
    size = n // k
    assert size * k == n, "k must divide n"
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)  # [n, d]
    # k-means++ seeding on cosine distance
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = 1.0 - np.max(np.stack([x @ c for c in centers], 1), axis=1)  # [n]
        p = np.maximum(d, 0) + 1e-12
        centers.append(x[rng.choice(n, p=p / p.sum())])
    c = np.stack(centers)  # [k, d]
    labels = np.full(n, -1)
    for _ in range(iters):
        cost = 1.0 - x @ c.T  # [n, k]
        _, cols = linear_sum_assignment(np.repeat(cost, size, axis=1))  # each centroid `size` slots
        new = cols // size
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.stack([x[labels == j].mean(0) for j in range(k)])
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-8)
    return labels


def group_neurons(act: torch.Tensor, down: torch.Tensor, *, experts: int, shared: int, strata: int,
                  coact_tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split the I neurons into a shared set (the `shared` most important) and `experts` equal groups.

    act [T, I], down [H, I]. Returns (shared neuron ids, [E arrays of neuron ids]).
    """
    imp = neuron_importance(act, down).numpy()  # [I]
    order = np.argsort(-imp, kind="stable")
    shared_ids, routed = np.sort(order[:shared]), order[shared:]  # routed: by importance, descending
    t = act.shape[0]
    sample = np.sort(rng.choice(t, size=min(coact_tokens, t), replace=False))
    contrib = act[sample][:, routed] * down[:, routed].norm(dim=0)  # [Tc, R]
    pats = coactivation_patterns(contrib, 1.0 / experts)  # [R, Tc]
    per_stratum = experts // strata
    groups: list[np.ndarray] = []
    for s_ids in np.array_split(np.arange(len(routed)), strata):
        labels = balanced_kmeans(pats[s_ids], per_stratum, rng)
        groups += [np.sort(routed[s_ids[labels == j]]) for j in range(per_stratum)]
    perm = rng.permutation(experts)  # expert index carries no importance order
    return shared_ids, [groups[p] for p in perm]
