"""HC-SMoE: hierarchical clustering of experts by their outputs, frequency-weighted merging.

Chen et al., "Retraining-Free Merging of Sparse MoE via Hierarchical Clustering" (2024).
Per MoE layer l with E_l experts and n_l kept:
1. Representation: the expert's mean output on the calibration probe tokens,
   o_e = mean_p f_e(x_p) [H] (LayerStats.mean_output; every expert runs on the same tokens).
2. Clustering: agglomerative, average linkage (the paper's choice),
   d(A, B) = mean_{a in A, b in B} ||o_a - o_b||  (scipy `linkage`, `metric`: euclidean
   or cosine), cut into exactly n_l clusters (scipy `cut_tree`).
3. Merging: each cluster C becomes one expert, W = sum_{m in C} w_m P_m(W_m) with
   frequency weights w_m = c_m / sum_{m' in C} c_m' (c: top-k routing counts), P_m the
   neuron alignment to the cluster's most used member, which is the target whose slot
   (and router row: r = sum_m w_m r_m) the merged expert takes (raymoe/methods/merging.py).
Choices where the paper is silent or differs: `global` allocation ranks every expert's
usage share c_e / sum_l c across layers (Budget.counts_from_scores; the paper uses one
count per layer, our `uniform`); alignment is on by default (the paper merges without).
Group-limited routers cluster each original group into n_l / n_group clusters, so merges
never cross a group.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from raymoe.methods.budget import Budget
from raymoe.methods.common import StatsError, per_layer_share, single_thread
from raymoe.methods.merging import AlignedMergeConfig, groups_from_labels, merge_plan, per_original_group
from raymoe.plan.prune_plan import PrunePlan
from raymoe.store.calib_stats import CalibStats

__all__ = ["HcSmoe", "HcSmoeConfig", "cluster_outputs"]


class HcSmoeConfig(AlignedMergeConfig):
    linkage: Literal["average", "complete", "single"] = Field("average", description="linkage criterion "
                                                                "(the paper: average)")
    metric: Literal["euclidean", "cosine"] = Field("euclidean", description="distance between mean outputs")


def cluster_outputs(feats: np.ndarray, n: int, linkage: str = "average", metric: str = "euclidean") -> np.ndarray:
    """Labels 0..n-1 of the rows of feats [N, H] from hierarchical clustering cut into exactly n clusters."""
    from scipy.cluster.hierarchy import cut_tree, linkage as scipy_linkage

    N = len(feats)
    if n >= N:
        return np.arange(N)
    if n <= 1:
        return np.zeros(N, dtype=np.int64)
    z = scipy_linkage(np.asarray(feats, dtype=np.float64), method=linkage, metric=metric)
    return cut_tree(z, n_clusters=n).reshape(-1).astype(np.int64)


class HcSmoe:
    name: ClassVar[str] = "hc-smoe"
    summary: ClassVar[str] = ("merge experts clustered hierarchically (average linkage) by their mean outputs, "
                              "frequency-weighted and neuron-aligned (HC-SMoE)")
    weights: ClassVar[str] = "required"
    Config = HcSmoeConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: HcSmoeConfig) -> PrunePlan:
        with single_thread():
            shares = {l: per_layer_share(s.counts) for l, s in stats.layers.items()}
            counts = budget.counts_from_scores(shares)
            groups, table = {}, {}
            for l, s in stats.layers.items():
                if s.mean_output_sum is None or s.probe_tokens <= 0:
                    raise StatsError(f"hc-smoe: layer {l} has no mean expert outputs (calibrate with probe tokens)")
                feats = np.asarray(s.mean_output, dtype=np.float64)  # [E, H]
                labels = np.full(s.num_experts, -1.0)

                def clusters(experts: np.ndarray, n: int, feats=feats, s=s, labels=labels) -> list[list[int]]:
                    lab = cluster_outputs(feats[experts], n, config.linkage, config.metric)
                    labels[experts] = lab + (labels.max() + 1)
                    return groups_from_labels(experts, lab, s.counts)

                groups[l] = per_original_group(s.num_experts, counts[l], budget.n_group, clusters)
                table[l] = {"usage": shares[l], "cluster": labels}
        return merge_plan(self.name, config, stats, weights, budget, groups, table)
