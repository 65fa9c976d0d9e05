"""`raymoe report RESULTS`: Markdown and PNG plots from a run's Parquet results.

Inputs: `RESULTS/results.parquet` (raymoe.eval.results.SCHEMA rows) and, when
present, the stats store the run calibrated (`RESULTS/stats` link or the path
in `RESULTS/run.json`). Outputs under `RESULTS/report/`:
  report.md                 table of every variant against the unpruned model
  accuracy_vs_sparsity.png  primary metric per task vs expert sparsity, a line per method
  kept_experts.png          kept routed experts per layer, a line per variant
  importance_heatmap.png    layer x expert importance (usage share, REAP) from the statistics
Sparsity = 1 - routed experts kept / routed experts of the unpruned model.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from raymoe.errors import RaymoeError
from raymoe.io import atomic_write_text

__all__ = ["build_report", "primary_metrics", "PRIMARY"]

#: metric preference per task: the first present is the task's headline number
PRIMARY = ("acc", "exact_match,strict-match", "exact_match", "word_perplexity", "perplexity", "token_perplexity",
           "bits_per_byte")
LOWER_IS_BETTER = ("perplexity", "bits_per_byte")
MARKERS = "osD^vP*Xh<>"


def _lower_better(metric: str) -> bool:
    return any(k in metric for k in LOWER_IS_BETTER)


def primary_metrics(df: pl.DataFrame) -> pl.DataFrame:
    """One row per (variant, task): the task's headline metric, with sparsity and method columns."""
    chosen = {}
    for task in df["task"].unique().to_list():
        metrics = set(df.filter(pl.col("task") == task)["metric"].to_list())
        pick = next((m for m in PRIMARY if m in metrics), sorted(metrics)[0])
        chosen[task] = pick
    keep = pl.DataFrame({"task": list(chosen), "metric": list(chosen.values())})
    out = df.join(keep, on=["task", "metric"])
    full = out.filter(pl.col("method").is_null() | (pl.col("method") == "unpruned"))["experts_total"]
    total = int(full.max()) if full.len() else int(out["experts_total"].max())
    return out.with_columns(
        (1.0 - pl.col("experts_total") / total).alias("sparsity"),
        pl.col("method").fill_null("unpruned"),
    )


def _plot_accuracy(prim: pl.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(prim["task"].unique().to_list())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    base = prim.filter(pl.col("method") == "unpruned")
    for ax, task in zip(axes[0], tasks):
        t = prim.filter(pl.col("task") == task)
        metric = t["metric"][0]
        methods = sorted(m for m in t["method"].unique().to_list() if m != "unpruned")
        for i, method in enumerate(methods):  # distinct markers, hollow: equal values stay visible
            m = t.filter(pl.col("method") == method).group_by("sparsity").agg(pl.col("value").mean()).sort("sparsity")
            ax.plot(m["sparsity"].to_list(), m["value"].to_list(), marker=MARKERS[i % len(MARKERS)], mfc="none",
                    ms=7, label=method)
        b = base.filter(pl.col("task") == task)
        if b.height:
            ax.axhline(b["value"][0], color="k", ls="--", lw=1, label="unpruned")
        ax.set_title(f"{task} ({metric}{', lower is better' if _lower_better(metric) else ''})", fontsize=9)
        ax.set_xlabel("expert sparsity")
        if _lower_better(metric):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_kept(df: pl.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _plot_heatmap(stats_dir: Path, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from raymoe.store import load_stats

    stats = load_stats(stats_dir)
    layers = stats.moe_layers
    width = max(stats.layers[l].num_experts for l in layers)
    panels = {"usage share": lambda s: s.usage, "REAP saliency": lambda s: s.reap}
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.25 * len(layers) + 2.2))
    for ax, (title, fn) in zip(axes, panels.items()):
        grid = np.full((len(layers), width), np.nan)
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


def _table(prim: pl.DataFrame) -> str:
    tasks = sorted(prim["task"].unique().to_list())
    base = {r["task"]: r["value"] for r in prim.filter(pl.col("method") == "unpruned").iter_rows(named=True)}
    variants = prim.group_by("variant").agg(pl.col("method").first(), pl.col("ratio").first(),
                                            pl.col("sparsity").first()).sort(["sparsity", "method", "variant"])
    head = "| variant | method | ratio | sparsity | " + " | ".join(
        f"{t} ({prim.filter(pl.col('task') == t)['metric'][0]})" for t in tasks) + " | mean acc retained |"
    lines = [head, "|" + "---|" * (5 + len(tasks))]
    for v in variants.iter_rows(named=True):
        cells, retained = [], []
        for t in tasks:
            row = prim.filter((pl.col("variant") == v["variant"]) & (pl.col("task") == t))
            if not row.height:
                cells.append("-")
                continue
            val, metric = row["value"][0], row["metric"][0]
            err = row["stderr"][0]
            cells.append(f"{val:.4g}" + (f" ± {err:.2g}" if err is not None else ""))
            if not _lower_better(metric) and base.get(t):
                retained.append(val / base[t])
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.2f}"
        kept = f"{100 * sum(retained) / len(retained):.1f}%" if retained else "-"
        lines.append(f"| {v['variant']} | {v['method']} | {ratio} | {v['sparsity']:.2f} | "
                     + " | ".join(cells) + f" | {kept} |")
    return "\n".join(lines)


def build_report(results: str | Path, stats_dir: str | Path | None = None) -> Path:
    """Write the report for a run directory (or a results .parquet file); return the report.md path."""
    results = Path(results)
    run_dir = results.parent if results.suffix == ".parquet" else results
    parquet = results if results.suffix == ".parquet" else results / "results.parquet"
    if not parquet.is_file():
        raise RaymoeError(f"no results at {parquet} (run `raymoe run` or `raymoe eval` first)")
    df = pl.read_parquet(parquet)
    if not df.height:
        raise RaymoeError(f"{parquet} holds no result rows")
    if stats_dir is None and (run_dir / "run.json").is_file():
        stats_dir = json.loads((run_dir / "run.json").read_text()).get("stats")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    prim = primary_metrics(df)
    _plot_accuracy(prim, out / "accuracy_vs_sparsity.png")
    _plot_kept(df, out / "kept_experts.png")
    heat = stats_dir is not None and Path(stats_dir).is_dir() and _plot_heatmap(Path(stats_dir), out / "importance_heatmap.png")
    run = df["run"][0]
    md = [f"# raymoe report: {run}", "",
          f"{df['variant'].n_unique()} variants x {df['task'].n_unique()} tasks, backend "
          f"{', '.join(sorted(df['backend'].unique().to_list()))}; source model "
          f"`{df['source_model'].drop_nulls()[0] if df['source_model'].drop_nulls().len() else '?'}`.", "",
          "## Variants against the unpruned model", "",
          "Headline metric per task (± stderr as lm-eval reports it); *mean acc retained* averages "
          "value / unpruned value over the accuracy tasks.", "", _table(prim), "",
          "## Plots", "", "![accuracy vs sparsity](accuracy_vs_sparsity.png)", "",
          "![kept experts per layer](kept_experts.png)", ""]
    if heat:
        md += ["![expert importance](importance_heatmap.png)", ""]
    return atomic_write_text(out / "report.md", "\n".join(md))
