"""Calibration clusters for Pathfinder's per-cluster statistics, fixed before the pass.

Pathfinder (Yang, Tian, Song, arXiv 2512.18425) clusters calibration
sequences with k-means on pooled hidden states and keeps transition statistics
per cluster. The paper does not say which layer's states; raymoe pools the
final hidden states (the last decoder layer's output after the final norm,
mean over the sequence's tokens: the model's own sequence representation, the
same vector recorded per sequence in sequences.parquet). So that the
per-cluster sums accumulate in the statistics pass, the clusters are assigned
*before* it, from a pre-pass: every micro-batch goes through the stages once
without statistics (`MicroBatch.prepass`), then seeded k-means (k-means++, 10
restarts) with K = min(clusters, N). The cluster id travels with each
micro-batch of the statistics pass. The pre-pass costs about one bare forward
(measured with bench/calibrate.py, see its docstring); the alternative, per-sequence
transition matrices clustered after the pass, would need N x E x E' numbers per
layer (3.9 GB at DeepSeek-V3 scale with 128 sequences).
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
