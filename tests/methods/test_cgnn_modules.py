"""C-GNN-PRUNE's modules one by one: positive-PMI co-activation (not popularity), functional node
features, the community target and fill rule (importance kept vs plain top-n), the GNN, the ablation
switches, group balance for group-limited routers, and bad options."""

from __future__ import annotations

import numpy as np
import pytest

from raymoe.methods import OptionError, budget_for, make_plan
from raymoe.methods.cgnn_graph import coactivation, jaccard, node_features, quasi_independence, train_gae
from raymoe.methods.cgnn_select import community_target, importance_kept, select_from_communities
from raymoe.methods.common import top_n
from raymoe.methods.synthetic import scale_config, synthetic_stats
from raymoe.store.calib_stats import LayerStats

from test_cgnn import constructed_stats

FAST = {"epochs": 20}


def qwen2_config(E: int, k: int, layers: int) -> dict:
    return dict(model_type="qwen2_moe", num_hidden_layers=layers, num_experts=E, num_experts_per_tok=k,
                norm_topk_prob=False, hidden_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                decoder_sparse_step=1, mlp_only_layers=[], hidden_act="silu")


@pytest.fixture(scope="module")
def synthetic():
    """Synthetic statistics (raymoe.methods.synthetic) with 16 (top-4), 64 and 128 (top-8) experts."""
    return {E: synthetic_stats(qwen2_config(E, k, L), sequences=32, seq_len=32, probe_tokens=32)
            for E, k, L in [(16, 4, 8), (64, 8, 4), (128, 8, 3)]}


def sampled_layer(E: int, k: int, *, boost: float, T: int = 20000, blocks: int = 4, seed: int = 0):
    """Routing sampled token by token: popularity pop_e (log-normal) times `boost` for the experts of
    the token's topic block; k experts without replacement (Gumbel top-k). Popularity and
    co-activation structure are independent by construction."""
    g = np.random.default_rng(seed)
    pop = np.exp(g.standard_normal(E))
    block = np.arange(E) % blocks
    topic = g.integers(0, blocks, T)
    logw = np.log(pop)[None, :] + np.where(block[None, :] == topic[:, None], np.log(boost), 0.0)  # [T, E]
    idx = np.argsort(-(logw + g.gumbel(size=(T, E))), axis=1)[:, :k]  # [T, k]
    sel = np.zeros((T, E))
    np.put_along_axis(sel, idx, 1.0, axis=1)
    s = LayerStats(0, E, k, tokens=float(T))
    s.coact = sel.T @ sel  # [E, E]
    s.counts = np.diagonal(s.coact).copy()
    return s, block


@pytest.mark.parametrize("E,k", [(8, 2), (16, 4), (64, 8)])
def test_coactivation_is_not_popularity(E, k):
    s, block = sampled_layer(E, k, boost=4.0)
    iu = np.triu_indices(E, 1)
    uu = np.outer(s.usage, s.usage)[iu]
    c = coactivation(s)
    assert np.corrcoef(jaccard(s)[iu], uu)[0, 1] > 0.7  # the test can fail: Jaccard is popularity
    assert abs(np.corrcoef(c[iu], uu)[0, 1]) < 0.25
    same = (block[:, None] == block[None, :])[iu]
    assert c[iu][same].mean() > 0.2 > 20 * c[iu][~same].mean()  # it finds the topic blocks instead
    assert np.all((c >= 0) & (c < 1)) and np.all(np.diagonal(c) == 0) and np.allclose(c, c.T)


def test_coactivation_near_zero_without_structure():
    s, _ = sampled_layer(16, 4, boost=1.0)
    c = coactivation(s)
    assert c.mean() < 0.03 and c.max() < 0.2  # chance co-occurrence of popular experts is not an edge


def test_quasi_independence_matches_the_marginals():
    g = np.random.default_rng(0)
    r = np.exp(g.standard_normal(32))
    e = quasi_independence(r)
    np.testing.assert_allclose(e.sum(axis=1), r, rtol=1e-9)
    assert np.all(np.diagonal(e) == 0) and np.allclose(e, e.T)
    a = np.sqrt(e[0, 1] * e[0, 2] / e[1, 2])  # rank one off the diagonal
    np.testing.assert_allclose(e[0, 3:], a * e[1, 3:] / np.sqrt(e[0, 1] * e[1, 2] / e[0, 2]), rtol=1e-9)


