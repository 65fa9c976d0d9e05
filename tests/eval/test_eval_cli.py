"""`raymoe eval`: results file on success; bad input -> one error line, exit 2, no results written."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from raymoe.cli import main
from raymoe.eval.results import SCHEMA


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed
    rc = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, tmp_path / "empty", "--tasks", "arc_easy", "--out", tmp_path / "res")
    assert rc == 2 and err.strip() == f"error: '{tmp_path / 'empty'}' is not a checkpoint directory (no config.json)"
    assert not (tmp_path / "res").exists()


def test_unknown_task_lists_known(eval_models, tmp_path, capsys):
    rc, _, err = run_cli(capsys, eval_models("mixtral")["base"], "--tasks", "arc_easy,nosuchtask",
                         "--out", tmp_path / "res")
    assert rc == 2 and err.startswith("error: unknown task 'nosuchtask'; known offline tasks: arc_easy, ")
    assert "gsm8k" in err and "wiki_ppl" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_missing_vllm_env_says_how_to_create_it(eval_models, tmp_path, capsys):
    rc, _, err = run_cli(capsys, eval_models("mixtral")["base"], "--tasks", "arc_easy", "--backend", "vllm",
                         "--vllm-python", tmp_path / "no-venv" / "bin" / "python", "--out", tmp_path / "res")
    assert rc == 2 and "error: backend vllm needs its own Python environment" in err
    assert "make vllm-env" in err and "scripts/setup_vllm_env.sh" in err
    assert not (tmp_path / "res").exists()


@pytest.mark.integration
def test_eval_writes_results_then_refuses_to_overwrite(ray_local, eval_models, tmp_path, capsys):
    m = eval_models("mixtral")
    rc, out, err = run_cli(capsys, f"mixed={m['mixed']}", "--tasks", "arc_easy:3,c4_ppl:1", "--workers", "1",
                           "--out", tmp_path / "r1", "--no-progress")
    assert rc == 0, err
    df = pl.read_parquet(tmp_path / "r1" / "results.parquet")
    assert df.schema == SCHEMA
    assert sorted(zip(df["task"], df["metric"])) == sorted(
        [("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("c4_ppl", "bits_per_byte"), ("c4_ppl", "byte_perplexity"),
         ("c4_ppl", "word_perplexity")])
    assert set(df["variant"]) == {"mixed"} and set(df["run"]) == {"r1"} and set(df["backend"]) == {"hf"}
    assert "wrote 5 rows" in out
    before = (tmp_path / "r1" / "results.parquet").read_bytes()
    rc, _, err = run_cli(capsys, m["mixed"], "--tasks", "arc_easy:3", "--out", tmp_path / "r1")
    assert rc == 2 and "already exists" in err
    assert (tmp_path / "r1" / "results.parquet").read_bytes() == before


@pytest.mark.integration
def test_failing_pair_writes_no_partial_rows(ray_local, eval_models, tmp_path, capsys):
    """A variant whose tokenizer is corrupt passes the up-front checks but fails on the worker: no rows at all."""
    good = eval_models("mixtral")["base"]
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "tokenizer.json").write_text("{not json")
    rc, _, err = run_cli(capsys, f"good={good}", f"bad={bad}", "--tasks", "arc_easy:2", "--workers", "1",
                         "--out", tmp_path / "res", "--no-progress")
    assert rc == 2 and err.startswith("error: bad x arc_easy:2: failed on hf-0: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").iterdir())


def _saved_plan(src, tmp_path, name="plan", **update):
    import json

    from raymoe.moe import MoeModelSpec
    from raymoe.plan import LayerPlan, PrunePlan

    spec = MoeModelSpec.from_pretrained(src)
    plan = PrunePlan(method="manual", ratio=0.25, model=str(src), model_type=spec.arch.family,
                     layers=[LayerPlan(layer=l, num_experts=spec.experts[l], keep=[0, 2, 3, 4, 5, 7])
                             for l in spec.moe_layers])
    path = plan.save(tmp_path / name / "plan.json")
    if update:
        path.write_text(json.dumps(json.loads(path.read_text()) | update))
    return path


@pytest.mark.integration
def test_eval_plan_scores_virtually_and_equals_the_checkpoint(ray_local, eval_models, tmp_path, capsys):
    """`raymoe eval --plan PLAN --source SOURCE`: no checkpoint written, the same numbers as the checkpoint's."""
    m = eval_models("mixtral")  # its "uniform" checkpoint keeps [0, 2, 3, 4, 5, 7] in every layer
    plan = _saved_plan(m["base"], tmp_path)
    rc, out, err = run_cli(capsys, f"ckpt={m['uniform']}", "--plan", f"virt={plan}", "--source", m["base"],
                           "--tasks", "arc_easy:3,c4_ppl:1", "--out", tmp_path / "r", "--no-progress")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "plan").iterdir()) == ["plan.json"]  # nothing materialised
    df = pl.read_parquet(tmp_path / "r" / "results.parquet")
    virt, ckpt = (df.filter(pl.col("variant") == v).sort("task", "metric") for v in ("virt", "ckpt"))
    assert virt["virtual"].to_list() == [True] * virt.height and not any(ckpt["virtual"].to_list())
    assert virt["model_path"][0] == str(m["base"].resolve()) and virt["plan_path"][0] == str(plan.resolve())
    for a, b in zip(virt["value"].to_list(), ckpt["value"].to_list()):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
    assert virt["experts_per_layer"][0].to_list() == ckpt["experts_per_layer"][0].to_list() == [6, 6, 6, 6]
    assert virt["params_total"][0] == ckpt["params_total"][0]


def test_eval_plan_for_another_model_is_refused(eval_models, tmp_path, capsys):
    m, other = eval_models("mixtral"), eval_models("qwen3_moe")
    plan = _saved_plan(m["base"], tmp_path)
    rc, _, err = run_cli(capsys, "--plan", plan, "--source", other["base"], "--tasks", "arc_easy:2",
                         "--out", tmp_path / "res")
    assert rc == 2 and err.strip() == "error: plan is for 'mixtral', model is 'qwen3_moe'"
    assert not (tmp_path / "res").exists()
    hashed = _saved_plan(m["base"], tmp_path, "hashed", stats={"model": {"hash": "f" * 64}})
    rc, _, err = run_cli(capsys, "--plan", hashed, "--tasks", "arc_easy:2", "--out", tmp_path / "res")
    assert rc == 2 and "was made for another model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_eval_plan_that_merges_is_refused(eval_models, tmp_path, capsys):
    from raymoe.plan import MergeGroup, PrunePlan

    m = eval_models("mixtral")
    plan = PrunePlan.load(_saved_plan(m["base"], tmp_path))
    plan.layers[0].merges = [MergeGroup(target=0, members=[0, 1], weights=[0.5, 0.5])]
    path = plan.save(tmp_path / "merge" / "plan.json")
    rc, _, err = run_cli(capsys, "--plan", path, "--tasks", "arc_easy:2", "--out", tmp_path / "res")
    assert rc == 2 and "merges experts" in err and "raymoe prune" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()
