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


CHANCE = {"arc_easy": 0.25, "piqa": 0.5}


def rows(stderr: float = 0.01) -> list[dict]:
    out = []
    for v, (method, ratio, total, arc, piqa, ppl) in VARIANTS.items():
        for task, metric, value in (("arc_easy", "acc", arc), ("arc_easy", "acc_norm", 0.99), ("piqa", "acc", piqa),
                                    ("wiki_ppl", "word_perplexity", ppl), ("wiki_ppl", "bits_per_byte", 0.5)):
            out.append({"run": "t", "variant": v, "task": task, "metric": metric, "value": value, "stderr": stderr,
                        "n": 10, "backend": "hf", "method": method, "ratio": ratio, "experts_total": total,
                        "experts_per_layer": [total // 4] * 4, "source_model": "/m",
                        "chance": CHANCE.get(task) if metric.startswith("acc") else None,
                        "params_routed": total * 1000, "params_total": total * 1000 + 5000,
                        "checkpoint_bytes": (total * 1000 + 5000) * 4})
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
        above = 100 * ((arc - 0.25) / (0.50 - 0.25) + (piqa - 0.5) / (0.70 - 0.5)) / 2
        assert line.endswith(f"| {retained:.1f}% | {above:.1f}% |"), line
        assert f"| {ppl:.4g} ± {1.959964 * 0.01:.2g} |" in line  # 95% half-width
        total = VARIANTS[v][2]
        assert f"| {total * 1000 / 1e6:.1f}M | {(total * 1000 + 5000) / 1e6:.1f}M |" in line
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


def test_error_bars_are_drawn(tmp_path):
    """The metrics plot with intervals differs from the same plot with zero-width intervals."""
    pngs = []
    for name, se in (("with", 0.05), ("without", 0.0)):
        d = tmp_path / name
        write_results(d / "results.parquet", rows(stderr=se))
        build_report(d)
        pngs.append((d / "report" / "accuracy_vs_sparsity.png").read_bytes())
    assert pngs[0] != pngs[1]


def test_fidelity_task_leads_the_table(tmp_path):
    extra = [dict(r, task="kld:wiki_heldout", metric="kld_mean", value=0.1 * i, chance=None)
             for i, r in enumerate(x for x in rows() if x["metric"] == "acc" and x["task"] == "piqa")]
    write_results(tmp_path / "results.parquet", rows() + extra)
    md = build_report(tmp_path).read_text()
    head = next(ln for ln in md.splitlines() if ln.startswith("| variant |"))
    tasks = [c for c in head.split(" | ") if "(" in c]
    assert tasks[0] == "kld:wiki_heldout (kld_mean)", head