def test_synthetic_coactivation_decorrelated_from_popularity(synthetic):
    for E, stats in synthetic.items():
        iu = np.triu_indices(E, 1)
        cj, cp = [], []
        for s in stats.layers.values():
            uu = np.outer(s.usage, s.usage)[iu]
            cj.append(np.corrcoef(jaccard(s)[iu], uu)[0, 1])
            cp.append(np.corrcoef(coactivation(s)[iu], uu)[0, 1])
        assert np.median(cj) > 0.6 and abs(np.median(cp)) < 0.2, (E, np.median(cj), np.median(cp))


def test_node_features_do_not_carry_usage():
    """Re-distributing usage (same per-token activation norms and saliency means) leaves the default
    features unchanged; with usage_features they change."""
    g = np.random.default_rng(3)
    stats = constructed_stats([g.random(16) + 0.5], blocks=4)
    s = stats.layers[0]
    t = LayerStats(0, 16, s.top_k, tokens=s.tokens, probe_tokens=s.probe_tokens)
    for name in ("coact", "probe_cos_sum", "mean_output_sum", "loo_err_sum", "gate_mass"):
        setattr(t, name, getattr(s, name))
    t.counts = s.counts[g.permutation(16)]
    t.prob_mass = s.prob_mass[g.permutation(16)]
    t.act_norm_sum, t.reap_sum = s.act_norm * t.counts, s.reap * t.counts
    np.testing.assert_allclose(node_features(t, 8), node_features(s, 8))
    assert node_features(s, 8).shape == (16, 9)
    assert not np.allclose(node_features(t, 8, usage=True), node_features(s, 8, usage=True))
    f = node_features(s, 8, usage=True)
    assert f.shape == (16, 12) and np.allclose(f[:, 8:].mean(0), 0) and np.allclose(f[:, 8:].std(0), 1)


def test_fill_keeps_the_strongest_experts():
    """One community holds the four most important experts: with a community per kept slot (the old
    target n_l) three of them go; with ceil(n_l / 2) communities they stay and every community is
    still represented."""
    imp = np.array([10, 9, 8, 7, 1, .9, .8, .7, .6, .5, .4, .35, .3, .25, .2, .15])
    n = 8
    per_slot = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 6, 7])  # 8 communities
    assert importance_kept(select_from_communities(per_slot, imp, n), imp) < 0.6
    half = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])  # C = 4 = ceil(0.5 * 8)
    keep = select_from_communities(half, imp, n)
    assert keep == [0, 1, 2, 3, 4, 5, 8, 12]  # representatives 0, 4, 8, 12; fill 1, 2, 3, 5
    assert importance_kept(keep, imp) > 0.95
    assert community_target(8, 0.5) == 4 and community_target(7, 0.5) == 4 and community_target(1, 0.1) == 1
    assert community_target(8, 1.0) == 8


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "global"])
def test_importance_kept_vs_top_n(synthetic, uniform):
    """Every layer keeps at least the top n - C experts' importance; on average far more than the
    one-per-community rule (ratio 1)."""
    for E, stats in synthetic.items():
        ours, one_each = [], []
        for ratio_c, out in ((0.5, ours), (1.0, one_each)):
            plan = make_plan(stats, "c-gnn-prune", 0.5, uniform=uniform, options=FAST | {"community_ratio": ratio_c})
            for lp in plan.layers:
                imp, n = np.asarray(lp.scores["importance"]), len(lp.keep)
                out.append(importance_kept(lp.keep, imp))
                if ratio_c == 0.5 and n < E:
                    best = np.sort(imp)[::-1]
                    assert out[-1] >= best[:n - community_target(n, 0.5)].sum() / best[:n].sum() - 1e-12
        assert np.mean(ours) > 0.95 and np.mean(ours) > np.mean(one_each) + 0.05, (E, ours, one_each)


def test_gnn_trains_and_matters(synthetic):
    from raymoe.methods.cgnn_graph import interaction_graph, knn_mask

    stats = synthetic[64]
    graphs = []
    for s in stats.layers.values():
        w = interaction_graph(s, 0.5)
        graphs.append((node_features(s, 8), w * knn_mask(w, 16), w))
    history: list[float] = []
    train_gae(graphs, hidden=32, dim=16, epochs=100, lr=0.01, seed=0, history=history)
    assert len(history) == 101 and history[-1] < 0.8 * history[0]
    keeps = {name: make_plan(stats, "c-gnn-prune", 0.5, options=opts)
             for name, opts in [("trained", {}), ("untrained", {"epochs": 0}), ("no-gnn", {"gnn": False})]}
    sets = {k: {(lp.layer, e) for lp in p.layers for e in lp.keep} for k, p in keeps.items()}
    assert sets["trained"] != sets["untrained"] and sets["trained"] != sets["no-gnn"]


