"""Per-item scores from lm-eval's logged samples: what standard errors and paired differences need.

lm-eval returns aggregated metrics, and for corpus-level metrics (word/byte
perplexity, bits per byte) no standard error. With `log_samples=True` it also
returns each document's per-metric value: a number for means (acc, acc_norm,
exact_match) and a (log-likelihood, words or bytes) pair for perplexities.
`sample_items` turns those into `raymoe.eval.uncertainty` item scores (item id =
lm-eval's doc_id) and, for multiple-choice tasks, the chance accuracy
mean_i 1 / (choices of item i).
"""

from __future__ import annotations

from raymoe.eval.uncertainty import ItemScores, bootstrap_se

__all__ = ["sample_items", "attach_items"]

_TRANSFORM = {"word_perplexity": "exp_neg", "byte_perplexity": "exp_neg", "bits_per_byte": "neg_log2"}


def _metric_name(name: str, filt: str) -> str:
    return name if filt in ("", "none") else f"{name}[{filt}]"


def sample_items(samples: list[dict]) -> tuple[dict[str, ItemScores], float | None]:
    """lm-eval samples of one task -> ({metric: ItemScores}, chance accuracy or None)."""
    cols: dict[str, tuple[list, list, list]] = {}
    for ex in samples:
        for name in ex.get("metrics", []):
            value = ex.get(name)
            if isinstance(value, (tuple, list)) and len(value) == 2:
                num, den = float(value[0]), float(value[1])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                num, den = float(value), 1.0
            else:
                continue
            ids, nums, dens = cols.setdefault(_metric_name(name, ex.get("filter", "none")), ([], [], []))
            ids.append(int(ex["doc_id"]))
            nums.append(num)
            dens.append(den)
    items = {m: ItemScores.of(i, n, d, _TRANSFORM.get(m.split("[")[0], "mean")) for m, (i, n, d) in cols.items()}
    choices = [len(ex.get("arguments") or []) for ex in samples]
    chance = sum(1.0 / c for c in choices) / len(choices) if choices and min(choices) >= 2 else None
    return items, chance


def attach_items(rows: list[dict], samples: dict[str, list[dict]], *, iters: int = 1000, seed: int = 0) -> list[dict]:
    """Add item columns (items, item_num, item_den, transform, chance) to metric rows; fill a missing stderr.

    A row whose metric has per-item scores and no stderr from lm-eval (perplexities) gets the bootstrap
    standard error over documents."""
    per_task = {task: sample_items(s) for task, s in samples.items()}
    out = []
    for row in rows:
        items, chance = per_task.get(row["task"], ({}, None))
        sc = items.get(row["metric"])
        row = dict(row)
        if sc is not None:
            row.update(items=sc.items.tolist(), item_num=sc.num.tolist(), item_den=sc.den.tolist(),
                       transform=sc.transform)
            if row.get("stderr") is None:
                row["stderr"] = bootstrap_se(sc.num, sc.den, sc.transform, iters=iters, seed=seed)
        if chance is not None and row["metric"].split("[")[0] in ("acc", "acc_norm"):
            row["chance"] = chance
        out.append(row)
    return out
