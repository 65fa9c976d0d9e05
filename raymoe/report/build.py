"""`raymoe report RESULTS`: Markdown and PNG plots from a run's Parquet results.

Inputs: `RESULTS/results.parquet` (raymoe.eval.results.SCHEMA rows) and, when
present, the stats store the run calibrated (`RESULTS/stats` link or the path
in `RESULTS/run.json`). Outputs under `RESULTS/report/`:
  report.md                 the main table (raymoe.report.tables) with 95% intervals, then the paired
                            comparisons (raymoe.report.paired) that say which differences are real
  accuracy_vs_sparsity.png  headline metric per task vs expert sparsity, a line per method, 95% error bars
  kept_experts.png          kept routed experts per layer, a line per variant
  importance_heatmap.png    layer x expert importance (usage share, REAP) from the statistics
Sparsity = 1 - routed experts kept / routed experts of the unpruned model.
Fidelity to the unpruned model (`kld:<corpus>`, mean KL divergence) leads when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from raymoe.errors import RaymoeError
from raymoe.eval.results import conform
from raymoe.atomic import atomic_write_text
from raymoe.report.paired import paired_markdown, paired_table
from raymoe.report.plots import plot_heatmap, plot_kept, plot_metrics
from raymoe.report.tables import main_table, task_order

__all__ = ["build_report", "primary_metrics", "PRIMARY", "lower_better"]

#: metric preference per task: the first present is the task's headline number
PRIMARY = ("kld_mean", "acc", "exact_match,strict-match", "exact_match", "word_perplexity", "perplexity",
           "token_perplexity", "bits_per_byte")
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "kld")


def lower_better(metric: str) -> bool:
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


def build_report(results: str | Path, stats_dir: str | Path | None = None) -> Path:
    """Write the report for a run directory (or a results .parquet file); return the report.md path."""
    results = Path(results)
    run_dir = results.parent if results.suffix == ".parquet" else results
    parquet = results if results.suffix == ".parquet" else results / "results.parquet"
    if not parquet.is_file():
        raise RaymoeError(f"no results at {parquet} (run `raymoe run` or `raymoe eval` first)")
    df = conform(pl.read_parquet(parquet))  # older files lack the newer columns: nulls
    if not df.height:
        raise RaymoeError(f"{parquet} holds no result rows")
    if stats_dir is None and (run_dir / "run.json").is_file():
        stats_dir = json.loads((run_dir / "run.json").read_text()).get("stats")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    prim = primary_metrics(df)
    metric_of = {t: prim.filter(pl.col("task") == t)["metric"][0] for t in prim["task"].unique().to_list()}
    tasks = task_order(list(metric_of), metric_of, lower_better)
    plot_metrics(prim, out / "accuracy_vs_sparsity.png", tasks, lower_better)
    plot_kept(df, out / "kept_experts.png")
    heat = (stats_dir is not None and Path(stats_dir).is_dir()
            and plot_heatmap(Path(stats_dir), out / "importance_heatmap.png"))
    run = df["run"][0]
    missing_se = df.filter(pl.col("stderr").is_null() | ~pl.col("stderr").is_finite()).height
    md = [f"# raymoe report: {run}", "",
          f"{df['variant'].n_unique()} variants x {df['task'].n_unique()} tasks, backend "
          f"{', '.join(sorted(df['backend'].unique().to_list()))}; source model "
          f"`{df['source_model'].drop_nulls()[0] if df['source_model'].drop_nulls().len() else '?'}`."
          + (f" {missing_se} rows have no standard error." if missing_se else ""), "",
          "## Variants against the unpruned model", "",
          "Headline metric per task, ± the 95% half-width (1.96 x stderr: lm-eval's for accuracies, a bootstrap "
          "over documents for perplexities and KL divergence). `kld:<corpus>`: mean per-token KL(unpruned || "
          "variant) in nats on held-out windows, lower is better. *above-chance retained* = "
          "(acc - chance) / (acc_unpruned - chance), averaged over the accuracy tasks. Parameters and bytes are "
          "the checkpoint's; *(virtual)* marks a variant scored on the source model with its removed experts "
          "masked out of routing (no checkpoint written; the figures are those of the checkpoint its plan "
          "would produce): it measures quality only, serving speed and memory need a materialised "
          "checkpoint.", "", main_table(df, prim, tasks, metric_of), "",
          "## Which differences are real", "",
          "Each pruned variant against the best one at the same ratio, paired on the items (documents, "
          "questions) both were scored on.", "", paired_markdown(paired_table(prim, lower_better)), "",
          "## Plots", "", "![metrics vs sparsity](accuracy_vs_sparsity.png)", "",
          "![kept experts per layer](kept_experts.png)", ""]
    if heat:
        md += ["![expert importance](importance_heatmap.png)", ""]
    return atomic_write_text(out / "report.md", "\n".join(md))
