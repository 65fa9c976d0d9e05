"""C-Prune: layer-wise Ward clustering with voting, the authors' global stage, and the merge variant.

Guo et al., "Cluster-Driven Expert Pruning for Mixture-of-Experts LLMs"
(arXiv 2504.07807; authors' code Fighoture/MoE_unsupervised_pruning, `pruning_mask.py`).
Expert representation (`features`): `pooled` (the authors'): f_e(xbar_s^l), the
expert's output on each calibration sequence's pooled MoE input (mean over its
tokens, `LayerStats.pooled_inputs`); `outputs`: the outputs on probe tokens;
`mean_output`: the calibrated mean output (one sample); `weights`: the flat
weights (one sample). Samples (sequences, probe tokens) are split into `batches`
consecutive voting batches (the authors: 1000 sequences in batches of 16, about
60; here min(batches, samples)); batch b's feature of expert e concatenates its
outputs on the batch's samples, so its Gram matrix is sum_{s in b} F_s F_s^T.
1. Layer-wise. In every batch, Ward clustering (scipy) of the layer's experts
   into C_l = round(clusters_frac * E_l) clusters; clusters of size < 3 keep all
   members, a cluster of size s keeps the floor(c(s / n) (1 - r1) s) members
   closest to its centroid (or highest router score), n the experts clustered,
   c(p) = 0.5 + 0.6 (e^{1/2 - p} - sigma(2p - 1)) the authors' size factor; each
   batch votes for the members it keeps. The least-voted experts go, r1 E_l of them
   (ties: lower router share).
2. Global (not `uniform`), as the authors' code: the survivors of every layer are
   re-clustered together in every batch (Ward, round(global_frac * U) clusters of
   the U survivors), voted again with the same rule, and the least voted are cut
   across layers until the budget holds, each layer losing at most max_layer_ratio
   of its experts (the authors' 0.9; relaxed to the uniform share where the ratio
   exceeds it). Choices where the authors' code does not carry over: the
   layer-wise stage removes `layerwise_share` of the removal (r1 = share * r) and
   the global stage the rest; c(p) takes p relative to the experts being clustered
   (the authors divide by E_l also in the global stage, where c(p) < 0 for
   clusters larger than 3.4 E_l and nobody in them gets a vote); the global stage
   votes over at most `global_batches` batches (default min(batches,
   floor(2e8 / U^2)): Ward is O(U^2) and costs ~4 s at U = 7424 here); features
   wider than `global_dim` are sketched per sample by one seeded Gaussian
   projection shared by all layers (distances kept to about sqrt(2 / global_dim)).
3. `c-prune-merge` (raymoe/methods/cprune_merge.py) merges the removed experts into the kept ones.
Group-limited routers keep the same count in every original group (`keep_balanced`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from raymoe.methods.budget import Budget
from raymoe.methods.common import (MethodConfig, StatsError, build_plan, keep_balanced, per_layer_share,
                                   probe_subset, router_bias, single_thread)
from raymoe.plan.prune_plan import PrunePlan
from raymoe.store.calib_stats import CalibStats

if TYPE_CHECKING:
    import torch

__all__ = ["CPrune", "CPruneConfig", "size_factor", "gram", "ward_labels", "vote", "cprune"]

GLOBAL_PAIRS = 2e8  # default budget of U^2 x global batches (Ward clusterings of all survivors)


class CPruneConfig(MethodConfig):
    features: Literal["auto", "pooled", "outputs", "mean_output", "weights"] = Field(
        "auto", description="expert representation (auto: pooled when weights are there, else mean_output)")
    clusters_frac: float = Field(0.2, gt=0, lt=1, description="layer-wise clusters C_l = frac * E_l")
    batches: int = Field(60, ge=1, description="voting batches over the calibration samples")
    max_tokens: int = Field(64, ge=1, description="probe tokens per layer (features=outputs)")
    rank_by: Literal["centroid", "router"] = Field("centroid", description="order of members inside a cluster")
    layerwise_share: float = Field(0.5, gt=0, le=1, description="share of the removal done layer-wise (global)")
    global_frac: float = Field(0.2, gt=0, lt=1, description="global clusters as a fraction of the survivors")
    global_batches: int | None = Field(None, ge=1, description="voting batches of the global stage "
                                       "(none: min(batches, 2e8 / survivors^2))")
    global_dim: int = Field(256, ge=1, description="per-sample feature width of the global stage (sketched)")
    max_layer_ratio: float = Field(0.9, gt=0, lt=1, description="most a layer may lose (global)")
    seed: int = Field(0, description="probe-token sampling and sketch seed")
    progress: bool = Field(False, description="progress bar over layers")


def size_factor(p: float) -> float:
    """c(p) for a cluster holding a fraction p of the experts clustered."""
    return 0.5 + 0.6 * (math.exp(0.5 - p) - 1.0 / (1.0 + math.exp(1.0 - 2.0 * p)))


def gram(feats: torch.Tensor) -> torch.Tensor:
    """Inner products of representation rows [N, D] -> [N, N] (float64)."""
    f = feats.double()
    return f @ f.T


def ward_labels(g: torch.Tensor, n_clusters: int) -> np.ndarray:
    """Ward clustering (scipy) of the points with Gram matrix g [N, N] into at most n_clusters labels 0..C-1.

    Euclidean distances come from the Gram matrix, d_ij^2 = g_ii + g_jj - 2 g_ij.
    """
    import torch

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


def vote(g: torch.Tensor, router: np.ndarray, labels: np.ndarray, ratio: float, rank_by: str) -> np.ndarray:
    """1 for the members each cluster keeps in this batch, else 0 -> [N] (g: Gram matrix of the batch)."""
    N = len(labels)
    gd = g.numpy()
    votes = np.zeros(N)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 3:
            votes[members] = 1
            continue
        n = int(size_factor(len(members) / N) * (1 - ratio) * len(members))
        if rank_by == "router":
            order = members[np.lexsort((members, -router[members]))]
        else:  # ||f_i - centroid||^2 = g_ii - 2 mean_j g_ij + mean_jk g_jk
            sub = gd[np.ix_(members, members)]
            d = np.diagonal(sub) - 2 * sub.mean(1) + sub.mean()
            order = members[np.lexsort((members, d))]
        votes[order[:max(n, 0)]] = 1
    return votes


def _features(stats: CalibStats, weights, layer: int, cfg: CPruneConfig):
    """(features [S, E, D] float32, router probabilities per sample [S, E]) of one layer."""
    import torch

    from raymoe.moe.routing import RoutingRule, route

    s = stats.layers[layer]
    mode = cfg.features if cfg.features != "auto" else ("pooled" if weights is not None else "mean_output")
    if mode != "mean_output" and weights is None:
        raise StatsError(f"c-prune features={mode!r} needs the expert weights")
    share = torch.as_tensor(per_layer_share(s.prob_mass))[None]  # [1, E]
    if mode == "mean_output":
        return torch.as_tensor(np.asarray(s.mean_output), dtype=torch.float32)[None], share
    if mode == "weights":
        return torch.stack([weights.flat(layer, e).float() for e in range(s.num_experts)])[None], share
    if mode == "pooled":
        if s.pooled_inputs is None or not len(s.pooled_inputs):
            raise StatsError(f"layer {layer} has no pooled inputs (calibrate again with this raymoe)")
        x = torch.as_tensor(np.asarray(s.pooled_inputs), dtype=torch.float32)  # [N, H]
    else:
        x = probe_subset(stats, layer, cfg.max_tokens, cfg.seed)  # [T, H]
    with torch.no_grad():
        outs = weights.outputs(layer, x).float()  # [S, E, H]
        probs, _, _ = route(RoutingRule.for_spec(weights.spec), x @ weights.router(layer).float().T,
                            router_bias(weights, layer))  # [S, E]
    return outs, probs.double()


def _batch_grams(feats: torch.Tensor, batches: int) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Per voting batch, the Gram matrix sum_{s in b} F_s F_s^T [E, E] (float64) and the sample indices."""
    import torch

    idx = np.array_split(np.arange(feats.shape[0]), min(batches, feats.shape[0]))
    return [torch.einsum("sed,sfd->ef", feats[b], feats[b]).double() for b in idx], idx


