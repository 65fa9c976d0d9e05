"""What the merge methods share: alignment options, usage weights, per-group work, the aligned plan.

A merge plan keeps n_l experts per layer: each kept expert t is the target of a group
G_t (t in G_t; the groups partition the layer's experts), and the pruned expert is
    W_t' = sum_{m in G_t} w_m P_m(W_m),      r_t' = sum_{m in G_t} w_m r_m
(expert weights aligned by the neuron permutations P_m of raymoe/methods/align.py, P_t
the identity; router rows r and DeepSeek-V3's correction bias averaged with the same
weights, unpermuted; raymoe/checkpoint/apply.py). Usage weights (M-SMoE, HC-SMoE):
    w_m = c_m / sum_{m' in G_t} c_m'        (c: top-k routing counts; uniform when all are 0).
Group-limited routers (n_group = g > 1): the kept counts are n_l / g per ORIGINAL group
and every group G_t lies inside one original group (`per_original_group`), so the pruned
layer's re-formed groups are the original ones with their floors (`keep_balanced`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from pydantic import Field

from raymoe.methods.align import AlignBasis, alignment_for
from raymoe.methods.budget import Budget
from raymoe.methods.common import MethodConfig, build_plan
from raymoe.plan.prune_plan import MergeGroup, PrunePlan
from raymoe.store.calib_stats import CalibStats

__all__ = ["AlignedMergeConfig", "usage_weights", "groups_from_labels", "per_original_group", "merge_plan"]


class AlignedMergeConfig(MethodConfig):
    """Options every merge method has."""

    align: AlignBasis = Field("activations", description="neuron alignment before averaging: activation "
                              "correlations on probe tokens, weight similarity, or none")
    align_tokens: int = Field(256, ge=2, description="probe tokens per layer for activation correlations")
    seed: int = Field(0, description="probe-token sampling seed")


def usage_weights(counts: np.ndarray, members: list[int]) -> list[float]:
    """w_m = c_m / sum c over the group (uniform when the group was never routed)."""
    c = np.clip(np.asarray(counts, dtype=np.float64)[members], 0.0, None)
    return (c / c.sum()).tolist() if c.sum() > 0 else [1.0 / len(members)] * len(members)


def groups_from_labels(experts: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> list[list[int]]:
    """Clusters of `experts` (labels per expert) as member lists, each led by its most used member
    (ties: lower index) -- the group's target."""
    out = []
    for c in np.unique(labels):
        members = sorted(int(e) for e in experts[labels == c])
        members.sort(key=lambda e: (-float(counts[e]), e))
        out.append(members)
    return out


def per_original_group(num_experts: int, n_kept: int, n_group: int,
                       fn: Callable[[np.ndarray, int], list[list[int]]]) -> list[list[int]]:
    """Apply fn(experts of one original group, kept count of that group) -> member lists (target first)
    to each of the n_group contiguous original groups (the whole layer when n_group = 1)."""
    size, per = num_experts // n_group, n_kept // n_group
    out = []
    for j in range(n_group):
        out += fn(np.arange(j * size, (j + 1) * size), per)
    return out


def merge_plan(name: str, config: AlignedMergeConfig, stats: CalibStats, weights, budget: Budget,
               groups: Mapping[int, list[list[int]]], scores: Mapping[int, Mapping[str, Any]]) -> PrunePlan:
    """The plan of per-layer member lists (target first): usage-weighted merge groups, aligned."""
    keep, merges, table = {}, {}, {l: dict(v) for l, v in scores.items()}
    for l, members in groups.items():
        counts = stats.layers[l].counts
        keep[l] = sorted(m[0] for m in members)
        merges[l] = [MergeGroup(target=m[0], members=m, weights=usage_weights(counts, m)) for m in members
                     if len(m) > 1]
        target = np.arange(stats.layers[l].num_experts, dtype=np.float64)
        for m in members:
            target[m] = m[0]
        table[l]["merge_target"] = target
    plan = build_plan(name, config, stats, budget, keep, table, merges)
    plan.alignment = alignment_for(stats, weights, merges, config.align, config.align_tokens, config.seed)
    return plan
