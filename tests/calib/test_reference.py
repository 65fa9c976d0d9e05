"""In-process calibration (no Ray) against an independent recomputation from the whole transformers model.

Tolerances: integer-valued sums (counts, co-activation, transitions) exactly; float sums to rtol 1e-4
(the reference runs transformers' own expert kernels and float64 expert outputs, raymoe float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymoe.calib import CalibConfig
from raymoe.calib.capture import IMPLEMENTATION, attach
from raymoe.calib.calibration import Prepared, calibrate, load_tokenizer
from raymoe.data.text import calibration_data
from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint, build_decoder_layer, load_layer_state
from raymoe.testing.tiny import FAMILIES

from conftest import assert_layer_close, hf_reference

pytestmark = pytest.mark.unit

CFG = CalibConfig(samples=6, seq_len=24, micro_batch=2, probe_tokens=8, clusters=3, local=True, seed=1)


def probe_tokens(stats) -> dict[int, list[tuple[int, int]]]:
    tr = stats.extra["traces"]
    return {l: list(zip(tr["seq"][tr["layer"] == l].tolist(), tr["pos"][tr["layer"] == l].tolist()))
            for l in stats.layers}


@pytest.mark.parametrize("family", FAMILIES)
def test_local_stats_equal_independent_reference(family, tiny_model):
    path = tiny_model(family)
    data = calibration_data("tiny", load_tokenizer(path), CFG.samples, CFG.seq_len, CFG.seed)
    stats = calibrate(Prepared(path, CFG, data), progress=False)
    spec = MoeModelSpec.from_pretrained(path)
    assert sorted(stats.layers) == spec.moe_layers
    probes = probe_tokens(stats)
    assert all(len(p) == CFG.probe_tokens * CFG.num_batches for p in probes.values())
    ref = hf_reference(path, data.ids, stats.seq_cluster, stats.num_clusters, probes)
    for l in spec.moe_layers:
        assert_layer_close(stats.layers[l], ref[l], rtol=1e-4, atol_rel=1e-5, where=f"{family} layer {l}")
        assert stats.layers[l].counts.sum() == CFG.samples * CFG.seq_len * spec.top_k
    last = spec.moe_layers[-1]
    assert stats.layers[last].trans is None and stats.layers[spec.moe_layers[0]].trans is not None
    np.testing.assert_allclose(stats.seq_pooled, ref["pooled"], rtol=1e-4, atol=1e-5)
    # clusters: seeded k-means on each sequence's pooled final hidden states (the pre-pass)
    from sklearn.cluster import KMeans

    k = min(CFG.clusters, CFG.samples)
    expect = KMeans(n_clusters=k, n_init=10, random_state=CFG.seed).fit_predict(ref["pooled"])
    np.testing.assert_array_equal(stats.seq_cluster, expect)
    assert stats.num_clusters == k
    by = stats.layers[spec.moe_layers[0]]
    np.testing.assert_allclose(by.trans_intensity_by_cluster.sum(0), by.trans_intensity, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(by.trans_routed_by_cluster.sum(0), by.trans_routed, rtol=1e-5, atol=1e-9)
    assert stats.manifest.calibration["stats_schema"] == 2


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_in_process_stages_equal_one_stage(family, tiny_model):
    """Three in-process stages: the routing that crosses a stage boundary gives the same transitions."""
    path = tiny_model(family)
    one = calibrate(path, CFG, "tiny", progress=False)
    three = calibrate(path, CFG.model_copy(update={"stages": 3}), "tiny", progress=False)
    stages = three.manifest.run["stages"]
    assert len(stages) == 3
    for l in one.layers:
        assert_layer_close(three.layers[l], one.layers[l], rtol=1e-6, atol_rel=1e-7, where=f"layer {l}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunk_rows", [1024, 5])
def test_recording_kernel_equals_eager(family, chunk_rows, tiny_model):
    """The `raymoe_calib` experts kernel gives transformers' `grouped_mm` output bit for bit, and the routed norms."""
    path = tiny_model(family)
    spec = MoeModelSpec.from_pretrained(path)
    l = spec.moe_layers[0]
    layer = build_decoder_layer(spec, l)
    layer.load_state_dict(load_layer_state(SafetensorsCheckpoint(path), spec, l), assign=True)
    x = torch.randn(5, 7, spec.hidden_size)
    with torch.no_grad():
        eager = layer.mlp(x)  # stock eager loop
        layer.mlp.experts.config._experts_implementation = "grouped_mm"  # transformers' default kernel
        expected = layer.mlp(x)
        cap = attach(layer)
        layer.mlp.experts._raymoe_chunk_rows = chunk_rows  # 5: one grouped matmul per expert or two
        got = layer.mlp(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    experts = layer.mlp.experts
    assert experts.config._experts_implementation == IMPLEMENTATION
    with torch.no_grad():
        for t in range(cap.x.shape[0]):
            for j in range(spec.top_k):
                e = int(cap.index[t, j])
                gate, up = torch.nn.functional.linear(cap.x[t], experts.gate_up_proj[e]).chunk(2)
                f = torch.nn.functional.linear(experts.act_fn(gate) * up, experts.down_proj[e])
                assert abs(float(f.norm()) - float(cap.norms[t, j])) < 1e-5


def test_variable_expert_checkpoint(tiny_model, tmp_path):
    """A non-uniform pruned checkpoint (raymoe's variable-expert architecture), two in-process stages."""
    from raymoe.checkpoint import apply_plan
    from raymoe.plan import LayerPlan, PrunePlan

    src = tiny_model("qwen3_moe")
    keeps = {0: [0, 1, 2, 3, 4, 5], 1: [1, 2, 3], 2: list(range(8)), 3: [7, 6, 5, 4]}
    plan = PrunePlan(method="manual", ratio=0.3, model=src, model_type="qwen3_moe",
                     layers=[LayerPlan(layer=l, num_experts=8, keep=k) for l, k in keeps.items()])
    path = str(apply_plan(src, plan, tmp_path / "variable"))
    cfg = CFG.model_copy(update={"stages": 2})
    data = calibration_data("tiny", load_tokenizer(path), cfg.samples, cfg.seq_len, cfg.seed)
    stats = calibrate(Prepared(path, cfg, data), progress=False)
    assert stats.manifest.model.model_type == "raymoe_qwen3_moe"
    assert stats.experts() == {l: len(k) for l, k in keeps.items()}
    assert stats.layers[0].trans.shape == (6, 3) and stats.layers[1].trans_intensity_by_cluster.shape == (3, 3, 8)
    ref = hf_reference(path, data.ids, stats.seq_cluster, stats.num_clusters, probe_tokens(stats))
    for l in stats.layers:
        assert_layer_close(stats.layers[l], ref[l], rtol=1e-4, atol_rel=1e-5, where=f"variable layer {l}")
