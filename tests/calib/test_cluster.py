"""Placement across nodes: a 3-node `ray.cluster_utils.Cluster` on this machine, STRICT_SPREAD stages."""

from __future__ import annotations

import pytest
import ray

from raymoe.calib import CalibConfig, CalibrationError
from raymoe.calib.pool import StagePool
from raymoe.calib.calibration import calibrate

from conftest import assert_layer_close

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def test_strict_spread_puts_stages_on_different_nodes(cluster, tiny_model):
    path = tiny_model("qwen3_moe")
    cfg = CalibConfig(samples=4, seq_len=16, micro_batch=2, probe_tokens=4, clusters=2, stages=3,
                      placement="strict_spread", num_cpus=1)
    pool = StagePool(1, 3, num_cpus=1, placement="strict_spread")
    try:
        nodes = pool.nodes()[0]
        assert len(set(nodes)) == 3, nodes
        assert set(nodes) == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        stats = calibrate(path, cfg, "tiny", pool=pool, progress=False)
    finally:
        pool.shutdown()
    assert [a["node"] for a in stats.manifest.run["actors"]] == nodes
    local = calibrate(path, cfg.model_copy(update={"local": True}), "tiny", progress=False)
    for l in local.layers:
        assert_layer_close(stats.layers[l], local.layers[l], rtol=1e-5, atol_rel=1e-6, where=f"layer {l}")


def test_strict_spread_with_more_stages_than_nodes_is_a_clear_error(cluster):
    with pytest.raises(CalibrationError, match="cannot place 1 x 4 stage actors"):
        StagePool(1, 4, num_cpus=0.25, placement="strict_spread", timeout=3)
