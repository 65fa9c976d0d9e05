"""`raymoe methods` and `raymoe prune STATS --method ...`: output, and bad input that leaves nothing behind."""

from __future__ import annotations

import json

import pytest

from raymoe.cli import main
from raymoe.methods import METHODS
from raymoe.plan import PrunePlan


@pytest.fixture(scope="module")
def store(traced, tmp_path_factory):
    from raymoe.store import save_stats

    stats, _, path = traced("mixtral")
    return save_stats(stats, tmp_path_factory.mktemp("stats") / "mixtral"), path


def run_cli(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def test_methods_lists_options_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    for name in METHODS:
        assert f"\n{name}  (weights:" in "\n" + out
    assert "--option top_m=1" in out and "--option paths=True" in out and "--option epochs=100" in out
    code, out, _ = run_cli(capsys, "methods", "naee", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["naee"] and {o["name"] for o in rows[0]["options"]} >= {"max_subsets"}


def test_prune_with_a_method_writes_plan_and_checkpoint(store, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    stats_dir, model = store
    out = tmp_path / "variant"
    code, stdout, err = run_cli(capsys, "prune", stats_dir, "--method", "pathfinder", "--ratio", "0.5",
                                "--option", "top_m=3", "--out", out, "--quiet")
    assert code == 0, err
    plan = PrunePlan.load(out / "plan.json")
    assert plan.method == "pathfinder" and plan.config["top_m"] == 3 and plan.model == str(model)
    assert sum(plan.counts().values()) == 16
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.model_type == "raymoe_mixtral" or loaded.config.num_local_experts == 4


@pytest.mark.parametrize("args,needle", [
    (["--method", "magic", "--ratio", "0.5"], "unknown method 'magic' (known: c-gnn-prune, c-prune"),
    (["--method", "reap", "--ratio", "1.5"], "ratio must be in (0, 1)"),
    (["--method", "reap", "--ratio", "0"], "ratio must be in (0, 1)"),
    (["--method", "reap", "--ratio", "0.9", "--uniform"], "fewer than top_k=2"),
    (["--method", "reap", "--ratio", "0.9"], "fewer than top_k=2 per layer"),
    (["--method", "pathfinder", "--ratio", "0.5", "--option", "m=3"], "has no option 'm'"),
    (["--method", "pathfinder", "--ratio", "0.5", "--option", "top_m"], "--option expects KEY=VALUE"),
    (["--method", "reap"], "--method needs --ratio"),
])
def test_bad_input_one_error_line_nothing_written(store, tmp_path, capsys, args, needle):
    stats_dir, _ = store
    out = tmp_path / "variant"
    code, _, err = run_cli(capsys, "prune", stats_dir, *args, "--out", out, "--quiet")
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".variant")]


def test_missing_stats_directory(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", tmp_path / "nope", "--method", "reap", "--ratio", "0.5",
                           "--out", tmp_path / "v")
    assert code == 2 and "does not exist" in err[0] and not (tmp_path / "v").exists()
