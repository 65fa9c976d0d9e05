"""Bad merge plans through `raymoe prune --plan`: one clear line, exit 2, nothing written (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from raymoe.cli import main
from raymoe.moe import MoeModelSpec
from raymoe.plan import LayerPlan, MergeGroup, PrunePlan
from raymoe.plan.alignment import Alignment


def merge_plan(path, *, width=None, members=(1, 5), n_experts=8, keep=(0, 1, 2, 3, 4, 6, 7)) -> PrunePlan:
    spec = MoeModelSpec.from_pretrained(path)
    w = width or spec.expert_intermediate
    perms = {l: {members[1]: np.random.default_rng(l).permutation(w)} for l in spec.moe_layers}
    group = MergeGroup(target=members[0], members=list(members), weights=[0.5, 0.5])
    return PrunePlan(method="manual", model=str(path), model_type=spec.arch.family,
                     alignment=Alignment.from_permutations(perms, w, "weights"),
                     layers=[LayerPlan(layer=l, num_experts=n_experts, keep=list(keep), merges=[group])
                             for l in spec.moe_layers])


def run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_good_aligned_plan_applies(tiny_model, tmp_path, capsys):
    src = tiny_model("qwen3_moe")
    merge_plan(src).save(tmp_path / "plan" / "plan.json")
    code, err = run(capsys, "prune", "--plan", tmp_path / "plan" / "plan.json", src, "--out", tmp_path / "out",
                    "--quiet")
    assert code == 0, err
    assert (tmp_path / "out" / "plan.align.safetensors").is_file()
    again = PrunePlan.load(tmp_path / "out" / "plan.json")
    assert again.alignment is not None and again.permutations().keys() == merge_plan(src).permutations().keys()


@pytest.mark.parametrize("case", ["missing", "width", "crossing"])
def test_bad_merge_plans_fail_cleanly(tiny_model, tmp_path, capsys, case):
    family = "deepseek_v3" if case == "crossing" else "qwen3_moe"
    src = tiny_model(family)
    if case == "crossing":  # DeepSeek-V3's 2 groups of 4: expert 1 (group 0) and 6 (group 1) in one merge
        plan, expect = merge_plan(src, members=(1, 6), keep=(0, 1, 4, 5)), "from original groups [0, 1]"
    elif case == "width":
        w = MoeModelSpec.from_pretrained(src).expert_intermediate
        plan, expect = merge_plan(src, width=w * 2), f"are over {2 * w} neurons, but the model's routed experts have {w}"
    else:
        plan, expect = merge_plan(src), "names the permutation file plan.align.safetensors, which does not exist"
    plan.save(tmp_path / "plan" / "plan.json")
    if case == "missing":
        (tmp_path / "plan" / "plan.align.safetensors").unlink()
    out = tmp_path / "out"
    code, err = run(capsys, "prune", "--plan", tmp_path / "plan" / "plan.json", src, "--out", out, "--quiet")
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