def _global_features(f: torch.Tensor, nb: int, cfg: CPruneConfig, proj: dict) -> torch.Tensor:
    """Per global batch b, the concatenation over its samples of f[s] [n, D]; sketched when wider than
    global_dim: sum_{s in b} f[s] R_s, R_s [D, global_dim] seeded Gaussian / sqrt(global_dim) per sample
    (= the concatenation times a block Gaussian matrix) -> [B_g, n, D']."""
    import torch

    S, n, D = f.shape
    out = []
    for b in np.array_split(np.arange(S), min(nb, S)):
        if len(b) * D <= cfg.global_dim:
            out.append(f[b].permute(1, 0, 2).reshape(n, len(b) * D))
            continue
        acc = torch.zeros(n, cfg.global_dim)
        for s in b.tolist():
            if s not in proj:
                gen = torch.Generator().manual_seed(cfg.seed * 100003 + s)
                proj[s] = torch.randn(D, cfg.global_dim, generator=gen) / math.sqrt(cfg.global_dim)
            acc += f[s] @ proj[s]  # [n, global_dim]
        out.append(acc)
    width = max(o.shape[1] for o in out)  # raw batches may differ by one sample: zero columns keep distances
    return torch.stack([torch.nn.functional.pad(o, (0, width - o.shape[1])) for o in out])


def cprune(stats: CalibStats, weights, budget: Budget, cfg: CPruneConfig):
    """Shared by both variants: (keep, scores, labels, phi) per layer."""
    with single_thread():
        return _cprune(stats, weights, budget, cfg)


