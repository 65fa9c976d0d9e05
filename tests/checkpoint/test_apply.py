"""Pruned checkpoints load and equal the original model with the removed experts masked."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import raymoe
from raymoe.checkpoint import apply_plan
from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint
from raymoe.plan import LayerPlan, MergeGroup, PrunePlan
from raymoe.testing import FAMILIES
from raymoe.testing.masking import mask_experts

raymoe.ensure_registered()  # the variable-expert architectures load with the Auto classes

ATOL = 1e-5


def make_plan(path, keep: dict[int, list[int]], merges: dict[int, list[MergeGroup]] | None = None) -> PrunePlan:
    spec = MoeModelSpec.from_pretrained(path)
    merges = merges or {}
    layers = [LayerPlan(layer=l, num_experts=spec.experts[l], keep=k, merges=merges.get(l, []))
              for l, k in keep.items()]
    return PrunePlan(method="manual", model=str(path), model_type=spec.arch.family, layers=layers)


def uniform_keep(spec: MoeModelSpec) -> dict[int, list[int]]:
    # 6 of 8, balanced over DeepSeek-V3's two groups of 4 (so group-limited routing is unchanged)
    return {l: [0, 2, 3, 4, 5, 7] for l in spec.moe_layers}


def mixed_keep(spec: MoeModelSpec) -> dict[int, list[int]]:
    choices = [[1, 2, 5, 6], [0, 1, 2, 4, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], [3, 4, 6]]
    if spec.n_group > 1:  # counts divisible by n_group, balanced per group
        choices = [[1, 2, 5, 6], [0, 1, 2, 4, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7], [0, 3, 4, 6]]
    return {l: choices[i % len(choices)] for i, l in enumerate(spec.moe_layers)}


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["uniform", "mixed"])
def test_pruned_equals_masked_original(family, kind, tiny_model, tmp_path):
    src = tiny_model(family)
    spec = MoeModelSpec.from_pretrained(src)
    keep = uniform_keep(spec) if kind == "uniform" else mixed_keep(spec)
    out = apply_plan(src, make_plan(src, keep), tmp_path / "pruned", progress=False)

    cfg = json.loads((out / "config.json").read_text())
    if kind == "uniform":
        assert cfg["model_type"] == family and cfg["architectures"] == [spec.arch.causal_lm]
    else:
        assert cfg["model_type"] == f"raymoe_{family}"
    pruned_spec = MoeModelSpec.from_pretrained(out)
    assert pruned_spec.experts == {l: len(k) for l, k in keep.items()}

    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    ref = AutoModelForCausalLM.from_pretrained(src).eval()
    for l in spec.moe_layers:  # the loaded modules really have the per-layer count
        assert pruned.model.layers[l].mlp.experts.gate_up_proj.shape[0] == len(keep[l])
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    unmasked = logits(ref, ids)
    mask_experts(ref, spec, keep)
    expected = logits(ref, ids)
    got = logits(pruned, ids)
    assert (expected - unmasked).abs().max() > 1e-3, "masking changed nothing: the check would be vacuous"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_merge_writes_weighted_average(tiny_model, tmp_path):
    src = tiny_model("qwen3_moe")
    spec = MoeModelSpec.from_pretrained(src)
    keep = {l: [0, 1, 2, 3, 4, 5] for l in spec.moe_layers}
    group = MergeGroup(target=2, members=[2, 6, 7], weights=[0.5, 0.3, 0.2])
    plan = make_plan(src, keep, {1: [group]})
    out = apply_plan(src, plan, tmp_path / "merged", progress=False)
    ck, new = SafetensorsCheckpoint(src), SafetensorsCheckpoint(out)
    for proj in ("gate", "up", "down"):
        expected = sum(w * ck.get(spec.expert_name(1, e, proj)) for e, w in zip(group.members, group.weights))
        torch.testing.assert_close(new.get(spec.expert_name(1, 2, proj)), expected, atol=1e-6, rtol=0)
        # an unmerged kept expert is copied verbatim
        assert torch.equal(new.get(spec.expert_name(1, 4, proj)), ck.get(spec.expert_name(1, 4, proj)))
    router = ck.get(spec.router_name(1))
    expected_rows = torch.stack([router[0], router[1], 0.5 * router[2] + 0.3 * router[6] + 0.2 * router[7],
                                 router[3], router[4], router[5]])
    torch.testing.assert_close(new.get(spec.router_name(1)), expected_rows, atol=1e-6, rtol=0)
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_deepseek_v3_correction_bias_sliced(tiny_model, tmp_path):
    src = tiny_model("deepseek_v3")
    spec = MoeModelSpec.from_pretrained(src)
    keep = {l: [0, 2, 5, 7] for l in spec.moe_layers}
    out = apply_plan(src, make_plan(src, keep), tmp_path / "v3", progress=False)
    name = spec.router_bias_name(2)
    assert torch.equal(SafetensorsCheckpoint(out).get(name), SafetensorsCheckpoint(src).get(name)[[0, 2, 5, 7]])


def test_multi_shard_checkpoint(tiny_model, tmp_path):
    src = tiny_model("mixtral", max_shard_size="40KB")
    with open(src / "model.safetensors.index.json") as fh:
        assert len(set(json.load(fh)["weight_map"].values())) > 2
    spec = MoeModelSpec.from_pretrained(src)
    keep = mixed_keep(spec)
    out = apply_plan(src, make_plan(src, keep), tmp_path / "sharded", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    for name, fname in index["weight_map"].items():  # the index points at the right shards
        with safe_open(str(out / fname), "pt") as fh:
            assert name in fh.keys()
    assert (out / "tokenizer.json").is_file() and (out / "plan.json").is_file()
    ref = AutoModelForCausalLM.from_pretrained(src).eval()
    mask_experts(ref, spec, keep)
    ids = torch.randint(4, 300, (1, 16))
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out), ids), logits(ref, ids),
                               atol=ATOL, rtol=0)
