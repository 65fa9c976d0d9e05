"""The planner actor: one stats store loaded once, many (method, ratio, options) requests."""

from __future__ import annotations

import pytest

from raymoe.methods import OptionError, UnknownMethodError, make_plan
from raymoe.plan import PrunePlan


@pytest.mark.integration
def test_planner_actor_answers_many_requests(traced, tmp_path):
    import ray

    from raymoe.methods.planner import Planner
    from raymoe.store import load_stats, save_stats

    stats, weights, _ = traced("mixtral")
    store = save_stats(stats, tmp_path / "stats")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        planner = Planner.options(memory=None).remote(str(store))
        requests = [{"method": "reap", "ratio": 0.5}, {"method": "naee", "ratio": 0.25, "uniform": True},
                    {"method": "pathfinder", "ratio": 0.5, "options": {"top_m": 2}},
                    {"method": "random", "ratio": 0.75, "options": {"seed": 1}}]
        got = ray.get(planner.plans.remote(requests))
        single = ray.get(planner.plan.remote("frequency", 0.5, True))
        info = ray.get(planner.info.remote())
        with pytest.raises(UnknownMethodError, match="known: c-gnn-prune"):
            ray.get(planner.plan.remote("magic", 0.5))
        with pytest.raises(OptionError, match="no option 'm'"):
            ray.get(planner.plan.remote("pathfinder", 0.5, False, {"m": 3}))
    finally:
        ray.shutdown()
    assert info["served"] == 5 and info["experts"] == stats.experts()
    local = load_stats(store)
    for req, plan_dict in zip(requests + [{"method": "frequency", "ratio": 0.5, "uniform": True}], got + [single]):
        assert isinstance(plan_dict, dict)
        plan = PrunePlan.model_validate(plan_dict)
        ref = make_plan(local, req["method"], req["ratio"], uniform=req.get("uniform", False),
                        options=req.get("options"), weights=weights)
        assert plan.layers == ref.layers and plan.config == ref.config
