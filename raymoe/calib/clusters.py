"""Calibration clusters for Pathfinder's per-cluster statistics, fixed before the pass.

Pathfinder (Yang, Tian, Song, arXiv 2512.18425) clusters calibration
sequences with k-means and keeps transition statistics per cluster. So that
the per-cluster sums accumulate in the one calibration pass (no second pass),
raymoe assigns the clusters *before* the pass: seeded k-means (k-means++,
10 restarts) on each sequence's mean input embedding (the mean of the
embedding rows of its tokens), K = min(clusters, N). The cluster id then
travels with each micro-batch. The pooled final hidden states are still
recorded per sequence (sequences.parquet) for methods that want to
re-cluster on them.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["assign_clusters", "effective_clusters"]


def effective_clusters(requested: int, samples: int) -> int:
    return max(1, min(requested, samples))


def assign_clusters(features: np.ndarray, requested: int, seed: int) -> np.ndarray:
    """Cluster id per sequence from features [N, H] -> [N] int64 in [0, K)."""
    k = effective_clusters(requested, features.shape[0])
    if k == 1:
        return np.zeros(features.shape[0], dtype=np.int64)
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points: fewer distinct clusters than k is fine
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features.astype(np.float64))
    return labels.astype(np.int64)
