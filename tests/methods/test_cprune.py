"""C-Prune: voting re-computed with scipy's Ward on raw features; merge weights equal the
affinity-weighted average, and the applied checkpoint holds exactly that average."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage

from raymoe.methods import make_plan
from raymoe.methods.common import probe_subset


def factor(p):  # the size-dependent keep factor of C-Prune's code, written out
    return 0.5 + 0.6 * (math.exp(0.5 - p) - math.exp(p - 0.5) / (math.exp(p - 0.5) + math.exp(0.5 - p)))


def test_votes_equal_direct_recomputation(traced, hf_layer):
    stats, weights, path = traced("mixtral", experts=16, layers=2)
    ratio, B = 0.5, 3
    plan = make_plan(stats, "c-prune", ratio, uniform=True, weights=weights,
                     options={"batches": B, "max_tokens": 24, "features": "outputs"})
    for lp in plan.layers:
        hf = hf_layer(path, lp.layer)
        x = probe_subset(stats, lp.layer, 24, 0)
        outs = torch.stack([hf.expert(e, x) for e in range(16)], dim=1)  # [T, E, H]
        probs = torch.softmax(hf.route(x)[0].float(), dim=-1)  # [T, E]
        votes, router = np.zeros(16), []
        C = round(0.2 * 16)
        for b in np.array_split(np.arange(len(x)), B):
            feats = outs[b].permute(1, 0, 2).reshape(16, -1).double().numpy()
            labels = fcluster(linkage(feats, method="ward"), t=C, criterion="maxclust")
            router.append(probs[b].mean(0).double().numpy())
            for c in set(labels):
                members = np.flatnonzero(labels == c)
                if len(members) < 3:
                    votes[members] += 1
                    continue
                n = int(factor(len(members) / 16) * (1 - ratio) * len(members))
                dist = np.linalg.norm(feats[members] - feats[members].mean(0), axis=1)
                votes[members[np.lexsort((members, dist))[:n]]] += 1
        share = np.mean(router, axis=0)
        share /= share.sum()
        ref = votes / B + 1e-3 * share
        np.testing.assert_allclose(lp.scores["votes"], ref, rtol=1e-6, atol=1e-9)
        order = np.lexsort((np.arange(16), -ref))
        assert lp.keep == sorted(order[:len(lp.keep)].tolist())


def test_global_stage_caps_and_penalises_redundant_clusters(traced):
    stats, weights, _ = traced("mixtral", experts=16, layers=2)
    for ratio, cap, least in ((0.6, 0.5, 6), (0.75, 0.5, 4), (0.25, 0.1, 12)):
        plan = make_plan(stats, "c-prune", ratio, weights=weights, options={"max_layer_ratio": cap})
        assert sum(plan.counts().values()) == round((1 - ratio) * 32)
        for lp in plan.layers:  # at most `cap` removed, relaxed to the uniform share when ratio > cap
            assert len(lp.keep) >= least == min(math.ceil((1 - cap) * 16), math.floor((1 - ratio) * 16))
            red = np.asarray(lp.scores["redundant"])
            np.testing.assert_allclose(lp.scores["unified"], np.asarray(lp.scores["votes"]) * (1 - 0.5 * red))
            order = np.lexsort((np.arange(16), -np.asarray(lp.scores["unified"])))
            assert lp.keep == sorted(order[:len(lp.keep)].tolist())


@pytest.mark.parametrize("uniform", [True, False])
def test_merge_weights_are_affinity_softmax_and_applied(traced, hf_layer, tmp_path, uniform):
    from raymoe.checkpoint import apply_plan
    from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint

    stats, weights, path = traced("mixtral")
    T = 0.2
    plan = make_plan(stats, "c-prune-merge", 0.5, uniform=uniform, weights=weights,
                     options={"features": "outputs", "max_tokens": 24, "temperature": T})
    out = apply_plan(path, plan, tmp_path / "merged", progress=False)
    spec, src, dst = MoeModelSpec.from_pretrained(path), SafetensorsCheckpoint(path), SafetensorsCheckpoint(out)
    merged = 0
    for lp in plan.layers:
        hf = hf_layer(path, lp.layer)
        x = probe_subset(stats, lp.layer, 24, 0)
        phi = torch.stack([hf.expert(e, x).mean(0) for e in range(lp.num_experts)]).double()  # [E, H]
        cos = torch.nn.functional.cosine_similarity(phi[:, None], phi[None, :], dim=-1).numpy()  # [E, E]
        usage = stats.layers[lp.layer].counts / stats.layers[lp.layer].counts.sum()
        labels = np.asarray(lp.scores["cluster"])
        covered = set(lp.keep)
        for g in lp.merges:
            t = g.target
            for m in g.members:
                if m != t:  # joined the most similar kept expert of its cluster (any kept if none there)
                    pool = [k for k in lp.keep if labels[k] == labels[m]] or lp.keep
                    assert t == max(pool, key=lambda k: cos[m, k])
            a = np.array([1.0 if m == t else cos[m, t] for m in g.members])
            w = usage[g.members] * np.exp(a / T)
            np.testing.assert_allclose(g.weights, w / w.sum(), rtol=1e-6, atol=1e-8)  # method adds 1e-12 to u
            covered |= set(g.members)
            j = lp.keep.index(t)
            for proj in ("gate", "up", "down"):
                ref = sum(wi * src.get(spec.expert_name(lp.layer, m, proj)).float()
                          for wi, m in zip(g.weights, g.members))
                torch.testing.assert_close(dst.get(spec.expert_name(lp.layer, j, proj)).float(), ref,
                                           rtol=1e-5, atol=1e-6)
            router = src.get(spec.router_name(lp.layer)).float()
            ref_row = sum(wi * router[m] for wi, m in zip(g.weights, g.members))
            torch.testing.assert_close(dst.get(spec.router_name(lp.layer)).float()[j], ref_row, rtol=1e-5, atol=1e-6)
            merged += 1
        assert covered == set(range(lp.num_experts))  # every removed expert is merged somewhere
    assert merged > 0
