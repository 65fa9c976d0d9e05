"""Layer x expert heatmaps of a plan's scores (e.g. Pathfinder's path frequencies, Figure 2 of the paper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raymoe.plan.prune_plan import PrunePlan

__all__ = ["score_matrix", "save_heatmap"]


def score_matrix(plan: PrunePlan, score: str) -> np.ndarray:
    """[MoE layers, max E] matrix of one score (NaN where a layer has fewer experts)."""
    width = max(lp.num_experts for lp in plan.layers)
    out = np.full((len(plan.layers), width), np.nan)
    for i, lp in enumerate(sorted(plan.layers, key=lambda lp: lp.layer)):
        if score not in lp.scores:
            raise KeyError(f"layer {lp.layer} of the plan has no score {score!r} (has: {sorted(lp.scores)})")
        out[i, :lp.num_experts] = lp.scores[score]
    return out


def save_heatmap(plan: PrunePlan, score: str, prefix: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Write `{prefix}.npy` (the matrix) and `{prefix}.png` (matplotlib, Agg); kept experts are outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    mat = score_matrix(plan, score)  # [L, E]
    npy, png = prefix.with_suffix(".npy"), prefix.with_suffix(".png")
    tmp = npy.with_name(f".{npy.name}.tmp.npy")
    np.save(tmp, mat, allow_pickle=False)
    tmp.replace(npy)
    layers = sorted(plan.layers, key=lambda lp: lp.layer)
    fig, ax = plt.subplots(figsize=(min(2 + mat.shape[1] * 0.12, 24), min(1.5 + mat.shape[0] * 0.18, 18)))
    im = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest")
    kept = np.array([[i, e] for i, lp in enumerate(layers) for e in lp.keep])
    if len(kept) and mat.size <= 4096:
        ax.scatter(kept[:, 1], kept[:, 0], s=6, c="white", marker="s", linewidths=0)
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_yticks(range(len(layers)), [str(lp.layer) for lp in layers], fontsize=6)
    ax.set_title(title or f"{plan.method}: {score} (ratio {plan.ratio})")
    fig.colorbar(im, ax=ax, label=score)
    fig.tight_layout()
    tmp_png = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp_png, dpi=110)
    plt.close(fig)
    tmp_png.replace(png)
    return npy, png
