"""Paired comparisons on constructed rows: differences from the best, Bonferroni intervals, ties."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from raymoe.eval.uncertainty import z_value
from raymoe.report.build import lower_better
from raymoe.report.paired import paired_table

pytestmark = pytest.mark.unit


def _row(variant, method, ratio, correct):
    correct = np.asarray(correct, dtype=float)
    return {"variant": variant, "method": method, "ratio": ratio, "task": "piqa", "metric": "acc",
            "value": float(correct.mean()), "items": list(range(correct.size)), "item_num": correct.tolist(),
            "item_den": [1.0] * correct.size, "transform": "mean"}


def test_paired_table_names_real_differences_and_ties():
    rng = np.random.default_rng(0)
    n = 400
    best = rng.random(n) < 0.8
    close = best.copy()
    close[rng.choice(n, 4, replace=False)] = False  # 1 point worse on 4 items: a tie
    far = best & (rng.random(n) < 0.6)  # much worse
    prim = pl.DataFrame([_row("a", "m1", 0.5, best), _row("b", "m2", 0.5, close), _row("c", "m3", 0.5, far),
                         _row("u", "unpruned", None, np.ones(n))])
    table = {r["variant"]: r for r in paired_table(prim, lower_better)}
    assert set(table) == {"b", "c"} and all(r["best"] == "a" for r in table.values())
    assert table["b"]["diff"] == pytest.approx(close.mean() - best.mean())
    assert table["b"]["verdict"] == "tie" and table["c"]["verdict"] == "worse"
    assert table["c"]["z"] == pytest.approx(z_value(2))  # two comparisons at this ratio
    assert table["c"]["lo"] == pytest.approx(table["c"]["diff"] - table["c"]["z"] * table["c"]["se"])


def test_lower_is_better_picks_the_smallest():
    rows = []
    for v, shift in (("a", 0.0), ("b", 0.5)):
        r = _row(v, v, 0.25, np.ones(50))
        r.update(task="kld:wiki_heldout", metric="kld_mean", item_num=(np.full(50, 1.0 + shift)).tolist(),
                 value=1.0 + shift)
        rows.append(r)
    (only,) = paired_table(pl.DataFrame(rows), lower_better)
    assert only["best"] == "a" and only["diff"] == pytest.approx(0.5) and only["verdict"] == "worse"
