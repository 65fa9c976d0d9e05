"""bench/quality.py's table: values and intervals against a direct computation; random's seeds averaged;
significance of KL differences; the calibration-seed spread."""

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
       "random@0.5[seed=1]": (0.36, 0.60), "frequency@0.5": (0.44, 0.62)}
PPL = {"unpruned": 20.0, "reap@0.5": 31.0, "random@0.5[seed=0]": 60.0, "random@0.5[seed=1]": 50.0,
       "frequency@0.5": 33.0}
KLD = {"unpruned": 0.0, "reap@0.5": 0.20, "random@0.5[seed=0]": 0.50, "random@0.5[seed=1]": 0.40,
       "frequency@0.5": 0.22}
SE = 0.02  # stderr of every KL row


def results(kld_shift: float = 0.0) -> pl.DataFrame:
    rows = []
    for v, (arc, piqa) in ACC.items():
        method = None if v == "unpruned" else v.split("@")[0]
        ratio = None if v == "unpruned" else 0.5
        for task, metric, value, se in (("arc_easy", "acc", arc, 0.02), ("arc_easy", "acc_norm", 0.1, 0.02),
                                        ("piqa", "acc", piqa, 0.01),
                                        ("wiki_heldout_ppl", "word_perplexity", PPL[v], 1.0),
                                        ("wiki_heldout_ppl", "bits_per_byte", 1.0, 0.1),
                                        ("kld:wiki_heldout", "kld_mean", KLD[v] + kld_shift * (v != "unpruned"), SE)):
            rows.append({"variant": v, "method": method, "ratio": ratio, "task": task, "metric": metric,
                         "value": value, "stderr": se})
    return pl.DataFrame(rows)


def test_table_holds_values_stderrs_and_ppl_ratio():
    table = quality.quality_table(results())
    got = {r["variant"]: r for r in table.iter_rows(named=True)}
    for v, (arc, piqa) in ACC.items():
        assert got[v]["wiki_ppl"] == PPL[v] and got[v]["arc_easy_acc"] == arc and got[v]["piqa_acc"] == piqa
        assert got[v]["kld"] == KLD[v] and got[v]["kld_se"] == SE and got[v]["piqa_acc_se"] == 0.01
        assert got[v]["ppl_ratio"] == pytest.approx(PPL[v] / 20.0)
    assert got["random@0.5[seed=1]"]["seed"] == 1 and got["reap@0.5"]["seed"] is None
    assert got["unpruned"]["method"] == "unpruned" and got["unpruned"]["calib_seed"] == 0


def test_markdown_averages_random_seeds_ranks_by_kl_and_marks_significance():
    md = quality.markdown(quality.quality_table(results()))
    lines = [ln for ln in md.splitlines() if ln.startswith("| 50.0%")]
    assert [ln.split(" | ")[1] for ln in lines] == ["reap", "frequency", "random (mean of 2 seeds)"]
    assert "55.0 ± 7.1 (sd)" in lines[2]  # mean and sample sd of 60 and 50
    assert "0.330 ± 0.042 (sd)" in lines[2]
    assert "0.200 ± 0.039" in lines[0]  # 1.96 x 0.02
    # 0.22 vs 0.20: |d| = 0.02 < 1.96 sqrt(2) 0.02 = 0.055 -> not significant; random 0.45 vs 0.20 is
    assert "- 50.0%: lowest KL reap; significantly higher KL: random" in md


def test_significance_rule():
    assert quality.significant(0.30, 0.02, 0.20, 0.02)  # 0.10 > 0.0554
    assert not quality.significant(0.25, 0.02, 0.20, 0.02)  # 0.05 < 0.0554
    assert not quality.significant(0.30, None, 0.20, 0.02)


def test_calibration_seed_spread_is_reported():
    table = pl.concat([quality.quality_table(results(), 0), quality.quality_table(results(0.02), 1)])
    md = quality.markdown(table)
    assert "- calibration seed at 50%, reap: KL 0.210, sd 0.014 over 2 seeds" in md
    assert md.count("| 50.0% | reap |") == 1  # the table shows calibration seed 0 only


def test_missing_unpruned_row_is_an_error():
    with pytest.raises(SystemExit, match="no unpruned row"):
        quality.quality_table(results().filter(pl.col("variant") != "unpruned"))
