"""`kld:<corpus>` through the fleet: `raymoe eval --reference`, the reference cached once, both backends."""

from __future__ import annotations

import math

import polars as pl
import pytest

from raymoe.cli import main
from raymoe.eval.tasks import TaskRequest

pytestmark = pytest.mark.integration

TASK = "kld:wiki_heldout:3"


def _values(df: pl.DataFrame, variant: str) -> dict[str, float]:
    return dict(df.filter(pl.col("variant") == variant).select("metric", "value").iter_rows())


def test_eval_kld_against_the_reference(ray_local, eval_models, tmp_path, capsys):
    m = eval_models("mixtral")
    cache = tmp_path / "kld-cache"
    args = ["eval", f"base={m['base']}", f"mixed={m['mixed']}", "--tasks", f"{TASK},c4_ppl:2",
            "--reference", str(m["base"]), "--kld-cache", str(cache), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 0, capsys.readouterr().err
    df = pl.read_parquet(tmp_path / "r1" / "results.parquet")
    base, mixed = _values(df, "base"), _values(df, "mixed")
    assert base["kld_mean"] == pytest.approx(0.0, abs=1e-6) and base["top1_agree"] == 1.0
    assert mixed["kld_mean"] > 1e-7 and mixed["top1_agree"] <= 1.0
    assert all(math.isfinite(x) for x in df["stderr"].to_list())  # every row, perplexities included
    assert set(df.filter(pl.col("metric") == "kld_mean")["reference"]) == {str(m["base"].resolve())}
    assert df.filter(pl.col("variant") == "mixed")["params_routed"][0] < df.filter(
        pl.col("variant") == "base")["params_routed"][0]
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1  # one reference distribution for both variants
    stamp = files[0].stat().st_mtime_ns
    assert main([*args, "--out", str(tmp_path / "r2")]) == 0
    assert files[0].stat().st_mtime_ns == stamp  # reused, not recomputed
    again = pl.read_parquet(tmp_path / "r2" / "results.parquet")
    assert _values(again, "mixed") == pytest.approx(mixed)


@pytest.mark.vllm
def test_vllm_worker_scores_kld_with_transformers(ray_local, eval_models, vllm_python, tmp_path):
    """The vLLM worker computes the fidelity task with transformers in its own environment: same numbers."""
    from raymoe.eval.backends import actor_options
    from raymoe.eval.hf_worker import HFWorker
    from raymoe.eval.options import EngineOptions
    from raymoe.eval.vllm_worker import VLLMWorker

    m = eval_models("qwen3_moe")
    task = TaskRequest("kld:wiki_heldout", 3, reference=str(m["base"]), cache_dir=str(tmp_path))
    opts = EngineOptions(vllm_python=vllm_python)
    vw = VLLMWorker.options(**actor_options("vllm", opts, 1)).remote("vllm-kld", opts)
    hw = HFWorker.options(num_cpus=1).remote("hf-kld", EngineOptions())
    try:
        got = ray_local.get(vw.evaluate.remote(str(m["mixed"]), task))
        want = ray_local.get(hw.evaluate.remote(str(m["mixed"]), task))
    finally:
        ray_local.kill(vw)
        ray_local.kill(hw)
    g = {r["metric"]: r["value"] for r in got["rows"]}
    w = {r["metric"]: r["value"] for r in want["rows"]}
    assert g.keys() == w.keys() and g["kld_mean"] > 0
    for k in w:
        assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
