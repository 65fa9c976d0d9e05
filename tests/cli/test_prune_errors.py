"""Bad input to `raymoe prune --plan`: one clear error line, exit 2, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from raymoe.cli import main
from raymoe.plan import LayerPlan, PrunePlan


def write_plan(path, src, keep_count=6, layer=1, experts=8, keep=None, model_type="mixtral"):
    keep = keep if keep is not None else list(range(keep_count))
    plan = PrunePlan(method="manual", model=str(src), model_type=model_type,
                     layers=[LayerPlan(layer=layer, num_experts=experts, keep=keep)])
    plan.save(path)
    return path


def run_cli(capsys, *argv):
    capsys.readouterr()  # drop what the test's own setup printed
    code = main(list(map(str, argv)))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_clean_failure(code, err, out, needle):
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")], "temp dir left"


def test_dense_model_rejected(tmp_path, capsys):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "dense")
    plan = write_plan(tmp_path / "plan.json", tmp_path / "dense")
    code, err = run_cli(capsys, "prune", "--plan", plan, tmp_path / "dense", "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "'llama' is not a supported MoE architecture")


def test_unknown_architecture_rejected(tiny_model, tmp_path, capsys):
    src = tmp_path / "weird"
    src.mkdir()
    cfg = json.loads((tiny_model("mixtral") / "config.json").read_text()) | {"model_type": "grok_moe_x"}
    (src / "config.json").write_text(json.dumps(cfg))
    plan = write_plan(tmp_path / "plan.json", src)
    code, err = run_cli(capsys, "prune", "--plan", plan, src, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "'grok_moe_x' is not a supported MoE architecture")


def test_missing_model_rejected(tmp_path, capsys):
    plan = write_plan(tmp_path / "plan.json", tmp_path / "nope")
    code, err = run_cli(capsys, "prune", "--plan", plan, tmp_path / "nope", "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "does not exist")


def test_plan_below_top_k_rejected(tiny_model, tmp_path, capsys):
    src = tiny_model("mixtral")
    plan = write_plan(tmp_path / "plan.json", src, keep_count=1)
    code, err = run_cli(capsys, "prune", "--plan", plan, src, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "keeps 1 experts, fewer than top_k=2")


def test_plan_naming_missing_experts_rejected(tiny_model, tmp_path, capsys):
    src = tiny_model("mixtral")
    plan_path = tmp_path / "plan.json"
    raw = {"method": "manual", "model": str(src), "model_type": "mixtral",
           "layers": [{"layer": 1, "num_experts": 8, "keep": [0, 3, 9]}]}
    plan_path.write_text(json.dumps(raw))
    code, err = run_cli(capsys, "prune", "--plan", plan_path, src, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "experts [9] do not exist")


def test_deepseek_v3_group_divisibility(tiny_model, tmp_path, capsys):
    src = tiny_model("deepseek_v3")
    plan = write_plan(tmp_path / "plan.json", src, keep_count=5, model_type="deepseek_v3")
    code, err = run_cli(capsys, "prune", "--plan", plan, src, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "layer 1 keeps 5 experts, per original group of 4 "
                         "(n_group=2): [4, 1]; group-limited routing needs the same count in every group")


@pytest.mark.parametrize("family,kw,experts,keep,needle", [
    ("deepseek_v3", {}, 8, [0, 1, 2, 3], "layer 1 keeps 4 experts, per original group of 4 (n_group=2): [4, 0]; "
     "group-limited routing needs the same count in every group"),
    ("deepseek_v2", dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, top_k=3, experts=16), 16,
     [0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 14, 15],
     "layer 1 keeps 12 experts, per original group of 4 (n_group=4): [3, 3, 4, 2]"),
    ("deepseek_v2", dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, top_k=3, experts=16), 16,
     [0, 4, 8, 12], "needs at least 2 per group"),
])
def test_unbalanced_group_limited_plan_rejected(tiny_model, tmp_path, capsys, family, kw, experts, keep, needle):
    """A hand-written plan that keeps a multiple of n_group but not the same count per original group."""
    src = tiny_model(family, **kw)
    plan = write_plan(tmp_path / "plan.json", src, model_type=family, experts=experts, keep=keep)
    code, err = run_cli(capsys, "prune", "--plan", plan, src, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", needle)


def test_truncated_safetensors_rejected(tiny_model, tmp_path, capsys):
    import shutil

    src = tmp_path / "trunc"
    shutil.copytree(tiny_model("mixtral"), src)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    plan = write_plan(tmp_path / "plan.json", src)
    code, err = run_cli(capsys, "prune", "--plan", plan, src, "--out", tmp_path / "out")
    assert_clean_failure(code, err, tmp_path / "out", "truncated safetensors file")


def test_existing_output_kept_intact(tiny_model, tmp_path, capsys):
    src = tiny_model("mixtral")
    plan = write_plan(tmp_path / "plan.json", src)
    out = tmp_path / "out"
    assert run_cli(capsys, "prune", "--plan", plan, src, "--out", out, "--quiet")[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, err = run_cli(capsys, "prune", "--plan", plan, src, "--out", out)
    assert code == 2 and len(err) == 1 and "already holds files" in err[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.integration
def test_real_process_prints_one_line(tiny_model, tmp_path):
    """The installed entry point: exit code 2 and exactly one stderr line."""
    src = tiny_model("mixtral")
    plan = write_plan(tmp_path / "plan.json", src, keep_count=1)
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "raymoe", "prune", "--plan", str(plan), str(src),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: layer 1 keeps 1 experts, fewer than top_k=2"], proc.stderr
    assert not (tmp_path / "out").exists()
