"""Figures behind C-GNN-PRUNE's design choices, on any statistics (a stats store, or synthetic ones).

    .venv/bin/python -m raymoe.methods.cgnn_measure                 # synthetic 16 / 64 / 128 experts
    .venv/bin/python -m raymoe.methods.cgnn_measure --stats STATS   # a stored calibration (e.g. the testbed's)

Per statistics set, median over layers of
- corr(J_ij, u_i u_j) and corr(coact_ij, u_i u_j) over pairs i < j (Jaccard vs positive PMI);
- corr(cos(z_i, z_j), u_i u_j) and corr(cos(z_i, z_j), -|rank u_i - rank u_j|) of the GCN
  embeddings (is popularity the embedding?) for the graph and features before (Jaccard, usage
  features), with usage features only, and the default;
and, at each ratio (global and uniform allocation): importance kept vs plain top-n
(sum of I over the kept set / sum over the top n_l, cgnn_select.importance_kept; mean and min over
layers) for the default community target and for one community per kept slot
(community_ratio = 1), and how many kept experts differ from the plain top-n (what structure decides).
"""

from __future__ import annotations

import argparse

import numpy as np

from raymoe.methods import make_plan
from raymoe.methods.cgnn_graph import coactivation, interaction_graph, jaccard, knn_mask, node_features, \
    rank_feature, train_gae
from raymoe.methods.cgnn_select import importance_kept
from raymoe.methods.common import top_n
from raymoe.store.calib_stats import CalibStats

__all__ = ["popularity_correlations", "embedding_usage_correlation", "selection_figures", "synthetic_sets"]


def popularity_correlations(stats: CalibStats) -> tuple[float, float]:
    """Median over layers of corr(Jaccard, u u) and corr(coact, u u) over pairs i < j."""
    cj, cp = [], []
    for s in stats.layers.values():
        iu = np.triu_indices(s.num_experts, 1)
        uu = np.outer(s.usage, s.usage)[iu]
        cj.append(np.corrcoef(jaccard(s)[iu], uu)[0, 1])
        cp.append(np.corrcoef(coactivation(s)[iu], uu)[0, 1])
    return float(np.nanmedian(cj)), float(np.nanmedian(cp))


def embedding_usage_correlation(stats: CalibStats, usage_features: bool, graph: str = "ppmi",
                                epochs: int = 100) -> tuple[float, float, float]:
    """How much the GCN embeddings encode popularity, over pairs i < j (medians over layers):
    (corr(cos(z_i, z_j), u_i u_j), corr(cos(z_i, z_j), -|rank u_i - rank u_j|), final / initial loss).
    graph "jaccard" builds the interaction graph with the Jaccard index instead of positive PMI
    (the measure before positive PMI, for comparison)."""
    graphs = []
    for s in stats.layers.values():
        w = interaction_graph(s, 0.5)  # [E, E]
        if graph == "jaccard":
            w = 0.5 * np.clip(s.funcsim, 0, None) + 0.5 * jaccard(s)
            w = (w + w.T) / 2
            np.fill_diagonal(w, 0.0)
        graphs.append((node_features(s, 8, usage_features), w * knn_mask(w, 16), w))
    history: list[float] = []
    z = train_gae(graphs, hidden=32, dim=16, epochs=epochs, lr=0.01, seed=0, history=history)
    c_uu, c_rank = [], []
    for zl, s in zip(z, stats.layers.values()):
        zn = zl / np.maximum(np.linalg.norm(zl, axis=1, keepdims=True), 1e-12)  # [E, dim]
        iu = np.triu_indices(s.num_experts, 1)
        cos = (zn @ zn.T)[iu]
        rank = rank_feature(s.usage)
        c_uu.append(np.corrcoef(cos, np.outer(s.usage, s.usage)[iu])[0, 1])
        c_rank.append(np.corrcoef(cos, -np.abs(rank[:, None] - rank[None, :])[iu])[0, 1])
    return float(np.nanmedian(c_uu)), float(np.nanmedian(c_rank)), history[-1] / history[0]


def selection_figures(stats: CalibStats, ratio: float, uniform: bool, options: dict | None = None) -> dict:
    """Importance kept vs top-n (mean, min over layers) and kept experts differing from top-n."""
    plan = make_plan(stats, "c-gnn-prune", ratio, uniform=uniform, options=options)
    kept, differ, total = [], 0, 0
    for lp in plan.layers:
        imp = np.asarray(lp.scores["importance"])
        kept.append(importance_kept(lp.keep, imp))
        differ += len(set(lp.keep) - set(top_n(imp, len(lp.keep))))
        total += len(lp.keep)
    return {"mean": float(np.mean(kept)), "min": float(np.min(kept)), "differ": differ, "kept": total}


def synthetic_sets() -> dict[str, CalibStats]:
    from raymoe.methods.synthetic import synthetic_stats

    def cfg(E: int, k: int, L: int) -> dict:
        return dict(model_type="qwen2_moe", num_hidden_layers=L, num_experts=E, num_experts_per_tok=k,
                    norm_topk_prob=False, hidden_size=64, moe_intermediate_size=16,
                    shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[], hidden_act="silu")

    return {f"synthetic {E} x top-{k}, {L} layers": synthetic_stats(cfg(E, k, L), sequences=32, seq_len=32,
                                                                     probe_tokens=32)
            for E, k, L in [(16, 4, 12), (64, 8, 6), (128, 8, 4)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stats", help="a stats store directory (default: synthetic statistics)")
    p.add_argument("--ratios", default="0.25,0.5")
    args = p.parse_args(argv)
    if args.stats:
        from raymoe.store import load_stats

        sets = {args.stats: load_stats(args.stats)}
    else:
        sets = synthetic_sets()
    for name, stats in sets.items():
        cj, cp = popularity_correlations(stats)
        print(f"## {name}\ncorr with u_i u_j (median over layers): Jaccard {cj:.2f}, positive PMI {cp:.2f}")
        print("embeddings, corr of cos(z_i, z_j) with u_i u_j / with -|rank u_i - rank u_j| (median over layers):")
        for label, usage, graph in (("Jaccard graph + usage features (before)", True, "jaccard"),
                                    ("PMI graph + usage features", True, "ppmi"),
                                    ("PMI graph + functional features (default)", False, "ppmi")):
            a, b, loss = embedding_usage_correlation(stats, usage, graph)
            print(f"- {label}: {a:.2f} / {b:.2f}; auto-encoder loss final/initial {loss:.2f}")
        print("| ratio | allocation | target | importance kept mean | min | kept != top-n |\n|---|---|---|---|---|---|")
        for ratio in (float(r) for r in args.ratios.split(",")):
            for uniform in (False, True):
                for label, opts in (("ceil(n/2)", {}), ("n (ratio 1)", {"community_ratio": 1.0})):
                    f = selection_figures(stats, ratio, uniform, opts)
                    print(f"| {ratio} | {'uniform' if uniform else 'global'} | {label} | {f['mean']:.3f} | "
                          f"{f['min']:.3f} | {f['differ']} / {f['kept']} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
