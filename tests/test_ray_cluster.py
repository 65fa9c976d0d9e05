"""raymoe.ray_cluster: join RAY_ADDRESS / an explicit address, else start local on loopback; check_fits."""

from __future__ import annotations

import os

import pytest

from raymoe.ray_cluster import RayResources, ResourceError, check_fits, ensure_ray, node_resources

pytestmark = pytest.mark.integration


def alive_nodes():
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def test_local_cpus_policy():
    assert RayResources(min_cpus=10_000).local_cpus() == 10_000  # every reserved CPU fits
    assert RayResources(min_cpus=0.5).local_cpus() == (os.cpu_count() or 1)
    assert RayResources(num_cpus=3, min_cpus=10_000).local_cpus() == 3  # an explicit count wins
    with pytest.raises(ValueError):
        RayResources(num_gpus=-1)
    with pytest.raises(ValueError):
        RayResources(cpus=2)  # a typo is an error, not ignored


def test_local_start_on_loopback_with_requested_resources(monkeypatch):
    """No address: a new local Ray, even while another Ray runs on the machine (plain ray.init() would join it)."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    try:
        assert ensure_ray(RayResources(num_cpus=3, num_gpus=2)) == "local"
        [node] = alive_nodes()
        assert node["NodeManagerAddress"] == "127.0.0.1"
        assert ray.cluster_resources()["CPU"] == 3 and ray.cluster_resources()["GPU"] == 2
        assert ensure_ray(RayResources(num_cpus=7)) == "running"  # already up: left as it is
        assert ray.cluster_resources()["CPU"] == 3
        check_fits({"CPU": 1, "GPU": 2}, what="a worker")
        with pytest.raises(ResourceError) as err:
            check_fits({"CPU": 1, "GPU": 3}, what="an eval worker (resources.worker_gpus)")
        msg = str(err.value)
        assert "\n" not in msg and "3 GPU" in msg and "at most 3 CPU, 2 GPU per node, 1 node" in msg, msg
    finally:
        ray.shutdown()
        other.shutdown()


def test_joins_ray_address_and_explicit_address_wins(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address="127.0.0.1")
    try:
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        assert ensure_ray(RayResources(num_cpus=7, num_gpus=4)) == "joined"
        assert len(alive_nodes()) == 2 and len(node_resources()) == 2
        assert ray.cluster_resources()["CPU"] == 5 and ray.cluster_resources()["GPU"] == 1  # the cluster's own
        check_fits({"CPU": 2, "GPU": 1}, what="a worker")  # the second node holds it
        with pytest.raises(ResourceError, match="at most 1 GPU per node, 2 node"):
            check_fits({"GPU": 2}, what="a worker")
        with pytest.raises(ResourceError):  # 3 CPUs on one node and 1 GPU on another: not on one node
            check_fits({"CPU": 3, "GPU": 1}, what="a worker")
        ray.shutdown()

        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens there
        assert ensure_ray(RayResources(address=cluster.address)) == "joined"
        assert len(alive_nodes()) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
