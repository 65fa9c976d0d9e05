"""M-SMoE: the most used experts are group centres, the rest join by router-logit similarity.

Li et al., "Merge, Then Compress: Demystify Efficient SMoE with Hints from Its Routing
Policy" (ICLR 2024), the merging stage (M-SMoE; the "compress" stage, low-rank
decomposition of the merged experts, is not part of this method).
Per MoE layer l with E_l experts and n_l kept:
1. Dominant experts: the n_l most frequently routed (top-k counts c_e) are the group
   centres. `global` (the paper: frequencies ranked across all layers) ranks the usage
   shares c_e / sum_l c of every layer together (Budget.counts_from_scores); `uniform`
   keeps n_l = round((1 - r) E_l) per layer.
2. Grouping: every other expert e joins the centre d maximising the cosine similarity of
   their router-logit patterns over the calibration probe tokens x_p,
       sim(e, d) = <z_e, z_d> / (||z_e|| ||z_d||),   z_e = (r_e . x_p)_p  [P]
   (r_e the router row; ties: the lower index).
3. Merging: usage-weighted, W_d' = sum_{m in G_d} w_m P_m(W_m), w_m = c_m / sum_{G_d} c,
   after neuron permutation alignment P_m of each member to the centre (the paper aligns
   neurons before merging; `align=weights` is weight matching, the default `activations`
   matches activation correlations on the probe tokens, raymoe/methods/align.py).
   Router rows: r_d' = sum_m w_m r_m (a choice, the plan's rule for every merge method).
Group-limited routers: centres are the top n_l / n_group of every original group
(`keep_balanced`) and experts join a centre of their own original group only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field

from raymoe.methods.budget import Budget
from raymoe.methods.common import StatsError, keep_balanced, per_layer_share, probe_subset, single_thread
from raymoe.methods.merging import AlignedMergeConfig, merge_plan
from raymoe.plan.prune_plan import PrunePlan
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    import torch

__all__ = ["MSmoe", "MSmoeConfig", "logit_similarity", "assign_to_centres"]


class MSmoeConfig(AlignedMergeConfig):
    router_tokens: int = Field(512, ge=2, description="probe tokens per layer for the router-logit patterns")


def logit_similarity(x: torch.Tensor, router: torch.Tensor) -> np.ndarray:
    """Cosine similarity [E, E] of the experts' router-logit columns z_e = x r_e over x [P, H]."""
    import torch

    z = x.double() @ router.double().T  # [P, E]
    unit = torch.nn.functional.normalize(z, dim=0)
    return (unit.T @ unit).numpy()  # [E, E]


def assign_to_centres(sim: np.ndarray, centres: list[int], n_group: int) -> list[list[int]]:
    """Member lists (centre first) of one layer: each non-centre joins its most similar centre of the
    same original group (ties: lower centre index)."""
    E = sim.shape[0]
    size = E // n_group
    groups = {c: [c] for c in centres}
    for e in range(E):
        if e in groups:
            continue
        pool = [c for c in centres if c // size == e // size]
        if not pool:
            raise StatsError(f"m-smoe: expert {e}'s original group keeps no centre")
        best = max(pool, key=lambda c: (sim[e, c], -c))
        groups[best].append(e)
    return [groups[c] for c in centres]


class MSmoe:
    name: ClassVar[str] = "m-smoe"
    summary: ClassVar[str] = ("merge every expert into the most used expert with the most similar router logits, "
                              "usage-weighted after neuron alignment (M-SMoE)")
    weights: ClassVar[str] = "required"
    Config = MSmoeConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: MSmoeConfig) -> PrunePlan:
        if weights is None:
            raise StatsError("m-smoe needs the expert weights (router rows and neuron alignment)")
        with single_thread():
            shares = {l: per_layer_share(s.counts) for l, s in stats.layers.items()}
            counts = budget.counts_from_scores(shares)
            groups, table = {}, {}
            for l, s in stats.layers.items():
                centres = keep_balanced(shares[l], counts[l], budget.n_group)
                x = probe_subset(stats, l, config.router_tokens, config.seed)  # [P, H]
                sim = logit_similarity(x, weights.router(l))  # [E, E]
                groups[l] = assign_to_centres(sim, centres, budget.n_group)
                to_centre = np.ones(s.num_experts)
                for members in groups[l]:
                    to_centre[members] = sim[members, members[0]]
                table[l] = {"usage": shares[l], "similarity_to_centre": to_centre}
        return merge_plan(self.name, config, stats, weights, budget, groups, table)
