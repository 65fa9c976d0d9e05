"""Virtual variants on transformers: a plan scored on the masked source equals its materialised checkpoint.

For every family, uniform and non-uniform plans (DeepSeek-V3's group-balanced, so the pruned model's
groups are the original groups' survivors): log-likelihoods (per item), perplexity and KL divergence of
the source model with the plan's experts masked (raymoe.moe.router_mask via EngineHost) against the
checkpoint `apply_plan` writes, to 1e-5. One engine scores masks A, B, A: A's results both times, and
unmasked after a mask is the source again. Bad input: a merge plan, a plan for another model.
"""

from __future__ import annotations

import json
import math

import pytest

from raymoe.testing import FAMILIES

pytestmark = pytest.mark.integration

TASKS = ("arc_easy:4", "wiki_ppl:1", "kld:wiki_heldout:2")
# per-layer keeps cycled over the MoE layers (8 experts, top_k 2; DeepSeek-V3: 2 groups of 4, same count in each)
KEEPS = {"uniform": [[0, 2, 3, 4, 5, 7]], "mixed": [[1, 2, 5, 6], [0, 1, 2, 4, 6, 7], list(range(8)), [2, 3, 6, 7]]}
GROUPED = {"uniform": [[0, 1, 2, 4, 5, 6]], "mixed": [[0, 1, 4, 5], [1, 2, 3, 5, 6, 7], list(range(8))]}


def _plan(src, kind: str):
    from raymoe.moe import MoeModelSpec
    from raymoe.plan import LayerPlan, PrunePlan

    spec = MoeModelSpec.from_pretrained(src)
    keeps = (GROUPED if spec.n_group > 1 else KEEPS)[kind]
    layers = [LayerPlan(layer=l, num_experts=spec.experts[l], keep=keeps[i % len(keeps)])
              for i, l in enumerate(spec.moe_layers)]
    return PrunePlan(method=f"manual-{kind}", ratio=0.25, model=str(src), model_type=spec.arch.family, layers=layers)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """family -> {base, plans: {kind: plan.json}, ckpts: {kind: checkpoint dir}} (built once)."""
    from raymoe.checkpoint import apply_plan
    from raymoe.testing import build_tiny_model

    cache: dict = {}

    def make(family: str) -> dict:
        if family not in cache:
            root = tmp_path_factory.mktemp(f"virtual-{family}")
            base = build_tiny_model(family, root / "base", max_position_embeddings=512)
            plans, ckpts = {}, {}
            for kind in KEEPS:
                plan = _plan(base, kind)
                plans[kind] = plan.save(root / f"{kind}-plan" / "plan.json")
                ckpts[kind] = apply_plan(base, plan, root / kind, progress=False)
            cache[family] = {"base": base, "plans": plans, "ckpts": ckpts, "root": root}
        return cache[family]

    return make


def _host(root):
    from raymoe.eval.hf_worker import load_hf
    from raymoe.eval.options import EngineOptions
    from raymoe.eval.engine_host import EngineHost

    opts = EngineOptions(batch_size=4, bootstrap_iters=0)
    return EngineHost("t", "hf", lambda p: load_hf(p, opts), bootstrap_iters=0, torch_model=lambda e: e.lm.model)


def _tasks(m):
    from dataclasses import replace

    from raymoe.eval.fidelity import is_fidelity
    from raymoe.eval.tasks import parse_tasks

    return [replace(t, reference=str(m["base"]), cache_dir=str(m["root"] / "kld")) if is_fidelity(t.name) else t
            for t in parse_tasks(",".join(TASKS))]


def _numbers(rows: list[dict]) -> dict:
    """(task, metric) -> (value, per-item numerators) of one evaluate() result."""
    return {(r["task"], r["metric"]): (r["value"], r.get("item_num") or []) for r in rows}


def _close(a: dict, b: dict, tol: float = 1e-5) -> list[str]:
    bad = []
    assert a.keys() == b.keys()
    for key, (va, ia) in a.items():
        vb, ib = b[key]
        scale = max(1.0, abs(vb))  # perplexities are large numbers: relative there
        if not math.isclose(va, vb, rel_tol=tol, abs_tol=tol * scale) or len(ia) != len(ib) or \
                any(abs(x - y) > tol * max(1.0, abs(y)) for x, y in zip(ia, ib)):
            bad.append(f"{key}: {va} vs {vb}")
    return bad


