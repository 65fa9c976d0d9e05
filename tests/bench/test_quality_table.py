"""bench/quality.py's table: retained accuracy against a direct computation; random's seeds averaged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.unit

_spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parents[2] / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)

ACC = {"unpruned": (0.60, 0.70), "reap@0.5": (0.45, 0.63), "random@0.5[seed=0]": (0.30, 0.56),
       "random@0.5[seed=1]": (0.36, 0.60)}
PPL = {"unpruned": 20.0, "reap@0.5": 31.0, "random@0.5[seed=0]": 60.0, "random@0.5[seed=1]": 50.0}


def results() -> pl.DataFrame:
    rows = []
    for v, (arc, piqa) in ACC.items():
        method = None if v == "unpruned" else v.split("@")[0]
        ratio = None if v == "unpruned" else 0.5
        for task, metric, value in (("arc_easy", "acc", arc), ("arc_easy", "acc_norm", 0.1), ("piqa", "acc", piqa),
                                    ("wiki_heldout_ppl", "word_perplexity", PPL[v]),
                                    ("wiki_heldout_ppl", "bits_per_byte", 1.0)):
            rows.append({"variant": v, "method": method, "ratio": ratio, "task": task, "metric": metric, "value": value})
    return pl.DataFrame(rows)


def test_retained_is_the_mean_accuracy_ratio_to_unpruned():
    table = quality.quality_table(results())
    got = {r["variant"]: r for r in table.iter_rows(named=True)}
    for v, (arc, piqa) in ACC.items():
        assert got[v]["retained"] == pytest.approx((arc / 0.60 + piqa / 0.70) / 2)
        assert got[v]["wiki_ppl"] == PPL[v] and got[v]["arc_easy_acc"] == arc
        assert got[v]["ppl_ratio"] == pytest.approx(PPL[v] / 20.0)
    assert got["random@0.5[seed=1]"]["seed"] == 1 and got["reap@0.5"]["seed"] is None
    assert got["unpruned"]["method"] == "unpruned" and got["unpruned"]["retained"] == pytest.approx(1.0)


def test_markdown_averages_random_seeds_and_ranks_by_perplexity():
    md = quality.markdown(quality.quality_table(results()))
    lines = [ln for ln in md.splitlines() if ln.startswith("| 50%")]
    assert [ln.split(" | ")[1] for ln in lines] == ["reap", "random (mean of 2 seeds)"]
    assert "55.0 ± 7.1" in lines[1]  # mean and sample sd of 60 and 50
    assert "0.330 ± 0.042" in lines[1]


def test_missing_unpruned_row_is_an_error():
    with pytest.raises(SystemExit, match="no unpruned row"):
        quality.quality_table(results().filter(pl.col("variant") != "unpruned"))
