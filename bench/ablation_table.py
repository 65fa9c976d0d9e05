"""The seed-method ablation table from a sweep's results (jobs/ablation.yaml): each switch against the full method.

    .venv/bin/python bench/ablation_table.py [results/ablation/results.parquet] [--task kld:wiki_heldout]

For every (method, ratio): the full method's mean KLD and top-1 agreement with 95% intervals, and
each ablated variant's paired difference from the full method on the same documents
(raymoe.eval.uncertainty.paired_difference), with a Bonferroni-corrected 95% interval over the
switches of that (method, ratio). "helps": switching the module off raises the KLD beyond the
interval; "hurts": lowers it; "tie": the interval contains 0.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def main() -> int:
    import polars as pl

    from raymoe.eval.uncertainty import ItemScores, paired_difference, z_value

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, default=Path("results/ablation/results.parquet"))
    ap.add_argument("--task", default="kld:wiki_heldout")
    args = ap.parse_args()
    df = pl.read_parquet(args.results).filter(pl.col("task") == args.task)
    rows = {(r["variant"], r["metric"]): r for r in df.iter_rows(named=True)}
    variants = sorted({v for v, _ in rows if v != "unpruned"})
    z95 = z_value(1)
    print("| method | ratio | switched off | kld_mean (95%) | top-1 agreement (95%) | "
          "difference from full (Bonferroni 95%) | module |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        m = re.match(r"(.+?)@([0-9.]+)(?:\[(.*)\])?$", v)
        method, ratio, switch = m.group(1), m.group(2), m.group(3)
        if switch:
            continue
        group = [u for u in variants if u.startswith(f"{method}@{ratio}[")]
        z = z_value(max(len(group), 1))
        for u in [v, *group]:
            k, a = rows[(u, "kld_mean")], rows[(u, "top1_agree")]
            cells = [method, ratio, re.search(r"\[(.*)\]", u).group(1) if u != v else "(full)",
                     f"{k['value']:.4f} ± {z95 * k['stderr']:.4f}", f"{a['value']:.3f} ± {z95 * a['stderr']:.3f}"]
            if u == v:
                cells += ["", ""]
            else:
                sc = [ItemScores.of(x["items"], x["item_num"], x["item_den"], x["transform"])
                      for x in (k, rows[(v, "kld_mean")])]
                d, se, _ = paired_difference(*sc)
                lo, hi = d - z * se, d + z * se
                verdict = "tie" if lo <= 0 <= hi else ("helps" if lo > 0 else "hurts")
                cells += [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]", verdict]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
