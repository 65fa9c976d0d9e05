"""C-Prune: layer-wise Ward clustering with voting, global cluster pruning, and the merge variant.

Guo et al., "Cluster-Driven Expert Pruning for Mixture-of-Experts LLMs"
(arXiv 2504.07807; authors' code Fighoture/MoE_unsupervised_pruning).
1. Layer-wise clustering. Expert representation phi_e: the expert's outputs on
   the probe tokens (`outputs`: per voting batch the outputs on the batch's
   tokens, concatenated; phi_e = their mean over all probe tokens), the
   calibrated mean output (`mean_output`, one batch) or the flat weights
   (`weights`). Ward clustering (scipy) into C_l = round(clusters_frac * E_l)
   clusters. Clusters of size < 3 keep all members; a cluster of size s keeps
   floor(c(s / E) (1 - r) s) members closest to its centroid (or highest router
   score), with the size-dependent factor of the authors' code
   c(p) = 0.5 + 0.6 (e^{1/2 - p} - sigma(2p - 1)). Each batch votes for the
   members it keeps; the least-voted experts go (ties: lower router share).
2. Global clustering (`global`). Units are the layer-wise clusters of step 1
   (on phi); their unit-normalised mean representations are Ward-clustered
   across all layers into round(global_frac * units) global clusters. In each
   global cluster only the unit with the largest routing share is not redundant.
   Unified importance U_e = (votes_e / B) (1 - penalty * redundant(e)); experts
   are kept by U across layers, each layer keeping at least
   max(top_k, min((1 - max_layer_ratio) E_l, (1 - r) E_l)) (the cap per layer).
3. `c-prune-merge`: every removed expert joins the kept expert of its layer-wise
   cluster it is most similar to (cosine of phi; any kept expert when its
   cluster kept none). A group (target t, members m) merges with
   w_m = u_m exp(a_{m,t} / T) / sum_m' u_m' exp(a_{m',t} / T), a the cosine
   affinity (a_{t,t} = 1), u the routing frequency share (+1e-12); apply_plan combines
   expert weights and router rows with these w.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from raymoe.methods.budget import Budget
from raymoe.methods.common import (MethodConfig, StatsError, build_plan, per_layer_share, probe_subset,
                                   router_bias, single_thread, top_n)
from raymoe.moe.routing import RoutingRule, route
from raymoe.plan.schema import MergeGroup, PrunePlan
from raymoe.store.schema import CalibStats

__all__ = ["CPrune", "CPruneMerge", "CPruneConfig", "CPruneMergeConfig", "size_factor", "gram", "ward_labels",
           "merge_groups"]


class CPruneConfig(MethodConfig):
    features: Literal["auto", "outputs", "mean_output", "weights"] = Field(
        "auto", description="expert representation (auto: outputs when weights are there, else mean_output)")
    clusters_frac: float = Field(0.2, gt=0, lt=1, description="layer-wise clusters C_l = frac * E_l")
    batches: int = Field(4, ge=1, description="voting batches over the probe tokens")
    max_tokens: int = Field(64, ge=1, description="probe tokens per layer")
    rank_by: Literal["centroid", "router"] = Field("centroid", description="order of members inside a cluster")
    global_frac: float = Field(0.5, gt=0, le=1, description="global clusters as a fraction of layer-wise ones")
    redundancy_penalty: float = Field(0.5, ge=0, le=1, description="importance cut for redundant clusters")
    max_layer_ratio: float = Field(0.9, gt=0, lt=1, description="most a layer may lose (global)")
    seed: int = Field(0, description="probe-token sampling seed")
    progress: bool = Field(False, description="progress bar over layers")


class CPruneMergeConfig(CPruneConfig):
    temperature: float = Field(0.1, gt=0, description="softmax temperature over affinities")


def size_factor(p: float) -> float:
    """c(p) for a cluster holding a fraction p of the layer's experts."""
    return 0.5 + 0.6 * (math.exp(0.5 - p) - 1.0 / (1.0 + math.exp(1.0 - 2.0 * p)))


def gram(feats: torch.Tensor) -> torch.Tensor:
    """Inner products of representation rows [N, D] -> [N, N] (float64)."""
    f = feats.double()
    return f @ f.T


