"""The report: headline metrics, sparsity and retained accuracy against a direct computation; plots written."""

from __future__ import annotations

import re

import polars as pl
import pytest

from raymoe.errors import RaymoeError
from raymoe.eval.results import write_results
from raymoe.report import build_report, primary_metrics

pytestmark = pytest.mark.unit

# variant -> (method, ratio, experts_total, arc acc, piqa acc, ppl)
VARIANTS = {"unpruned": (None, None, 64, 0.50, 0.70, 20.0),
            "reap@0.5": ("reap", 0.5, 32, 0.40, 0.63, 30.0),
            "frequency@0.25": ("frequency", 0.25, 48, 0.45, 0.70, 24.0)}


def rows() -> list[dict]:
    out = []
    for v, (method, ratio, total, arc, piqa, ppl) in VARIANTS.items():
        for task, metric, value in (("arc_easy", "acc", arc), ("arc_easy", "acc_norm", 0.99), ("piqa", "acc", piqa),
                                    ("wiki_ppl", "word_perplexity", ppl), ("wiki_ppl", "bits_per_byte", 0.5)):
            out.append({"run": "t", "variant": v, "task": task, "metric": metric, "value": value, "stderr": 0.01,
                        "n": 10, "backend": "hf", "method": method, "ratio": ratio, "experts_total": total,
                        "experts_per_layer": [total // 4] * 4, "source_model": "/m"})
    return out


def test_headline_metrics_and_sparsity():
    prim = primary_metrics(pl.DataFrame(rows()))
    assert dict(prim.select("task", "metric").unique().iter_rows()) == {
        "arc_easy": "acc", "piqa": "acc", "wiki_ppl": "word_perplexity"}
    sparsity = dict(prim.select("variant", "sparsity").unique().iter_rows())
    assert sparsity == {"unpruned": 0.0, "reap@0.5": 0.5, "frequency@0.25": 0.25}


def test_report_table_and_plots(tmp_path):
    write_results(tmp_path / "results.parquet", rows())
    md = build_report(tmp_path).read_text()
    for v, (_, _, _, arc, piqa, ppl) in VARIANTS.items():
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {v} |"))
        retained = 100 * (arc / 0.50 + piqa / 0.70) / 2  # perplexity is not an accuracy: left out
        assert line.endswith(f"| {retained:.1f}% |"), line
        assert f"| {ppl:.4g} ± 0.01 |" in line
    for png in ("accuracy_vs_sparsity.png", "kept_experts.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({png})" in md
    assert not (tmp_path / "report" / "importance_heatmap.png").exists()  # no statistics given
    assert "importance_heatmap" not in md
    assert re.search(r"3 variants x 3 tasks, backend hf", md)


def test_missing_results_is_one_clear_error(tmp_path):
    with pytest.raises(RaymoeError, match="no results at .*results.parquet"):
        build_report(tmp_path)
