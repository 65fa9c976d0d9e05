"""Paired comparisons: each variant's difference from the best one, on the items both were scored on.

For every task whose headline metric carries per-item sums (raymoe.eval.items),
the pruned variants at the same removal ratio are compared with the best of
them (lowest KLD / perplexity, highest accuracy). A difference d = value(v) -
value(best) gets a paired-bootstrap standard error (the same resampled items
for both, raymoe.eval.uncertainty) and an interval d +- z * se with
Bonferroni's z for the m comparisons of that (task, ratio): overall 95%
coverage. An interval that contains 0 is a tie: the report does not rank those.
"""

from __future__ import annotations

import polars as pl

from raymoe.eval.uncertainty import ItemScores, paired_difference, z_value

__all__ = ["paired_table", "paired_markdown"]


def _scores(row: dict) -> ItemScores | None:
    if not row.get("items") or not row.get("transform"):
        return None
    return ItemScores.of(row["items"], row["item_num"], row["item_den"], row["transform"])


def paired_table(prim: pl.DataFrame, lower_better, *, alpha: float = 0.05, seed: int = 0) -> list[dict]:
    """Rows {task, metric, ratio, variant, best, diff, se, lo, hi, z, comparisons, verdict}."""
    out = []
    pruned = prim.filter((pl.col("method") != "unpruned") & pl.col("ratio").is_not_null())
    for (task, ratio), group in sorted(pruned.group_by(["task", "ratio"]), key=lambda kv: (kv[0][0], kv[0][1])):
        rows = [r for r in group.iter_rows(named=True) if _scores(r) is not None]
        if len(rows) < 2:
            continue
        low = lower_better(rows[0]["metric"])
        best = (min if low else max)(rows, key=lambda r: r["value"])
        others = [r for r in rows if r["variant"] != best["variant"]]
        z = z_value(len(others), alpha)
        for r in sorted(others, key=lambda r: r["variant"]):
            diff, se, n = paired_difference(_scores(r), _scores(best), seed=seed)
            lo, hi = diff - z * se, diff + z * se
            out.append({"task": task, "metric": r["metric"], "ratio": ratio, "variant": r["variant"],
                        "best": best["variant"], "diff": diff, "se": se, "lo": lo, "hi": hi, "z": z, "n": n,
                        "comparisons": len(others), "verdict": "tie" if lo <= 0 <= hi else "worse"})
    return out


def paired_markdown(table: list[dict]) -> str:
    if not table:
        return "No task had two or more pruned variants at one ratio with per-item scores to pair."
    lines = ["| task | ratio | variant | best | difference | interval | items | verdict |", "|---" * 8 + "|"]
    for r in table:
        lines.append(f"| {r['task']} ({r['metric']}) | {r['ratio']:g} | {r['variant']} | {r['best']} | "
                     f"{r['diff']:+.4g} | [{r['lo']:+.3g}, {r['hi']:+.3g}] | {r['n']} | {r['verdict']} |")
    zs = sorted({(r["comparisons"], round(r["z"], 3)) for r in table})
    note = "; ".join(f"m = {m}: z = {z}" for m, z in zs)
    return "\n".join(lines) + ("\n\nIntervals are Bonferroni-corrected for the m comparisons of each (task, ratio) "
                               f"({note}), so each family of intervals has 95% joint coverage. *tie*: the "
                               "interval contains 0 and the two are not ranked.")

