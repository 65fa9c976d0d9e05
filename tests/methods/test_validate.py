"""One validation per request: `validate` is called once by make_plan, the planner and `raymoe prune`."""

from __future__ import annotations

import dataclasses

import pytest

import raymoe.methods as methods
from raymoe.cli import main
from raymoe.methods import BudgetError, MethodRequest, OptionError, UnknownMethodError, make_plan, validate
from raymoe.plan import PrunePlan


@pytest.fixture
def calls(monkeypatch):
    """Counts of load_method / parse_options / budget_for calls (validate looks them up in raymoe.methods)."""
    counts = {"load_method": 0, "parse_options": 0, "budget_for": 0}
    for name in counts:
        real = getattr(methods, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(methods, name, counted)
    return counts


@pytest.fixture(scope="module")
def store(traced, tmp_path_factory):
    from raymoe.store import save_stats

    stats, weights, _ = traced("mixtral")
    return save_stats(stats, tmp_path_factory.mktemp("stats") / "mixtral"), stats, weights


def test_request_is_typed_and_frozen(traced):
    stats, _, _ = traced("mixtral")
    req = validate(stats, "pathfinder", 0.5, uniform=True, options={"top_m": 2})
    assert isinstance(req, MethodRequest) and req.name == "pathfinder" and req.stats is stats
    assert type(req.config).__name__ != "dict" and req.config.top_m == 2 and req.config.paths is True
    assert req.budget.ratio == 0.5 and req.budget.uniform and req.budget.experts == stats.experts()
    assert not req.needs_weights
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.budget = None
    assert req.run().layers == make_plan(stats, "pathfinder", 0.5, uniform=True, options={"top_m": 2}).layers


def test_make_plan_validates_once(traced, calls):
    stats, weights, _ = traced("mixtral")
    plan = make_plan(stats, "reap", 0.5, weights=weights)
    assert calls == {"load_method": 1, "parse_options": 1, "budget_for": 1}
    assert sum(plan.counts().values()) == 16


def test_cheap_checks_before_the_stats_are_read(tmp_path, monkeypatch):
    import raymoe.store

    def no_read(*args, **kwargs):
        raise AssertionError("stats read before the method, options and ratio were checked")

    monkeypatch.setattr(raymoe.store, "load_stats", no_read)
    with pytest.raises(UnknownMethodError, match="unknown method 'magic'"):
        validate(tmp_path / "nope", "magic", 0.5)
    with pytest.raises(OptionError, match="has no option 'm'"):
        validate(tmp_path / "nope", "pathfinder", 0.5, options={"m": 1})
    with pytest.raises(BudgetError, match=r"ratio must be in \(0, 1\)"):
        validate(tmp_path / "nope", "reap", 1.5)


def test_stats_path_is_read_after_the_checks(store):
    path, stats, _ = store
    req = validate(str(path), "frequency", 0.5)
    assert req.stats.experts() == stats.experts()
    with pytest.raises(BudgetError, match="fewer than top_k=2"):
        validate(path, "frequency", 0.9)


def test_planner_validates_once_per_request(store, calls):
    from raymoe.methods.planner import StatsPlanner

    path, stats, weights = store
    planner = StatsPlanner(str(path))
    got = planner.plans([{"method": "reap", "ratio": 0.5}, {"method": "naee", "ratio": 0.25, "uniform": True}])
    assert calls == {"load_method": 2, "parse_options": 2, "budget_for": 2}
    assert planner.info()["served"] == 2
    ref = make_plan(stats, "naee", 0.25, uniform=True, weights=weights)
    assert PrunePlan.model_validate(got[1]).layers == ref.layers
    with pytest.raises(OptionError, match="no option 'm'"):
        planner.plan("pathfinder", 0.5, False, {"m": 3})
    assert planner.served == 2


def test_prune_cli_validates_once(store, tmp_path, capsys, calls):
    path, _, _ = store
    code = main(["prune", str(path), "--method", "frequency", "--ratio", "0.5", "--out", str(tmp_path / "v"),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert calls == {"load_method": 1, "parse_options": 1, "budget_for": 1}
    assert PrunePlan.load(tmp_path / "v" / "plan.json").method == "frequency"


def test_prune_cli_bad_method_reads_no_stats(tmp_path, capsys, monkeypatch):
    import raymoe.store

    monkeypatch.setattr(raymoe.store, "load_stats", lambda *a, **k: pytest.fail("stats read"))
    capsys.readouterr()
    code = main(["prune", str(tmp_path / "stats"), "--method", "reapp", "--ratio", "0.5", "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown method 'reapp' (known: c-gnn-prune" in err[0]
