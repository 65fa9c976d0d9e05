"""The method registry: lazy imports, validated options, clear errors before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raymoe.errors import RaymoeError
from raymoe.methods import METHODS, BudgetError, OptionError, UnknownMethodError, describe_methods, make_plan


def test_unknown_method_lists_known_ones(traced):
    stats, _, _ = traced("mixtral")
    with pytest.raises(UnknownMethodError) as err:
        make_plan(stats, "magic", 0.5)
    msg = str(err.value)
    assert "unknown method 'magic'" in msg and all(name in msg for name in METHODS)


@pytest.mark.parametrize("method,options,needle", [
    ("reap", {"alpha": 1}, "method 'reap' has no option 'alpha' (options: none)"),
    ("c-gnn-prune", {"epoch": 3}, "has no option 'epoch' (options: alpha, eps, lam"),
    ("pathfinder", {"top_m": 0}, "option 'top_m': Input should be greater than or equal to 1"),
    ("c-prune", {"features": "magic"}, "option 'features'"),
    ("naee", {"max_tokens": "many"}, "option 'max_tokens'"),
])
def test_bad_options_fail_before_work(traced, method, options, needle):
    stats, _, _ = traced("mixtral")
    with pytest.raises(OptionError) as err:
        make_plan(stats, method, 0.5, options=options)
    assert needle in str(err.value)
    assert isinstance(err.value, RaymoeError)


@pytest.mark.parametrize("ratio", [0, 1, 1.2, -0.5])
def test_ratio_outside_range(traced, ratio):
    stats, _, _ = traced("mixtral")
    with pytest.raises(BudgetError, match=r"ratio must be in \(0, 1\)"):
        make_plan(stats, "frequency", ratio)


@pytest.mark.parametrize("uniform", [True, False])
def test_ratio_leaving_fewer_than_top_k(traced, uniform):
    stats, _, _ = traced("mixtral")
    with pytest.raises(BudgetError, match="fewer than top_k=2"):
        make_plan(stats, "c-gnn-prune", 0.9, uniform=uniform)


def test_describe_lists_every_method_with_defaults():
    rows = {m["name"]: m for m in describe_methods()}
    assert set(rows) == set(METHODS)
    opts = {o["name"]: o["default"] for o in rows["pathfinder"]["options"]}
    assert opts["top_m"] == 1 and opts["paths"] is True and opts["temperature"] == 1.0
    assert rows["naee"]["weights"] == "required" and rows["reap"]["options"] == []


def test_heavy_imports_only_when_chosen():
    code = ("import sys; import raymoe.methods as m; m.describe_methods(); "
            "print(any(k.split('.')[0] in ('torch_geometric', 'graspologic', 'graspologic_native') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
