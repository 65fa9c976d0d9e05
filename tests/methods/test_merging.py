"""Expert merging (issue 14): neuron alignment, hc-smoe, m-smoe, c-prune-merge, checked against independent
recomputations from the checkpoint files (safetensors' own reader, scipy, plain torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from raymoe.methods import make_plan
from raymoe.moe import MoeModelSpec
from raymoe.plan import LayerPlan, MergeGroup, PrunePlan
from raymoe.testing import FAMILIES

ATOL = 1e-5
MERGERS = ("hc-smoe", "m-smoe", "c-prune-merge")


def expert_fn(t: dict, spec: MoeModelSpec, layer: int, e: int, x: torch.Tensor) -> torch.Tensor:
    """f_e(x) = down (silu(gate x) * up x), read straight from a state dict of the files."""
    g, u, d = (t[spec.expert_name(layer, e, p)].double() for p in ("gate", "up", "down"))
    return (torch.nn.functional.silu(x @ g.T) * (x @ u.T)) @ d.T


def aligned(t: dict, spec: MoeModelSpec, layer: int, e: int, proj: str, perm) -> torch.Tensor:
    w = t[spec.expert_name(layer, e, proj)].double()
    if perm is None:
        return w
    p = torch.as_tensor(perm)
    return w[:, p] if proj == "down" else w[p]


@pytest.fixture(scope="module")
def twin_model(tiny_model, tmp_path_factory):
    """A qwen3_moe checkpoint whose expert 5 of every MoE layer is expert 1 with its neurons permuted
    (gate/up rows and down columns by one seeded permutation per layer); returns (path, perms)."""
    import shutil

    src = tiny_model("qwen3_moe")
    path = tmp_path_factory.mktemp("twin") / "qwen3_moe"
    shutil.copytree(src, path)
    spec = MoeModelSpec.from_pretrained(path)
    t = load_file(str(path / "model.safetensors"))
    perms = {}
    for l in spec.moe_layers:
        perm = torch.randperm(spec.expert_intermediate, generator=torch.Generator().manual_seed(l))
        perms[l] = perm
        inv = torch.argsort(perm)  # expert 5's neuron j is expert 1's neuron perm... 5[inv] == 1
        for proj in ("gate", "up"):
            t[spec.expert_name(l, 5, proj)] = t[spec.expert_name(l, 1, proj)][perm].clone()
        t[spec.expert_name(l, 5, "down")] = t[spec.expert_name(l, 1, "down")][:, perm].clone()
        assert not torch.equal(perm, torch.arange(len(perm))) and inv.numel() == len(perm)
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path, perms


@pytest.mark.parametrize("basis", ["activations", "weights"])
def test_a_permuted_copy_merges_back_into_the_original(twin_model, tmp_path, basis):
    """Alignment recovers the permutation: the merged expert's weights are expert 1's, and its output equals
    both members' on random inputs; without alignment it does not."""
    from raymoe.checkpoint import apply_plan
    from raymoe.methods.align import alignment_for
    from raymoe.methods.synthetic import simulate_stats
    from raymoe.moe import ExpertWeights

    path, true = twin_model
    weights = ExpertWeights(path)
    spec = weights.spec
    stats = simulate_stats(weights, sequences=4, seq_len=16, clusters=2, probe_tokens=32, seed=0,
                           model_path=str(path))
    keep = [0, 1, 2, 3, 4, 6, 7]
    merges = {l: [MergeGroup(target=1, members=[1, 5], weights=[0.3, 0.7])] for l in spec.moe_layers}
    src = load_file(str(path / "model.safetensors"))
    x = torch.randn(64, spec.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for align in (basis, "none"):
        alignment = alignment_for(stats, weights, merges, align, tokens=32, seed=0)
        plan = PrunePlan(method="manual", model=str(path), model_type=spec.arch.family, alignment=alignment,
                         layers=[LayerPlan(layer=l, num_experts=8, keep=keep, merges=merges[l])
                                 for l in spec.moe_layers])
        out = load_file(str(apply_plan(path, plan, tmp_path / align, progress=False) / "model.safetensors"))
        for l in spec.moe_layers:
            f1, f5 = expert_fn(src, spec, l, 1, x), expert_fn(src, spec, l, 5, x)
            torch.testing.assert_close(f1, f5, atol=1e-10, rtol=1e-8)  # the twin computes the same function
            merged = expert_fn(out, spec, l, keep.index(1), x)
            if align == "none":
                assert (merged - f1).abs().max() > 1e-3, "unaligned average kept the function: test is vacuous"
                continue
            pi = plan.permutations()[l][5]
            assert np.array_equal(pi, torch.argsort(true[l]).numpy())  # 5[pi] == 1: the permutation is found
            assert alignment.basis == basis
            for proj in ("gate", "up", "down"):
                name = spec.expert_name(l, keep.index(1), proj)
                torch.testing.assert_close(out[name], src[spec.expert_name(l, 1, proj)], atol=1e-7, rtol=1e-6)
            torch.testing.assert_close(merged, f1, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(merged, f5, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", MERGERS)
@pytest.mark.parametrize("uniform", [True, False])
def test_merged_weights_are_the_plans_weighted_average_of_aligned_members(traced, tmp_path, method, uniform):
    from raymoe.checkpoint import apply_plan

    stats, weights, path = traced("mixtral")
    spec = MoeModelSpec.from_pretrained(path)
    plan = make_plan(stats, method, 0.5, uniform=uniform, weights=weights)
    assert plan.alignment is not None and plan.alignment.basis == "activations"
    out = apply_plan(path, plan, tmp_path / "merged", progress=False)
    src, dst = load_file(str(path / "model.safetensors")), load_file(str(out / "model.safetensors"))
    perms, merged = plan.permutations(), 0
    for lp in plan.layers:
        counts = stats.layers[lp.layer].counts
        covered = set(lp.keep)
        for g in lp.merges:
            if method != "c-prune-merge":  # usage weights c_m / sum c
                np.testing.assert_allclose(g.weights, counts[g.members] / counts[g.members].sum(), rtol=1e-9)
            j = lp.keep.index(g.target)
            for proj in ("gate", "up", "down"):
                ref = sum(w * aligned(src, spec, lp.layer, m, proj, perms[lp.layer].get(m))
                          for w, m in zip(g.weights, g.members))
                torch.testing.assert_close(dst[spec.expert_name(lp.layer, j, proj)].double(), ref, atol=1e-6,
                                           rtol=1e-5)
            router = src[spec.router_name(lp.layer)].double()  # rows: sum_m w_m r_m, never permuted
            ref_row = sum(w * router[m] for w, m in zip(g.weights, g.members))
            torch.testing.assert_close(dst[spec.router_name(lp.layer)][j].double(), ref_row, atol=1e-6, rtol=1e-5)
            covered |= set(g.members)
            merged += 1
        assert covered == set(range(lp.num_experts))  # every removed expert is merged somewhere
        for j, e in enumerate(lp.keep):  # unmerged kept experts are copied verbatim
            if e not in {g.target for g in lp.merges}:
                assert torch.equal(dst[spec.expert_name(lp.layer, j, "gate")], src[spec.expert_name(lp.layer, e, "gate")])
    assert merged > 0


@pytest.mark.parametrize("uniform", [True, False])
def test_hcsmoe_groups_are_scipy_average_linkage_clusters(traced, uniform):
    from scipy.cluster.hierarchy import cut_tree, linkage

    stats, weights, _ = traced("mixtral")
    plan = make_plan(stats, "hc-smoe", 0.5, uniform=uniform, weights=weights)
    for lp in plan.layers:
        s = stats.layers[lp.layer]
        feats = s.mean_output_sum / s.probe_tokens  # [E, H]
        n = len(lp.keep)
        labels = cut_tree(linkage(feats, method="average", metric="euclidean"), n_clusters=n).ravel()
        expected = {frozenset(np.flatnonzero(labels == c).tolist()) for c in range(n)}
        got = {frozenset(g.members) for g in lp.merges} | {frozenset([e]) for e in lp.keep
                                                           if e not in {g.target for g in lp.merges}}
        assert got == expected
        for g in lp.merges:  # the most used member is the target
            assert s.counts[g.target] == max(s.counts[m] for m in g.members)


def test_msmoe_centres_are_the_most_used_and_members_join_by_router_logits(traced):
    from raymoe.methods.common import probe_subset

    stats, weights, path = traced("mixtral")
    plan = make_plan(stats, "m-smoe", 0.5, uniform=True, weights=weights)
    router = load_file(str(path / "model.safetensors"))
    spec = MoeModelSpec.from_pretrained(path)
    for lp in plan.layers:
        s = stats.layers[lp.layer]
        assert sorted(lp.keep) == sorted(np.argsort(-s.counts, kind="stable")[:len(lp.keep)].tolist())
        z = probe_subset(stats, lp.layer, 512, 0).double() @ router[spec.router_name(lp.layer)].double().T  # [P, E]
        cos = torch.nn.functional.cosine_similarity(z.T[:, None], z.T[None], dim=-1).numpy()  # [E, E]
        target = {m: g.target for g in lp.merges for m in g.members}
        for e in set(range(lp.num_experts)) - set(lp.keep):
            assert target[e] == max(lp.keep, key=lambda c: (cos[e, c], -c))


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_checkpoints_of_every_family_load_and_match_the_reference(traced, tmp_path, family):
    """Every family: hc-smoe (global: per-layer counts, raymoe's variable architecture) and m-smoe (uniform: the
    stock one) load with plain from_pretrained and equal the original with the plan's aligned merges written in
    and the removed experts masked (raymoe.testing.masking)."""
    from transformers import AutoModelForCausalLM

    import raymoe
    from raymoe.checkpoint import apply_plan
    from raymoe.testing.masking import mask_experts, merge_experts

    raymoe.ensure_registered()  # the variable-expert architectures load with the Auto classes

    kw = {"experts": 16} if family == "deepseek_v3" else {}
    stats, weights, path = traced(family, **kw)
    spec = MoeModelSpec.from_pretrained(path)
    ids = torch.randint(4, 300, (2, 20), generator=torch.Generator().manual_seed(3))
    for method, uniform in (("hc-smoe", False), ("m-smoe", True)):
        plan = make_plan(stats, method, 0.5, uniform=uniform, weights=weights)
        out = apply_plan(path, plan, tmp_path / method, progress=False)
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        for lp in plan.layers:
            assert model.model.layers[lp.layer].mlp.experts.gate_up_proj.shape[0] == len(lp.keep)
        ref = AutoModelForCausalLM.from_pretrained(path).eval()
        merge_experts(ref, {lp.layer: lp.merges for lp in plan.layers}, plan.permutations())
        mask_experts(ref, spec, {lp.layer: lp.keep for lp in plan.layers})
        with torch.no_grad():
            got, expected = model(ids).logits, ref(ids).logits
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_prune_cli_writes_the_sidecar_with_the_checkpoint(traced, tmp_path, capsys):
    from raymoe.cli import main
    from raymoe.store import save_stats

    stats, _, _ = traced("mixtral")
    store = save_stats(stats, tmp_path / "stats")
    out = tmp_path / "variant"
    assert main(["prune", str(store), "--method", "m-smoe", "--ratio", "0.5", "--option", "align=weights",
                 "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    plan = PrunePlan.load(out / "plan.json")
    assert (out / "plan.align.safetensors").is_file() and plan.alignment.basis == "weights"
    assert {l: sorted(p) for l, p in plan.permutations().items()} == plan.merged_members()