def ward_labels(g: torch.Tensor, n_clusters: int) -> np.ndarray:
    """Ward clustering (scipy) of the points with Gram matrix g [N, N] into at most n_clusters labels 0..C-1.

    Euclidean distances come from the Gram matrix, d_ij^2 = g_ii + g_jj - 2 g_ij.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    N = g.shape[0]
    if n_clusters >= N:
        return np.arange(N)
    sq = torch.diagonal(g)
    dist = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0).sqrt().numpy()  # [N, N]
    np.fill_diagonal(dist, 0.0)
    dist = (dist + dist.T) / 2
    labels = fcluster(linkage(squareform(dist, checks=False), method="ward"), t=n_clusters, criterion="maxclust")
    return labels - 1


def _vote(g: torch.Tensor, router: np.ndarray, labels: np.ndarray, ratio: float, rank_by: str) -> np.ndarray:
    """1 for the members each cluster keeps in this batch, else 0 -> [E] (g: Gram matrix of the batch)."""
    E = len(labels)
    gd = g.numpy()
    votes = np.zeros(E)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 3:
            votes[members] = 1
            continue
        n = int(size_factor(len(members) / E) * (1 - ratio) * len(members))
        if rank_by == "router":
            order = members[np.lexsort((members, -router[members]))]
        else:  # ||f_i - centroid||^2 = g_ii - 2 mean_j g_ij + mean_jk g_jk
            sub = gd[np.ix_(members, members)]
            d = np.diagonal(sub) - 2 * sub.mean(1) + sub.mean()
            order = members[np.lexsort((members, d))]
        votes[order[:n]] = 1
    return votes


def _representations(stats: CalibStats, weights, layer: int, cfg: CPruneConfig):
    """(per-batch Gram matrices [E, E], per-batch router shares [E], phi [E, D]).

    For `outputs`, batch b's features are the outputs on its tokens concatenated, so
    its Gram matrix is sum_{t in b} F_t F_t^T (F_t = [f_e(x_t)]_e, [E, H]).
    """
    s = stats.layers[layer]
    share = per_layer_share(s.prob_mass)
    mode = cfg.features if cfg.features != "auto" else ("outputs" if weights is not None else "mean_output")
    if mode != "mean_output" and weights is None:
        raise StatsError(f"c-prune features={mode!r} needs the expert weights")
    if mode == "mean_output":
        phi = torch.as_tensor(np.asarray(s.mean_output), dtype=torch.float64)  # [E, H]
        return [gram(phi)], [share], phi
    if mode == "weights":
        phi = torch.stack([weights.flat(layer, e).double() for e in range(s.num_experts)])  # [E, P]
        return [gram(phi)], [share], phi
    x = probe_subset(stats, layer, cfg.max_tokens, cfg.seed)  # [T, H]
    with torch.no_grad():
        outs = weights.outputs(layer, x).float()  # [T, E, H]
        per_token = torch.bmm(outs, outs.transpose(1, 2)).double()  # [T, E, E]
        probs, _, _ = route(RoutingRule.for_spec(weights.spec), x @ weights.router(layer).float().T,
                            router_bias(weights, layer))  # [T, E]
    grams, scores = [], []
    for b in np.array_split(np.arange(len(x)), min(cfg.batches, len(x))):
        grams.append(per_token[b].sum(0))  # [E, E]
        scores.append(probs[b].double().mean(0).numpy())
    return grams, scores, outs.mean(0).double()


def merge_groups(keep: list[int], labels: np.ndarray, phi: torch.Tensor, usage: np.ndarray,
                 temperature: float) -> tuple[list[MergeGroup], np.ndarray]:
    """Fold removed experts into kept ones; returns (groups, affinity of each expert to its target)."""
    unit = torch.nn.functional.normalize(phi.double(), dim=1)
    cos = (unit @ unit.T).numpy()  # [E, E]
    E = len(labels)
    target_of = {t: t for t in keep}
    for e in range(E):
        if e in target_of:
            continue
        same = [t for t in keep if labels[t] == labels[e]]
        pool = same or keep
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


def cprune(stats: CalibStats, weights, budget: Budget, cfg: CPruneConfig):
    """Shared by both variants: (keep, scores, labels, phi) per layer."""
    with single_thread():
        return _cprune(stats, weights, budget, cfg)


def _cprune(stats: CalibStats, weights, budget: Budget, cfg: CPruneConfig):
    votes, router, labels, phi = {}, {}, {}, {}
    for l in tqdm(stats.moe_layers, desc="c-prune: layers", disable=not cfg.progress):
        E = stats.layers[l].num_experts
        C = min(E - 1, max(2, round(cfg.clusters_frac * E)))
        grams, scores, phi[l] = _representations(stats, weights, l, cfg)  # per batch [E, E], [E]; [E, D]
        v = sum(_vote(gb, sc, ward_labels(gb, C), budget.ratio, cfg.rank_by) for gb, sc in zip(grams, scores))
        router[l] = per_layer_share(np.mean(scores, axis=0))
        votes[l] = v / len(grams) + 1e-3 * router[l]  # votes decide, router share breaks ties
        labels[l] = ward_labels(gram(phi[l]), C)
    table = {l: {"votes": votes[l], "router_share": router[l], "cluster": labels[l].astype(float)}
             for l in stats.moe_layers}
    if budget.uniform:
        counts = budget.uniform_counts()
        return {l: top_n(votes[l], counts[l]) for l in votes}, table, labels, phi
    # global stage: layer-wise clusters are the units of a cross-layer Ward clustering
    units, emb, imp = [], [], []
    for l in stats.moe_layers:
        unit_phi = torch.nn.functional.normalize(phi[l].double(), dim=1)
        for c in np.unique(labels[l]):
            members = np.flatnonzero(labels[l] == c)
            units.append((l, members))
            emb.append(unit_phi[members].mean(0))
            imp.append(router[l][members].sum())
    if len({e.shape[0] for e in emb}) != 1:
        raise StatsError("c-prune global stage needs representations of one width in every layer")
    glabels = ward_labels(gram(torch.stack(emb)), max(1, round(cfg.global_frac * len(units))))
    unified = {l: votes[l].copy() for l in votes}
    redundant = {l: np.zeros(len(votes[l])) for l in votes}
    for g in np.unique(glabels):
        idx = np.flatnonzero(glabels == g)
        best = max(idx, key=lambda i: (imp[i], -i))
        for i in idx:
            if i != best:
                l, members = units[i]
                redundant[l][members] = 1.0
                unified[l][members] *= 1.0 - cfg.redundancy_penalty
    # the cap per layer, relaxed to the uniform share where the ratio itself exceeds it
    g = budget.n_group
    floors = {l: min(math.ceil((1 - cfg.max_layer_ratio) * e), g * math.floor((1 - budget.ratio) * e / g))
              for l, e in budget.experts.items()}
    counts = budget.counts_from_scores(unified, floors=floors)
    for l in table:
        table[l] |= {"unified": unified[l], "redundant": redundant[l]}
    return {l: top_n(unified[l], counts[l]) for l in unified}, table, labels, phi


class CPrune:
    name: ClassVar[str] = "c-prune"
    summary: ClassVar[str] = "layer-wise Ward clustering with voting, then global cluster pruning (C-Prune)"
    weights: ClassVar[str] = "optional"
    Config = CPruneConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: CPruneConfig) -> PrunePlan:
        keep, table, _, _ = cprune(stats, weights, budget, config)
        return build_plan(self.name, config, stats, budget, keep, table)


class CPruneMerge:
    name: ClassVar[str] = "c-prune-merge"
    summary: ClassVar[str] = "C-Prune, removed experts merged into their cluster's kept expert (affinity softmax)"
    weights: ClassVar[str] = "optional"
    Config = CPruneMergeConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: CPruneMergeConfig) -> PrunePlan:
        keep, table, labels, phi = cprune(stats, weights, budget, config)
        merges = {}
        for l in keep:
            usage = per_layer_share(stats.layers[l].counts)
            merges[l], aff = merge_groups(keep[l], labels[l], phi[l], usage, config.temperature)
            table[l]["affinity_to_target"] = aff
        return build_plan(self.name, config, stats, budget, keep, table, merges)
