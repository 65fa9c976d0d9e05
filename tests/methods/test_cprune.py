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


def _constructed(traced, tight_layer_first=True):
    """2 layers x 8 experts; mean outputs: one layer's experts are near-copies of one vector (redundant),
    the other's are spread out (distinct)."""
    import copy

    stats, _, _ = traced("mixtral", layers=2)
    stats = copy.deepcopy(stats)
    g = np.random.default_rng(0)
    a, b = stats.moe_layers
    tight, spread = (a, b) if tight_layer_first else (b, a)
    H = stats.layers[a].mean_output_sum.shape[1]
    base = g.standard_normal(H)
    feats = {tight: base + 0.01 * g.standard_normal((8, H)), spread: 3 * g.standard_normal((8, H))}
    for l, f in feats.items():
        stats.layers[l].mean_output_sum = f * stats.layers[l].probe_tokens
    return stats, tight, spread


def test_global_stage_reclusters_survivors(traced, monkeypatch):
    """Constructed case: the global stage Ward-clusters the survivors of both layers together and votes
    again; the layer whose survivors are redundant (one tight global cluster) loses more."""
    import raymoe.methods.cprune as cp

    for first in (True, False):
        stats, tight, spread = _constructed(traced, first)
        calls = []
        real = cp.ward_labels
        monkeypatch.setattr(cp, "ward_labels", lambda g, n: calls.append((g.shape[0], n)) or real(g, n))
        ratio = 0.5
        plan = make_plan(stats, "c-prune", ratio, options={"global_frac": 0.4, "features": "mean_output"})
        monkeypatch.setattr(cp, "ward_labels", real)
        lp = {p.layer: p for p in plan.layers}
        survivors = {l: np.flatnonzero(lp[l].scores["layerwise_kept"]) for l in lp}
        assert all(len(s) == 6 for s in survivors.values())  # layer-wise: r1 = 0.25 of 8 removed
        U = 12
        assert (U, round(0.4 * U)) in calls  # one clustering of all survivors of both layers
        # direct recomputation of the global votes: scipy Ward on the survivors' features, the vote rule
        phi = np.concatenate([stats.layers[l].mean_output[survivors[l]] for l in stats.moe_layers])  # [U, H]
        labels = fcluster(linkage(phi, method="ward"), t=round(0.4 * U), criterion="maxclust")
        r2 = 1 - 8 / U
        ref = np.zeros(U)
        for c in set(labels):
            members = np.flatnonzero(labels == c)
            if len(members) < 3:
                ref[members] = 1
                continue
            n = int(factor(len(members) / U) * (1 - r2) * len(members))
            dist = np.linalg.norm(phi[members] - phi[members].mean(0), axis=1)
            ref[members[np.lexsort((members, dist))[:n]]] = 1
        got = np.concatenate([np.asarray(lp[l].scores["global_votes"])[survivors[l]] for l in stats.moe_layers])
        np.testing.assert_allclose(np.floor(got + 1e-9), ref)  # votes (+ 1e-3 router share tie-break)
        for l in lp:  # removed layer-wise stays removed; kept = best global votes
            assert set(lp[l].keep) <= set(survivors[l].tolist())
        assert sum(plan.counts().values()) == 8
        assert len(lp[tight].keep) < len(lp[spread].keep)


def test_global_stage_caps_layer_loss(traced):
    stats, weights, _ = traced("mixtral", experts=16, layers=2)
    for ratio, cap, least in ((0.6, 0.5, 6), (0.75, 0.5, 4), (0.25, 0.1, 12)):
        plan = make_plan(stats, "c-prune", ratio, weights=weights, options={"max_layer_ratio": cap})
        assert sum(plan.counts().values()) == round((1 - ratio) * 32)
        for lp in plan.layers:  # at most `cap` removed, relaxed to the uniform share when ratio > cap
            assert len(lp.keep) >= least == min(math.ceil((1 - cap) * 16), math.floor((1 - ratio) * 16))
            gv = np.asarray(lp.scores["global_votes"])
            order = np.lexsort((np.arange(16), -gv))
            assert lp.keep == sorted(order[:len(lp.keep)].tolist())


def test_votes_over_pooled_sequence_batches(traced):
    """Default features: outputs on the sequence-pooled inputs, one voting batch per sequence when there
    are fewer sequences than `batches`."""
    stats, weights, _ = traced("mixtral", experts=16, layers=2)
    plan = make_plan(stats, "c-prune", 0.5, uniform=True, weights=weights)
    assert plan.config["batches"] == 60 and plan.config["features"] == "auto"
    for lp in plan.layers:
        votes = np.asarray(lp.scores["votes"])
        levels = np.unique(np.floor(votes * len(stats.seq_cluster) + 1e-6))
        assert len(levels) > 3  # 8 batches (sequences) give up to 9 vote levels


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
            perms = plan.permutations().get(lp.layer, {})
            assert set(g.members) - {t} <= set(perms)  # every merged-away member is aligned to its target
            for proj in ("gate", "up", "down"):
                def aligned(m, proj=proj):  # gate/up rows, down columns in the target's neuron order
                    w = src.get(spec.expert_name(lp.layer, m, proj)).float()
                    if m not in perms:
                        return w
                    p = torch.as_tensor(perms[m])
                    return w[:, p] if proj == "down" else w[p]
                ref = sum(wi * aligned(m) for wi, m in zip(g.weights, g.members))
                torch.testing.assert_close(dst.get(spec.expert_name(lp.layer, j, proj)).float(), ref,
                                           rtol=1e-5, atol=1e-6)
            router = src.get(spec.router_name(lp.layer)).float()
            ref_row = sum(wi * router[m] for wi, m in zip(g.weights, g.members))
            torch.testing.assert_close(dst.get(spec.router_name(lp.layer)).float()[j], ref_row, rtol=1e-5, atol=1e-6)
            merged += 1
        assert covered == set(range(lp.num_experts))  # every removed expert is merged somewhere
    assert merged > 0
