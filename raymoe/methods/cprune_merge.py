"""`c-prune-merge`: C-Prune's kept set, every removed expert merged into a kept one, on aligned weights.

Guo et al., "Cluster-Driven Expert Pruning for Mixture-of-Experts LLMs" (arXiv 2504.07807), the
merge variant (raymoe/methods/cprune.py computes the kept set, the layer-wise clusters and phi).
Every removed expert joins the kept expert of its layer-wise cluster it is most similar to (cosine
of phi; any kept expert of its original group when its cluster kept none). A group (target t,
members m) merges with w_m = u_m exp(a_{m,t} / T) / sum_m' u_m' exp(a_{m',t} / T), a the cosine
affinity (a_{t,t} = 1), u the routing frequency share (+1e-12); phi_e = mean of e's features over
all samples. Before averaging, each member's neurons are permuted to match the target's (`align`,
default activation correlations on the probe tokens; raymoe/methods/align.py):
W_t' = sum_m w_m P_m(W_m), router rows r_t' = sum_m w_m r_m. `align=none` averages unaligned weights
(the earlier merge); without the expert weights (optional for C-Prune) nothing can be aligned and
the merge is unaligned. Group-limited routers: a removed expert joins a kept expert of its own
original group only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field

from raymoe.methods.budget import Budget
from raymoe.methods.common import build_plan, per_layer_share, single_thread
from raymoe.methods.cprune import CPruneConfig, cprune
from raymoe.plan.prune_plan import MergeGroup, PrunePlan
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    import torch

__all__ = ["CPruneMerge", "CPruneMergeConfig", "merge_groups"]


class CPruneMergeConfig(CPruneConfig):
    temperature: float = Field(0.1, gt=0, description="softmax temperature over affinities")
    align: Literal["activations", "weights", "none"] = Field(
        "activations", description="neuron alignment before averaging: activation correlations on probe "
        "tokens, weight similarity, or none")
    align_tokens: int = Field(256, ge=2, description="probe tokens per layer for activation correlations")


def merge_groups(keep: list[int], labels: np.ndarray, phi: torch.Tensor, usage: np.ndarray,
                 temperature: float, n_group: int = 1) -> tuple[list[MergeGroup], np.ndarray]:
    """Fold removed experts into kept ones of the same original group (of n_group); returns (groups,
    affinity of each expert to its target)."""
    import torch

    unit = torch.nn.functional.normalize(phi.double(), dim=1)
    cos = (unit @ unit.T).numpy()  # [E, E]
    E = len(labels)
    size = E // max(n_group, 1)
    target_of = {t: t for t in keep}
    for e in range(E):
        if e in target_of:
            continue
        mine = [t for t in keep if t // size == e // size]
        same = [t for t in mine if labels[t] == labels[e]]
        pool = same or mine
        target_of[e] = max(pool, key=lambda t: (cos[e, t], -t))
    aff = np.array([cos[e, target_of[e]] if e != target_of[e] else 1.0 for e in range(E)])
    groups = []
    for t in keep:
        members = [t] + [e for e in range(E) if target_of[e] == t and e != t]
        if len(members) == 1:
            continue
        logit = np.array([aff[m] for m in members]) / temperature
        w = (usage[members] + 1e-12) * np.exp(logit - logit.max())
        groups.append(MergeGroup(target=t, members=members, weights=(w / w.sum()).tolist()))
    return groups, aff


class CPruneMerge:
    name: ClassVar[str] = "c-prune-merge"
    summary: ClassVar[str] = ("C-Prune, removed experts merged into their cluster's kept expert (affinity softmax), "
                              "neuron-aligned")
    weights: ClassVar[str] = "optional"
    Config = CPruneMergeConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: CPruneMergeConfig) -> PrunePlan:
        from raymoe.methods.align import alignment_for

        keep, table, labels, phi = cprune(stats, weights, budget, config)
        merges = {}
        for l in keep:
            usage = per_layer_share(stats.layers[l].counts)
            merges[l], aff = merge_groups(keep[l], labels[l], phi[l], usage, config.temperature, budget.n_group)
            table[l]["affinity_to_target"] = aff
        plan = build_plan(self.name, config, stats, budget, keep, table, merges)
        align = config.align if weights is not None else "none"  # no weights: nothing to align (stated)
        with single_thread():
            plan.alignment = alignment_for(stats, weights, merges, align, config.align_tokens, config.seed)
        return plan
