"""The report's main table: every variant's headline metrics with 95% intervals, retention and serving cost.

Columns per variant: method, ratio, sparsity; routed-expert and total parameters
and checkpoint bytes (from the shard headers); per task its headline metric as
value ± 1.96 x stderr (fidelity tasks first, then perplexities, then
accuracies), and `acc_norm` beside `acc` where the task defines it;
*mean acc retained* = mean over accuracy tasks of acc / acc_unpruned;
*above-chance retained* = mean over accuracy tasks of
(acc - chance) / (acc_unpruned - chance), chance = mean over items of 1 / choices.
"""

from __future__ import annotations

import polars as pl

from raymoe.eval.uncertainty import Z95

__all__ = ["task_order", "main_table"]


def task_order(tasks: list[str], metric_of: dict[str, str], lower_better) -> list[str]:
    """Fidelity tasks first, then lower-is-better metrics (perplexities), then accuracies."""
    def key(t):
        return (0 if t.startswith("kld:") else 1 if lower_better(metric_of[t]) else 2, t)

    return sorted(tasks, key=key)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['value']:.4g}" + (f" ± {Z95 * row['stderr']:.2g}" if row["stderr"] is not None else "")


def _count(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _lookup(df: pl.DataFrame) -> dict:
    return {(r["variant"], r["task"], r["metric"]): r for r in
            df.select("variant", "task", "metric", "value", "stderr", "chance").iter_rows(named=True)}


def main_table(df: pl.DataFrame, prim: pl.DataFrame, tasks: list[str], metric_of: dict[str, str]) -> str:
    at = _lookup(df)
    acc_tasks = [t for t in tasks if metric_of[t] == "acc"]
    norm_tasks = [t for t in acc_tasks if any(k[1] == t and k[2] == "acc_norm" for k in at)]
    base = prim.filter(pl.col("method") == "unpruned")["variant"].to_list()
    base = base[0] if base else None
    variants = prim.group_by("variant").agg(
        pl.col("method").first(), pl.col("ratio").first(), pl.col("sparsity").first(),
        pl.col("params_routed").first(), pl.col("params_total").first(), pl.col("checkpoint_bytes").first(),
        pl.col("virtual").first(),
    ).sort(["sparsity", "method", "variant"])
    head = (["variant", "method", "ratio", "sparsity", "routed params", "total params", "checkpoint"]
            + [f"{t} ({metric_of[t]})" for t in tasks] + [f"{t} (acc_norm)" for t in norm_tasks]
            + ["mean acc retained", "above-chance retained"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants.iter_rows(named=True):
        name = v["variant"]
        cells = [_cell(at.get((name, t, metric_of[t]))) for t in tasks]
        cells += [_cell(at.get((name, t, "acc_norm"))) for t in norm_tasks]
        retained, above = [], []
        for t in acc_tasks:
            mine, ref = at.get((name, t, "acc")), at.get((base, t, "acc")) if base else None
            if mine is None or ref is None:
                continue
            if ref["value"]:
                retained.append(mine["value"] / ref["value"])
            chance = ref.get("chance")
            if chance is not None and ref["value"] > chance:
                above.append((mine["value"] - chance) / (ref["value"] - chance))
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.2f}"
        pct = lambda xs: f"{100 * sum(xs) / len(xs):.1f}%" if xs else "-"  # noqa: E731
        nbytes = v["checkpoint_bytes"]
        size = "-" if nbytes is None else f"{nbytes / 2**20:.0f} MiB"
        if v["virtual"]:  # scored on the masked source: quality only, the size is what the plan would write
            size += " (virtual)"
        lines.append("| " + " | ".join([name, v["method"], ratio, f"{v['sparsity']:.2f}", _count(v["params_routed"]),
                                        _count(v["params_total"]), size, *cells, pct(retained), pct(above)]) + " |")
    return "\n".join(lines)
