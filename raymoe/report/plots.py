"""Report plots: headline metric vs expert sparsity with 95% intervals, kept experts, importance heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from raymoe.eval.uncertainty import Z95

__all__ = ["plot_metrics", "plot_kept", "plot_heatmap", "MARKERS"]

MARKERS = "osD^vP*Xh<>"


def _group_interval(values: np.ndarray, ses: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean over variants of one (method, sparsity) (e.g. random seeds):
    sqrt(between-variant variance / n + mean within-variant se^2 / n)."""
    n = values.size
    between = float(np.var(values, ddof=1)) if n > 1 else 0.0
    return float(values.mean()), float(np.sqrt(between / n + float(np.mean(ses ** 2)) / n))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(prim: pl.DataFrame, out: Path, tasks: list[str], lower_better) -> None:
    """One panel per task (in `tasks` order): a line per method, 95% error bars, the unpruned model dashed.

    Several variants of one method at one sparsity (seeds) are drawn as their mean with
    `_group_interval`'s standard error."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    base = prim.filter(pl.col("method") == "unpruned")
    for ax, task in zip(axes[0], tasks):
        t = prim.filter(pl.col("task") == task)
        metric = t["metric"][0]
        methods = sorted(m for m in t["method"].unique().to_list() if m != "unpruned")
        for i, method in enumerate(methods):  # distinct markers, hollow: equal values stay visible
            m = t.filter(pl.col("method") == method)
            xs, ys, errs = [], [], []
            for (s,), g in sorted(m.group_by(["sparsity"]), key=lambda kv: kv[0][0]):
                mean, se = _group_interval(g["value"].to_numpy(), g["stderr"].fill_null(0.0).to_numpy())
                xs.append(s), ys.append(mean), errs.append(Z95 * se)
            dodge = 0.006 * (i - (len(methods) - 1) / 2)  # side by side, so overlapping intervals stay readable
            ax.errorbar([x + dodge for x in xs], ys, yerr=errs, marker=MARKERS[i % len(MARKERS)], mfc="none", ms=7,
                        capsize=3, label=method)
        b = base.filter(pl.col("task") == task)
        if b.height:
            v, se = b["value"][0], b["stderr"][0] or 0.0
            ax.axhline(v, color="k", ls="--", lw=1, label="unpruned")
            if se > 0:
                ax.axhspan(v - Z95 * se, v + Z95 * se, color="k", alpha=0.08)
        low = lower_better(metric)
        ax.set_title(f"{task} ({metric}{', lower is better' if low else ''})", fontsize=9)
        ax.set_xlabel("expert sparsity (error bars: 95%)")
        if low and metric.endswith("perplexity"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_kept(df: pl.DataFrame, out: Path) -> None:
    plt = _plt()
    v = df.group_by("variant").agg(pl.col("method").first(), pl.col("ratio").first(),
                                   pl.col("experts_per_layer").first()).sort("variant")
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for row in v.iter_rows(named=True):
        counts = [c for c in (row["experts_per_layer"] or []) if c]
        if not counts:
            continue
        label = f"{row['method'] or 'unpruned'}" + (f" r={row['ratio']}" if row["ratio"] is not None else "")
        ax.plot(range(len(counts)), counts, marker=".", label=label)
    ax.set_xlabel("MoE layer (in order)")
    ax.set_ylabel("routed experts kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_heatmap(stats_dir: Path, out: Path) -> bool:
    from raymoe.store import load_stats

    plt = _plt()
    stats = load_stats(stats_dir)
    layers = stats.moe_layers
    width = max(stats.layers[l].num_experts for l in layers)
    panels = {"usage share": lambda s: s.usage, "REAP saliency": lambda s: s.reap}
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len(layers) + 2.2))
    for ax, (title, fn) in zip(axes, panels.items()):
        grid = np.full((len(layers), width), np.nan)  # [L, E]
        for i, l in enumerate(layers):
            vals = fn(stats.layers[l])
            grid[i, : len(vals)] = vals
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(f"{title} (layer x expert)", fontsize=9)
        ax.set_xlabel("expert")
        ax.set_ylabel("MoE layer")
        ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True