def test_ablation_switches(synthetic, monkeypatch):
    import raymoe.methods.cgnn as cgnn

    stats = synthetic[16]
    budget = budget_for(stats, 0.5)
    full = make_plan(stats, "c-gnn-prune", 0.5, options=FAST)
    # entropy allocation off: every layer's target is (1 - r) E_l
    flat = make_plan(stats, "c-gnn-prune", 0.5, options=FAST | {"entropy_allocation": False})
    assert flat.counts() == budget.counts_from_targets({l: 0.5 * 16 for l in stats.moe_layers})
    assert set(flat.counts().values()) == {8} and len(set(full.counts().values())) > 1

    def boom(*a, **k):
        raise AssertionError("not expected to run")

    monkeypatch.setattr(cgnn, "train_gae", boom)
    no_gnn = make_plan(stats, "c-gnn-prune", 0.5, options={"gnn": False})
    assert all("community" in lp.scores for lp in no_gnn.layers)
    assert no_gnn.counts() == full.counts()
    monkeypatch.setattr(cgnn, "leiden_communities", boom)
    no_comm = make_plan(stats, "c-gnn-prune", 0.5, options={"communities": False})
    assert no_comm.counts() == full.counts()
    for lp in no_comm.layers:
        assert "community" not in lp.scores and lp.keep == top_n(np.asarray(lp.scores["importance"]), len(lp.keep))
    assert no_comm.config["communities"] is False and full.config["communities"] is True


@pytest.mark.parametrize("options,needle", [
    ({"gnn": "maybe"}, "method 'c-gnn-prune' option 'gnn': Input should be a valid boolean"),
    ({"communites": False}, "method 'c-gnn-prune' has no option 'communites' (options: alpha, eps, lam"),
    ({"community_ratio": 0}, "option 'community_ratio': Input should be greater than 0"),
    ({"pmi_prior": -1}, "option 'pmi_prior'"),
])
def test_bad_options(synthetic, options, needle):
    with pytest.raises(OptionError) as err:
        make_plan(synthetic[16], "c-gnn-prune", 0.5, options=options)
    assert needle in str(err.value)


@pytest.mark.parametrize("method", ["pathfinder", "reap"])
def test_switch_on_a_method_without_the_module(synthetic, method):
    with pytest.raises(OptionError, match=f"method '{method}' has no option 'gnn'"):
        make_plan(synthetic[16], method, 0.5, options={"gnn": False})


def _balanced(plan, n_group: int) -> None:
    for lp in plan.layers:
        size, per = lp.num_experts // n_group, len(lp.keep) // n_group
        assert len(lp.keep) % n_group == 0
        assert [sum(1 for e in lp.keep if e // size == j) for j in range(n_group)] == [per] * n_group, lp.keep


@pytest.mark.parametrize("options", [{}, {"gnn": False}, {"communities": False}, {"entropy_allocation": False}],
                         ids=["full", "no-gnn", "no-communities", "no-entropy"])
def test_group_balance_deepseek_v3(traced, options):
    stats, _, _ = traced("deepseek_v3", experts=16)  # n_group = 2
    for uniform in (True, False):
        for ratio in (0.25, 0.5):
            _balanced(make_plan(stats, "c-gnn-prune", ratio, uniform=uniform, options=FAST | options), 2)


def test_group_balance_eight_groups():
    cfg = scale_config("deepseek_v3", hidden=64) | {"num_hidden_layers": 6, "n_routed_experts": 64}
    stats = synthetic_stats(cfg, sequences=16, seq_len=32, probe_tokens=16)  # 3 MoE layers, 8 groups of 8
    for ratio in (0.25, 0.5):
        plan = make_plan(stats, "c-gnn-prune", ratio, options=FAST)
        _balanced(plan, 8)
        for lp in plan.layers:  # per group: representatives first, then importance (keep_balanced's rule)
            labels, imp = np.asarray(lp.scores["community"]), np.asarray(lp.scores["importance"])
            assert lp.keep == select_from_communities(labels, imp, len(lp.keep), 8)


@pytest.mark.parametrize("method,option,needle", [
    ("c-gnn-prune", "gnn=maybe", "error: method 'c-gnn-prune' option 'gnn': Input should be a valid boolean"),
    ("pathfinder", "communities=false", "error: method 'pathfinder' has no option 'communities'"),
])
def test_cli_bad_switch_one_line_nothing_written(traced, tmp_path, capsys, method, option, needle):
    from raymoe.cli import main
    from raymoe.store import save_stats

    stats, _, _ = traced("mixtral")
    store = save_stats(stats, tmp_path / "stats")
    out = tmp_path / "variant"
    capsys.readouterr()
    code = main(["prune", str(store), "--method", method, "--ratio", "0.5", "--option", option, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(needle), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["stats"]
