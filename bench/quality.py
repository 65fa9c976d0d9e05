"""Method quality on the healed testbed: every registered method at 25%, 50% and 62.5% expert removal.

    python bench/quality.py [--unhealed] [--piqa-items 1100] [--calib-seeds 0 1 2] [--out results/quality]
    python bench/quality.py --acc-ratios 0.5 --piqa-items 500   # accuracy at 50% only (the 2-core budget)
    python bench/quality.py --dry-run        # print the sweeps and their variant counts, run nothing

The testbed (SmolLM2-135M MoEfied and healed by distillation from the dense model,
`raymoe testbed --heal`; `--unhealed` uses the unhealed build) is calibrated on the
calibration split of the wiki text (`wiki_calib`); each method's plan at each ratio
(75% would leave exactly top_k = 4 experts per layer, where every method routes the
same) is applied and scored beside the unpruned MoE on fidelity to it
(`kld:wiki_heldout`, mean KL on held-out articles), held-out wiki word perplexity
(`wiki_heldout_ppl`), ARC-Easy and PIQA (`acc`). `random` runs with 3 seeds. The
calibration seed is varied (`--calib-seeds`) for the three seed methods and the two
best peers at 50% by KL (chosen from the first calibration seed's sweep): one extra
sweep per further seed, 50% only.

Every cell is value ± 95% half-width (1.96 x the row's standard error); for `random`
the seeds' mean ± their standard deviation. A difference of two methods is called
significant when |d| > 1.96 sqrt(se_a^2 + se_b^2) (unpaired, conservative).
Each sweep (`raymoe.sweep.run_sweep`) is resumable and shares the testbed and
calibration caches. Writes `<out>/quality.parquet` (one row per variant and
calibration seed) and `<out>/quality.md`, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import polars as pl

Z95 = 1.96
SEED_METHODS = ("c-gnn-prune", "c-prune", "pathfinder")
#: (task, metric, column): the table's columns, KL first (it leads the ranking)
METRICS = (("kld:wiki_heldout", "kld_mean", "kld"), ("wiki_heldout_ppl", "word_perplexity", "wiki_ppl"),
           ("arc_easy", "acc", "arc_easy_acc"), ("piqa", "acc", "piqa_acc"))
COLS = [c for _, _, c in METRICS]
FIDELITY_TASKS = ("kld:wiki_heldout", "wiki_heldout_ppl")


def sweep_spec(args: argparse.Namespace, *, methods: list[str], ratios: list[float], calib_seed: int, out: Path,
               accuracy: bool = True):
    """One resumable sweep; `accuracy=False` scores the fidelity columns only (KL, perplexity)."""
    from raymoe.sweep.sweep_spec import SweepSpec

    tasks = [t for t, _, _ in METRICS if accuracy or t in FIDELITY_TASKS]
    limits = {"kld:wiki_heldout": args.kld_docs, "wiki_heldout_ppl": args.ppl_docs,
              "arc_easy": args.arc_items, "piqa": args.piqa_items}

    grid = [{"name": m, **({"seeds": args.seeds} if m == "random" else {})} for m in methods]
    return SweepSpec.model_validate({
        "name": out.name, "model": "testbed",
        "testbed": {} if args.unhealed else {"heal": {}},
        "calibration": {"data": "wiki_calib", "samples": args.samples, "seq_len": args.seq_len, "stages": 1,
                        "seed": calib_seed},
        "methods": grid, "ratios": ratios,
        "eval": {"tasks": tasks, "limits": {t: limits[t] for t in tasks},
                 "backend": args.backend, "workers": args.workers},
        "resources": {"num_cpus": 4}, "output": str(out),
    })


def quality_table(results: pl.DataFrame, calib_seed: int = 0) -> pl.DataFrame:
    """results.parquet rows -> one row per variant: method, ratio, seed, each metric and its stderr, ratios to unpruned."""
    parts = []
    for task, metric, col in METRICS:
        sel = results.filter((pl.col("task") == task) & (pl.col("metric") == metric))
        se = pl.col("stderr") if "stderr" in results.columns else pl.lit(None, dtype=pl.Float64)
        parts.append(sel.select("variant", pl.col("value").alias(col), se.cast(pl.Float64).alias(f"{col}_se")))
    wide = parts[0]
    for p in parts[1:]:
        wide = wide.join(p, on="variant", how="full", coalesce=True)
    wide = wide.join(results.select("variant", "method", "ratio").unique("variant"), on="variant")
    base = wide.filter(pl.col("variant") == "unpruned")
    if base.height != 1:
        raise SystemExit("error: the results hold no unpruned row to compare against")
    seed = pl.col("variant").str.extract(r"seed=(\d+)").cast(pl.Int64)
    return (wide.with_columns((pl.col("wiki_ppl") / base["wiki_ppl"][0]).alias("ppl_ratio"), seed.alias("seed"),
                              pl.lit(calib_seed).alias("calib_seed"),
                              pl.col("method").fill_null("unpruned"), pl.col("ratio").fill_null(0.0))
            .select("method", "ratio", "seed", "calib_seed", "variant", *(c for col in COLS for c in (col, f"{col}_se")),
                    "ppl_ratio")
            .sort("ratio", "method", "seed"))


def _agg(table: pl.DataFrame) -> pl.DataFrame:
    """Per (method, ratio) of calibration seed 0: mean, and the spread (seeds' sd, else 1.96 x se) of each column."""
    t = table.filter(pl.col("calib_seed") == table["calib_seed"].min())
    return (t.group_by("method", "ratio")
            .agg(*(pl.col(c).mean() for c in COLS), *(pl.col(c).std().alias(f"{c}_sd") for c in COLS),
                 *(pl.col(f"{c}_se").mean() for c in COLS), pl.len().alias("runs"))
            .sort("ratio", "kld", nulls_last=True))


def significant(a: float, se_a: float | None, b: float, se_b: float | None) -> bool:
    """|a - b| > 1.96 sqrt(se_a^2 + se_b^2); False when an error is unknown."""
    if se_a is None or se_b is None:
        return False
    return abs(a - b) > Z95 * math.sqrt(se_a ** 2 + se_b ** 2)


def markdown(table: pl.DataFrame) -> str:
    """The table (best KL first per ratio), then per ratio which methods differ significantly from the best."""
    agg = _agg(table)
    lines = ["| removed | method | KL to unpruned (held-out) | wiki ppl (held-out) | ARC-Easy acc | PIQA acc |",
             "|---|---|---|---|---|---|"]
    fmt = {"kld": ".3f", "wiki_ppl": ".1f", "arc_easy_acc": ".3f", "piqa_acc": ".3f"}
    for r in agg.iter_rows(named=True):
        def cell(c: str) -> str:
            if r[c] is None:
                return ""
            if r["runs"] > 1 and r[f"{c}_sd"] is not None:
                return f"{r[c]:{fmt[c]}} ± {r[c + '_sd']:{fmt[c]}} (sd)"
            return f"{r[c]:{fmt[c]}}" + (f" ± {Z95 * r[c + '_se']:{fmt[c]}}" if r[c + "_se"] is not None else "")
        name = r["method"] + (f" (mean of {r['runs']} seeds)" if r["runs"] > 1 else "")
        lines.append(f"| {r['ratio']:.1%} | {name} | " + " | ".join(cell(c) for c in COLS) + " |")
    lines.append("")
    for ratio in sorted(set(agg.filter(pl.col("ratio") > 0)["ratio"])):
        rows = agg.filter((pl.col("ratio") == ratio) & pl.col("kld").is_not_null()).to_dicts()
        if len(rows) < 2:
            continue
        best = rows[0]
        worse = [r["method"] for r in rows[1:] if significant(r["kld"], r["kld_se"], best["kld"], best["kld_se"])]
        lines.append(f"- {ratio:.1%}: lowest KL {best['method']}; significantly higher KL: "
                     + (", ".join(worse) if worse else "none"))
    spread = (table.filter(pl.col("ratio") == 0.5).group_by("method")
              .agg(pl.col("calib_seed").n_unique().alias("seeds"), pl.col("kld").std().alias("sd"),
                   pl.col("kld").mean().alias("mean"))
              .filter(pl.col("seeds") > 1).sort("method"))
    for r in spread.iter_rows(named=True):
        lines.append(f"- calibration seed at 50%, {r['method']}: KL {r['mean']:.3f}, sd {r['sd']:.3f} over "
                     f"{r['seeds']} seeds")
    return "\n".join(lines) + "\n"


def main() -> int:
    from raymoe.methods import method_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unhealed", action="store_true", help="use the unhealed testbed build")
    ap.add_argument("--arc-items", type=int, default=570, help="ARC-Easy items (570: the whole validation split)")
    ap.add_argument("--piqa-items", type=int, default=1100, help="PIQA items (>= 1060 gives a 95%% half-width <= 0.03)")
    ap.add_argument("--kld-docs", type=int, default=40, help="held-out wiki articles for the KL")
    ap.add_argument("--ppl-docs", type=int, default=40, help="held-out wiki articles for perplexity")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.625])
    ap.add_argument("--acc-ratios", type=float, nargs="*", default=None,
                    help="ratios also scored on ARC-Easy and PIQA (default: every ratio); the others get KL and "
                         "perplexity only, as do the extra calibration seeds unless --seed-accuracy")
    ap.add_argument("--seed-accuracy", action="store_true", help="score the extra calibration seeds on accuracy too")
    ap.add_argument("--workers", type=int, default=2, help="eval workers (one CPU each)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random baseline")
    ap.add_argument("--calib-seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration seeds (first: full grid)")
    ap.add_argument("--samples", type=int, default=64, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=256, help="calibration window length")
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--dry-run", action="store_true", help="print the sweeps and run nothing")
    ap.add_argument("--out", type=Path, default=Path("results/quality"))
    args = ap.parse_args()
    if min(args.arc_items, args.piqa_items, args.kld_docs, args.ppl_docs, args.samples, args.workers) < 1:
        print("error: --arc-items, --piqa-items, --kld-docs, --ppl-docs, --samples and --workers must be positive",
              file=sys.stderr)
        return 2
    acc_ratios = args.ratios if args.acc_ratios is None else args.acc_ratios
    if not set(acc_ratios) <= set(args.ratios):
        print("error: --acc-ratios must be a subset of --ratios", file=sys.stderr)
        return 2
    other_ratios = [r for r in args.ratios if r not in acc_ratios]
    from raymoe.atomic import atomic_write_parquet, atomic_write_text
    from raymoe.sweep.pipeline import run_sweep

    t0 = time.perf_counter()
    first, *more = args.calib_seeds
    spec = sweep_spec(args, methods=method_names(), ratios=acc_ratios or args.ratios, calib_seed=first, out=args.out,
                      accuracy=bool(acc_ratios))
    if args.dry_run:
        extra = len(SEED_METHODS) + 2
        print(f"{spec.name}: {len(spec.methods)} methods x ratios {spec.ratios} (random x {len(args.seeds)}) on "
              f"{spec.eval.tasks}, calibration seed {first}"
              + (f"; then ratios {other_ratios} on KL and perplexity" if acc_ratios and other_ratios else "")
              + f"; then {len(more)} sweeps of {extra} methods at 50%")
        return 0
    run_dir = run_sweep(spec)
    tables = [quality_table(pl.read_parquet(run_dir / "results.parquet"), first)]
    if acc_ratios and other_ratios:
        out = args.out.with_name(f"{args.out.name}-fidelity")
        d = run_sweep(sweep_spec(args, methods=method_names(), ratios=other_ratios, calib_seed=first, out=out,
                                 accuracy=False))
        tables.append(quality_table(pl.read_parquet(d / "results.parquet"), first).filter(pl.col("ratio") > 0))
    at_half = tables[0].filter((pl.col("ratio") == 0.5) & ~pl.col("method").is_in([*SEED_METHODS, "random"]))
    peers = at_half.sort("kld")["method"].head(2).to_list()
    for cs in more:
        out = args.out.with_name(f"{args.out.name}-calib{cs}")
        d = run_sweep(sweep_spec(args, methods=[*SEED_METHODS, *peers], ratios=[0.5], calib_seed=cs, out=out,
                                 accuracy=args.seed_accuracy))
        tables.append(quality_table(pl.read_parquet(d / "results.parquet"), cs))
    table = pl.concat(tables)
    atomic_write_parquet(run_dir / "quality.parquet", table)
    md = (f"Testbed quality ({'unhealed' if args.unhealed else 'healed'}): KL on {args.kld_docs} and perplexity on "
          f"{args.ppl_docs} held-out wiki articles, ARC-Easy {args.arc_items} and PIQA {args.piqa_items} items "
          f"(at ratios {acc_ratios}), "
          f"calibration wiki_calib {args.samples}x{args.seq_len} (seeds {args.calib_seeds}; peers varied: {peers}); "
          f"this invocation took {time.perf_counter() - t0:.0f} s (a resumed sweep counts only the steps it ran).\n\n"
          + markdown(table))
    atomic_write_text(run_dir / "quality.md", md)
    print(md)
    print(f"wrote {run_dir / 'quality.parquet'} and {run_dir / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