@pytest.mark.parametrize("family", FAMILIES)
def test_virtual_equals_checkpoint(family, family_models):
    from raymoe.eval.variants import Variant

    m = family_models(family)
    host, ckpt_host = _host(m["root"]), _host(m["root"])
    for kind in KEEPS:
        virtual = Variant.from_plan(m["plans"][kind], m["base"], name=kind)
        assert virtual.virtual and virtual.path == str(m["base"].resolve())
        ckpt = Variant.from_path(m["ckpts"][kind])
        # the plan's serving figures are the checkpoint's, computed from the source's headers
        assert (virtual.experts_per_layer, virtual.params_routed, virtual.params_total, virtual.checkpoint_bytes) \
            == (ckpt.experts_per_layer, ckpt.params_routed, ckpt.params_total, ckpt.checkpoint_bytes)
        for task in _tasks(m):
            got = _numbers(host.evaluate(virtual.path, task, virtual.mask)["rows"])
            want = _numbers(ckpt_host.evaluate(ckpt.path, task)["rows"])
            assert not _close(got, want), f"{family} {kind} {task.name}: {_close(got, want)}"
    unmasked = _numbers(host.evaluate(str(m["base"]), _tasks(m)[0])["rows"])
    assert host.loads == 1  # the source once, for both plans and unmasked
    fresh = _numbers(_host(m["root"]).evaluate(str(m["base"]), _tasks(m)[0])["rows"])
    assert unmasked == fresh, "a mask was left behind on the source"


def test_masks_a_b_a_on_one_engine(family_models):
    from raymoe.eval.variants import Variant

    m = family_models("deepseek_v3")
    host = _host(m["root"])
    a, b = (Variant.from_plan(m["plans"][k], m["base"], name=k) for k in ("uniform", "mixed"))
    task = _tasks(m)[1]  # wiki_ppl: continuous, so two masks differ
    first = _numbers(host.evaluate(a.path, task, a.mask)["rows"])
    other = _numbers(host.evaluate(b.path, task, b.mask)["rows"])
    again = _numbers(host.evaluate(a.path, task, a.mask)["rows"])
    assert first == again and first != other
    assert host.loads == 1


def test_deepseek_v3_mask_keeps_the_original_groups(family_models):
    """Group-limited routing under a mask chooses experts of topk_group ORIGINAL groups only."""
    import torch

    from raymoe.eval.engine_host import load_transformers, mask_model
    from raymoe.plan.mask import ExpertMask
    from raymoe.plan import PrunePlan

    m = family_models("deepseek_v3")
    model, _ = load_transformers(str(m["base"]))
    mask = ExpertMask.from_plan(PrunePlan.load(m["plans"]["mixed"]))
    mask_model(model, str(m["base"]), mask)
    layer = next(iter(mask.keep))
    gate = model.model.layers[layer].mlp.gate
    x = torch.randn(64, gate.weight.shape[1])
    _, _, idx = gate(x)  # [T, k]
    group = idx // 4  # 2 original groups of 4
    assert bool((group == group[:, :1]).all()), "a token's experts span two original groups"
    assert set(idx.flatten().tolist()) <= set(mask.keep[layer])


def test_virtual_refuses_merge_plans_and_other_models(family_models, tmp_path):
    from raymoe.errors import PlanError
    from raymoe.eval.variants import Variant
    from raymoe.plan import MergeGroup, PrunePlan

    m, other = family_models("mixtral"), family_models("olmoe")
    plan = PrunePlan.load(m["plans"]["uniform"])
    lp = plan.layers[0]
    lp.keep.remove(7)
    lp.merges = [MergeGroup(target=5, members=[5, 7], weights=[0.5, 0.5])]
    merged = plan.save(tmp_path / "merge" / "plan.json")
    with pytest.raises(PlanError, match="merges experts.*materialise"):
        Variant.from_plan(merged, m["base"])
    with pytest.raises(PlanError, match="plan is for 'mixtral'"):
        Variant.from_plan(m["plans"]["uniform"], other["base"])
    stats_plan = json.loads(m["plans"]["uniform"].read_text()) | {"stats": {"model": {"hash": "0" * 64}}}
    (tmp_path / "hashed").mkdir()
    (tmp_path / "hashed" / "plan.json").write_text(json.dumps(stats_plan))
    with pytest.raises(PlanError, match="made for another model"):
        Variant.from_plan(tmp_path / "hashed" / "plan.json", m["base"])
