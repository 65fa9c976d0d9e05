"""Each scoring backend through the real fleet: the object's worker class and actor options start it, same scores."""

from __future__ import annotations

import pytest

from raymoe.eval.fleet import EvalFleet
from raymoe.eval.options import EngineOptions, FleetOptions
from raymoe.eval.tasks import parse_tasks
from raymoe.eval.variants import parse_variants

pytestmark = [pytest.mark.integration, pytest.mark.vllm]


def test_hf_and_vllm_fleets_score_alike(ray_local, eval_models, vllm_python):
    variants = parse_variants([f"mixed={eval_models('mixtral')['mixed']}"])
    tasks = parse_tasks("arc_easy:6")
    scores = {}
    for name in ("hf", "vllm"):
        with EvalFleet(FleetOptions(backend=name, engine=EngineOptions(vllm_python=vllm_python))) as fleet:
            assert fleet.backend.name == name
            rows = fleet.run(variants, tasks, run_id=f"r-{name}", progress=False)
            assert fleet.info[f"{name}-0"]["backend"] == name
        assert {r["backend"] for r in rows} == {name} and {r["worker"] for r in rows} == {f"{name}-0"}
        # "vllm x.y": the worker imported vllm, so it ran on the vLLM environment's interpreter (its runtime_env)
        assert all(r["engine"].startswith({"hf": "transformers ", "vllm": "vllm "}[name]) for r in rows)
        scores[name] = {r["metric"]: r["value"] for r in rows}
    assert scores["hf"].keys() == scores["vllm"].keys() == {"acc", "acc_norm"}
    for metric, value in scores["hf"].items():
        assert scores["vllm"][metric] == pytest.approx(value, rel=1e-4), metric