def _round_to(x: float, g: int) -> int:
    return g * int(math.floor(x / g + 0.5))


def _cprune(stats: CalibStats, weights, budget: Budget, cfg: CPruneConfig):
    import torch

    g = budget.n_group
    r1 = budget.ratio if budget.uniform else budget.ratio * cfg.layerwise_share
    counts1 = budget.uniform_counts() if budget.uniform else {
        l: min(e, max(budget.floor, e - _round_to(r1 * e, g))) for l, e in budget.experts.items()}
    votes, router, labels, phi, keep1, sketch = {}, {}, {}, {}, {}, {}
    U = sum(counts1.values())  # survivors entering the global stage
    nb = cfg.global_batches or max(1, min(cfg.batches, int(GLOBAL_PAIRS // (U * U))))
    proj: dict[int, torch.Tensor] = {}  # sample -> its sketch matrix [D, global_dim], shared by all layers
    for l in tqdm(stats.moe_layers, desc="c-prune: layers", disable=not cfg.progress):
        E = stats.layers[l].num_experts
        C = min(E - 1, max(2, round(cfg.clusters_frac * E)))
        feats, probs = _features(stats, weights, l, cfg)  # [S, E, D], [S, E]
        grams, idx = _batch_grams(feats, cfg.batches)
        v = sum(vote(gb, probs[b].mean(0).numpy(), ward_labels(gb, C), r1, cfg.rank_by)
                for gb, b in zip(grams, idx))
        router[l] = per_layer_share(probs.mean(0).numpy())
        votes[l] = v / len(grams) + 1e-3 * router[l]  # votes decide, router share breaks ties
        phi[l] = feats.mean(0).double()  # [E, D]
        labels[l] = ward_labels(gram(phi[l]), C)
        keep1[l] = keep_balanced(votes[l], counts1[l], g)
        if not budget.uniform:  # survivors' per-batch features for the global stage
            sketch[l] = _global_features(feats[:, keep1[l]], nb, cfg, proj)  # [B_g, n1, D']
    table = {l: {"votes": votes[l], "router_share": router[l], "cluster": labels[l].astype(float)}
             for l in stats.moe_layers}
    if budget.uniform:
        return keep1, table, labels, phi
    return _global(stats, budget, cfg, votes, router, keep1, sketch, table), table, labels, phi


def _global(stats, budget: Budget, cfg: CPruneConfig, votes, router, keep1, sketch, table) -> dict[int, list[int]]:
    """The authors' global stage: re-cluster all survivors per batch, vote, cut the least voted globally."""
    import torch

    layers = stats.moe_layers
    owner = [(l, e) for l in layers for e in keep1[l]]  # unit u -> (layer, expert)
    U = len(owner)
    if len({sketch[l].shape[0] for l in layers}) != 1 or len({sketch[l].shape[-1] for l in layers}) != 1:
        raise StatsError("c-prune global stage needs the same samples and feature width in every layer")
    feats = torch.cat([sketch[l] for l in layers], dim=1)  # [B_g, U, D']
    shares = np.concatenate([router[l][keep1[l]] for l in layers])  # [U]
    r2 = max(0.0, 1 - budget.total / U)  # the global stage's removal rate over the survivors
    C = min(U - 1, max(2, round(cfg.global_frac * U)))
    grams, _ = _batch_grams(feats, len(feats))  # one Gram [U, U] per global batch
    gv = sum(vote(gb, shares, ward_labels(gb, C), r2, cfg.rank_by) for gb in grams) / len(grams)  # [U]
    unified = {l: np.full(len(votes[l]), -1.0) for l in layers}  # cut layer-wise: never kept again
    for u, (l, e) in enumerate(owner):
        unified[l][e] = gv[u] + 1e-3 * router[l][e]
    # the cap per layer, relaxed to the uniform share where the ratio itself exceeds it
    g = budget.n_group
    floors = {l: min(math.ceil((1 - cfg.max_layer_ratio) * e), g * math.floor((1 - budget.ratio) * e / g))
              for l, e in budget.experts.items()}
    counts = budget.counts_from_scores(unified, floors=floors)
    for l in layers:
        table[l] |= {"global_votes": unified[l], "layerwise_kept": np.isin(np.arange(len(votes[l])), keep1[l])
                     .astype(float), "global_batches": np.full(len(votes[l]), float(len(grams)))}
    return {l: keep_balanced(unified[l], counts[l], g) for l in layers}


class CPrune:
    name: ClassVar[str] = "c-prune"
    summary: ClassVar[str] = "layer-wise Ward clustering with voting, then global re-clustering of survivors (C-Prune)"
    weights: ClassVar[str] = "optional"
    Config = CPruneConfig

    def plan(self, stats: CalibStats, weights, budget: Budget, config: CPruneConfig) -> PrunePlan:
        keep, table, _, _ = cprune(stats, weights, budget, config)
        return build_plan(self.name, config, stats, budget, keep, table)
