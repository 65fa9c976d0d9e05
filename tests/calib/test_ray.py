"""Calibration on a local Ray: S=3 stages x R=2 replicas equal one in-process stage, for every family.

One Ray instance and one pool of 2 x 3 stage actors serve the whole module (actors are set up again
for each model; a process start costs seconds on the shared 2-core machine).

Tolerance of the S=1 / S=3 x R=2 equivalence: integer-valued sums (counts, co-activation, transitions)
exactly; float64 sums to rtol 1e-5 (the stages' float32 forward may round differently between processes
with different thread counts, and replicas add partial sums in a different order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray

from raymoe.calib import CalibConfig
from raymoe.calib.pool import StagePool
from raymoe.calib.calibration import Prepared, calibrate, load_tokenizer
from raymoe.calib.shard import EMBED_NAME, NORM_NAME
from raymoe.data.text import calibration_data
from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint
from raymoe.testing.tiny import FAMILIES

from conftest import assert_layer_close, hf_reference

pytestmark = pytest.mark.integration

LOCAL = CalibConfig(samples=8, seq_len=24, micro_batch=1, probe_tokens=6, clusters=3, local=True, seed=3)
DIST = LOCAL.model_copy(update=dict(local=False, stages=3, replicas=2, num_cpus=0.5, window=2, in_flight=2))


@pytest.fixture(scope="module")
def pool():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    p = StagePool(replicas=2, stages=3, num_cpus=0.5, max_restarts=2)
    yield p
    p.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(pool, tiny_model):
    """family -> (local S=1 stats, Ray S=3 x R=2 stats, calibration data); computed on first use."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            path = tiny_model(family)
            data = calibration_data("tiny", load_tokenizer(path), LOCAL.samples, LOCAL.seq_len, LOCAL.seed)
            one = calibrate(Prepared(path, LOCAL, data), progress=False)
            dist = calibrate(Prepared(path, DIST, data), pool=pool, progress=False)
            cache[family] = (one, dist, data)
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_stages_and_replicas_equal_one_process(family, runs, tiny_model):
    one, dist, _ = runs(family)
    assert len(dist.manifest.run["stages"]) == 3 and dist.manifest.run["replicas"] == 2
    assert dist.manifest.run["restarts"] == 0
    assert sorted(one.layers) == sorted(dist.layers)
    for l in one.layers:
        assert_layer_close(dist.layers[l], one.layers[l], rtol=1e-5, atol_rel=1e-6, where=f"{family} layer {l}")
    np.testing.assert_array_equal(dist.seq_cluster, one.seq_cluster)
    np.testing.assert_allclose(dist.seq_pooled, one.seq_pooled, rtol=1e-5, atol=1e-6)
    for key in ("seq", "pos", "layer", "experts"):
        np.testing.assert_array_equal(dist.extra["traces"][key], one.extra["traces"][key])


@pytest.mark.parametrize("family", FAMILIES)
def test_each_actor_loaded_only_its_own_layers(family, runs, tiny_model):
    _, dist, _ = runs(family)
    ckpt = SafetensorsCheckpoint(tiny_model(family))
    stages = dist.manifest.run["stages"]
    loaded = dist.extra["actor_loaded"]  # [replica x stage] in pool order
    assert len(loaded) == 6
    for i, names in enumerate(loaded):
        st = stages[i % 3]
        own = {n for n in ckpt.names
               if any(n.startswith(f"model.layers.{l}.") for l in range(st["first"], st["last"]))}
        own |= {EMBED_NAME} if st["embed"] else set()
        own |= {NORM_NAME} if st["norm"] else set()
        assert set(names) == own, f"actor {i} (stage {st})"
        assert len(names) == len(set(names))
    assert "lm_head.weight" not in {n for names in loaded for n in names}


@pytest.mark.parametrize("family", FAMILIES)
def test_transition_across_stage_boundary(family, runs, tiny_model):
    """The transition of the last MoE layer of a stage to the first MoE layer of the next one."""
    _, dist, data = runs(family)
    spec = MoeModelSpec.from_pretrained(tiny_model(family))
    stages = dist.manifest.run["stages"]
    crossing = [(l, spec.next_moe_layer(l)) for l in spec.moe_layers if spec.next_moe_layer(l) is not None
                and any(st["first"] <= l < st["last"] <= spec.next_moe_layer(l) for st in stages)]
    assert crossing, "the shard plan puts no MoE transition across a stage boundary"
    tr = dist.extra["traces"]
    probes = {l: list(zip(tr["seq"][tr["layer"] == l].tolist(), tr["pos"][tr["layer"] == l].tolist()))
              for l in spec.moe_layers}
    ref = hf_reference(tiny_model(family), data.ids, dist.seq_cluster, dist.num_clusters, probes)
    for l, _nxt in crossing:
        np.testing.assert_array_equal(dist.layers[l].trans, ref[l]["trans"])
        np.testing.assert_allclose(dist.layers[l].trans_intensity, ref[l]["trans_intensity"], rtol=1e-4)
        np.testing.assert_allclose(dist.layers[l].trans_intensity_by_cluster, ref[l]["trans_intensity_by_cluster"],
                                   rtol=1e-4, atol=1e-9)
        assert dist.layers[l].trans.sum() == LOCAL.samples * LOCAL.seq_len * spec.top_k ** 2


def test_killed_stage_actor_restarts_and_run_completes(pool, runs, tiny_model):
    """ray.kill on a stage actor mid-run: Ray restarts it, its window is redone, statistics are unchanged."""
    one, _, data = runs("mixtral")
    killed = []

    def on_event(name, info):
        # the first micro-batch of replica 0's second window (batch 4; batches 0 and 2 were its first window)
        if name == "submitted" and info["replica"] == 0 and info["batch"] == 4 and not killed:
            ray.kill(info["actors"][1], no_restart=False)
            killed.append(info["batch"])

    stats = calibrate(Prepared(tiny_model("mixtral"), DIST, data), pool=pool, progress=False, on_event=on_event)
    assert killed == [4]
    run = stats.manifest.run
    assert run["restarts"] == 1 and run["redone_windows"] >= 1
    for l in one.layers:
        assert_layer_close(stats.layers[l], one.layers[l], rtol=1e-5, atol_rel=1e-6, where=f"layer {l}")
    assert stats.layers[0].tokens == LOCAL.samples * LOCAL.seq_len


def test_cli_calibrate_writes_loadable_stats(pool, tiny_model, tmp_path):
    """`raymoe calibrate` end to end on the running Ray (its own 2-stage pool), then `load_stats`."""
    from raymoe.cli import main
    from raymoe.store import load_stats

    pool_free = ray.available_resources().get("CPU", 0)
    assert pool_free >= 1.0
    out = tmp_path / "stats"
    rc = main(["calibrate", tiny_model("olmoe"), "--data", "tiny", "--samples", "4", "--seq-len", "16", "--stages", "2",
               "--num-cpus", "0.5", "--micro-batch", "2", "--probe-tokens", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    stats = load_stats(out)
    man = stats.manifest
    assert man.model.path == str(tiny_model("olmoe"))
    assert man.model.model_type == "olmoe" and len(man.model.hash) == 64
    assert man.model.config == json.loads((Path(tiny_model("olmoe")) / "config.json").read_text())
    assert len(man.data["hash"]) == 64 and man.calibration["samples"] == 4
    assert len(man.run["stages"]) == 2
    assert [st.counts.sum() for st in stats.layers.values()] == [4 * 16 * 2] * 4
