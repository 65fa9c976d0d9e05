"""Method quality on the testbed: every registered method at 25% and 50% expert removal.

    python bench/quality.py [--items 100] [--ppl-docs 40] [--seeds 0 1 2] [--out results/quality]

The testbed (SmolLM2-135M MoEfied, `raymoe testbed`) is calibrated once on the
calibration split of the wiki text (`wiki_calib`); each method's plan at each
ratio is applied and scored, beside the unpruned MoE, on held-out wiki
perplexity (`wiki_heldout_ppl`: articles the calibration split does not
contain; lm-eval word perplexity), ARC-Easy and PIQA (lm-eval `acc`, first
`--items` validation items). `random` runs once per seed and its row is the seeds' mean.

This is a sweep (`raymoe.sweep.run_sweep`), so it is resumable and shares the
calibration cache; the table is derived from the sweep's `results.parquet`:

    retained = mean over tasks t in {arc_easy, piqa} of acc_t(variant) / acc_t(unpruned)
    ppl / unpruned = wiki_ppl(variant) / wiki_ppl(unpruned)

Writes `<out>/quality.parquet` (one row per variant, random's seeds included)
and `<out>/quality.md`, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import polars as pl

ACC_TASKS = ("arc_easy", "piqa")
PPL = ("wiki_heldout_ppl", "word_perplexity")


def sweep_spec(args: argparse.Namespace):
    from raymoe.methods import method_names
    from raymoe.sweep.spec import SweepSpec

    methods = [{"name": m, **({"seeds": args.seeds} if m == "random" else {})} for m in method_names()]
    return SweepSpec.model_validate({
        "name": "quality", "model": "testbed",
        "calibration": {"data": "wiki_calib", "samples": args.samples, "seq_len": args.seq_len, "stages": 1},
        "methods": methods, "ratios": args.ratios,
        "eval": {"tasks": [PPL[0], *ACC_TASKS], "limit": args.items, "limits": {PPL[0]: args.ppl_docs},
                 "backend": args.backend, "workers": 1},
        "resources": {"num_cpus": 4}, "output": str(args.out),
    })


def quality_table(results: pl.DataFrame) -> pl.DataFrame:
    """results.parquet rows -> one row per variant: method, ratio, seed, ppl, accuracies, retained."""
    keep = [(PPL[0], PPL[1], "wiki_ppl")] + [(t, "acc", f"{t}_acc") for t in ACC_TASKS]
    parts = [results.filter((pl.col("task") == t) & (pl.col("metric") == m)).select("variant", pl.col("value").alias(c))
             for t, m, c in keep]
    wide = parts[0]
    for p in parts[1:]:
        wide = wide.join(p, on="variant", how="full", coalesce=True)
    meta = results.select("variant", "method", "ratio").unique("variant")
    wide = wide.join(meta, on="variant")
    base = wide.filter(pl.col("variant") == "unpruned")
    if base.height != 1:
        raise SystemExit("error: the results hold no unpruned row to compare against")
    retained = sum(pl.col(f"{t}_acc") / base[f"{t}_acc"][0] for t in ACC_TASKS) / len(ACC_TASKS)
    ppl_ratio = pl.col("wiki_ppl") / base["wiki_ppl"][0]
    seed = pl.col("variant").str.extract(r"seed=(\d+)").cast(pl.Int64)
    return (wide.with_columns(retained.alias("retained"), ppl_ratio.alias("ppl_ratio"), seed.alias("seed"),
                              pl.col("method").fill_null("unpruned"), pl.col("ratio").fill_null(0.0))
            .select("method", "ratio", "seed", "variant", "wiki_ppl", "ppl_ratio", *(f"{t}_acc" for t in ACC_TASKS),
                    "retained")
            .sort("ratio", "method", "seed"))


def markdown(table: pl.DataFrame) -> str:
    """Per (method, ratio): random's seeds averaged (± their standard deviation); best perplexity first."""
    cols = ["wiki_ppl", "ppl_ratio", *(f"{t}_acc" for t in ACC_TASKS), "retained"]
    agg = (table.group_by("method", "ratio")
           .agg(*(pl.col(c).mean() for c in cols), *(pl.col(c).std().alias(f"{c}_sd") for c in cols), pl.len().alias("runs"))
           .sort("ratio", "wiki_ppl"))
    lines = ["| removed | method | wiki ppl (held-out) | ppl / unpruned | ARC-Easy acc | PIQA acc | retained acc |",
             "|---|---|---|---|---|---|---|"]
    for r in agg.iter_rows(named=True):
        def cell(c: str, fmt: str) -> str:
            sd = f" ± {r[c + '_sd']:{fmt}}" if r["runs"] > 1 and r[c + "_sd"] is not None else ""
            return f"{r[c]:{fmt}}{sd}"
        name = r["method"] + (f" (mean of {r['runs']} seeds)" if r["runs"] > 1 else "")
        lines.append(f"| {r['ratio']:.0%} | {name} | {cell('wiki_ppl', '.1f')} | {cell('ppl_ratio', '.2f')} | "
                     f"{cell('arc_easy_acc', '.3f')} | "
                     f"{cell('piqa_acc', '.3f')} | {cell('retained', '.1%')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100, help="ARC-Easy and PIQA items (the first N of validation)")
    ap.add_argument("--ppl-docs", type=int, default=40, help="held-out wiki articles for perplexity")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random baseline")
    ap.add_argument("--samples", type=int, default=64, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=256, help="calibration window length")
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--out", type=Path, default=Path("results/quality"))
    args = ap.parse_args()
    if args.items < 1 or args.ppl_docs < 1:
        print("error: --items and --ppl-docs must be positive", file=sys.stderr)
        return 2
    from raymoe.sweep.runner import run_sweep
    from raymoe.io import atomic_write_parquet, atomic_write_text

    t0 = time.perf_counter()
    run_dir = run_sweep(sweep_spec(args))
    table = quality_table(pl.read_parquet(run_dir / "results.parquet"))
    atomic_write_parquet(run_dir / "quality.parquet", table)
    md = (f"Testbed quality: ARC-Easy/PIQA first {args.items} items, held-out wiki {args.ppl_docs} articles, "
          f"calibration wiki_calib {args.samples}x{args.seq_len}; this invocation took {time.perf_counter() - t0:.0f} s "
          "(a resumed sweep counts only the steps it ran).\n\n"
          + markdown(table))
    atomic_write_text(run_dir / "quality.md", md)
    print(md)
    print(f"wrote {run_dir / 'quality.parquet'} and {run_dir / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
