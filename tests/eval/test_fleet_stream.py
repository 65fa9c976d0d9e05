"""The fleet's stream on the `sleep` benchmark engine: pairs of several variants at once, engine reuse, faults."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from raymoe.eval.fleet import EvalFleet
from raymoe.eval.options import FleetOptions
from raymoe.eval.sleep_worker import write_sleep_variant
from raymoe.eval.tasks import TaskRequest

pytestmark = pytest.mark.integration

TASKS = [TaskRequest("a"), TaskRequest("b"), TaskRequest("c")]


@pytest.fixture(scope="module")
def ray3():
    import ray

    from raymoe.ray_cluster import RayResources, ensure_ray

    ensure_ray(RayResources(num_cpus=4, num_gpus=0))
    yield
    ray.shutdown()


def variants(root, n, task_s=0.4, load_s=0.2):
    return [write_sleep_variant(root / f"v{i}", f"v{i}", load_s, {t.name: task_s for t in TASKS}) for i in range(n)]


def test_nothing_submitted_starts_no_worker():
    fleet = EvalFleet(FleetOptions(backend="sleep", workers=3))
    stream = fleet.stream(run_id="none", progress=False)
    stream.close()
    assert list(stream) == [] and fleet.worker_starts == 0 and not fleet.started


def test_workers_spread_over_variants_and_keep_theirs(ray3, tmp_path):
    """All variants queued at once (a producer ahead of the fleet): one engine load per variant."""
    vs = variants(tmp_path, 3, task_s=0.4, load_s=0.6)
    with EvalFleet(FleetOptions(backend="sleep", workers=3)) as fleet:
        stream = fleet.stream(run_id="s", progress=False)
        for v in vs:
            stream.submit(v, TASKS)
        stream.close()
        done = list(stream)
    assert sorted(c.job.key for c in done) == sorted((v.name, t.name) for v in vs for t in TASKS)
    by_variant = {v.name: {c.worker for c in done if c.job.variant.name == v.name} for v in vs}
    assert all(len(w) == 1 for w in by_variant.values()), by_variant  # each variant's pairs on one worker...
    assert len(set.union(*by_variant.values())) == 3  # ...a different one each
    assert sum(c.rows[0]["wall_s"] > 0.8 for c in done) == 3  # one engine load per variant, no more


def _run(fleet, vs, gap_s=0.0):
    stream = fleet.stream(run_id="s", progress=False)

    def produce():
        for v in vs:
            stream.submit(v, TASKS)
            time.sleep(gap_s)
        stream.close()

    threading.Thread(target=produce, daemon=True).start()
    return iter(stream)


def test_pairs_of_variants_submitted_later_run_while_earlier_ones_do(ray3, tmp_path):
    vs = variants(tmp_path, 2, task_s=1.0)
    with EvalFleet(FleetOptions(backend="sleep", workers=4)) as fleet:
        done = list(_run(fleet, vs, gap_s=0.3))
    first = [c for c in done if c.job.variant.name == "v0"]
    later = [c for c in done if c.job.variant.name == "v1"]
    assert min(c.started for c in later) < max(c.finished for c in first)  # v1 did not wait for v0
    assert len({c.worker for c in done}) == 4  # 4 workers for 3 tasks per variant: all took pairs


def test_submit_rules_and_cancel(ray3, tmp_path):
    [v] = variants(tmp_path, 1)
    fleet = EvalFleet(FleetOptions(backend="sleep", workers=1))
    stream = fleet.stream(run_id="c", progress=False)
    stream.submit(v, TASKS[:1])
    with pytest.raises(ValueError, match="twice"):
        stream.submit(v, TASKS[:1])
    stream.submit(v, TASKS[1:])
    it = iter(stream)
    first = next(it)  # one pair done; the other two are pending or running
    stream.close(cancel=True)
    rest = list(it)
    assert len(rest) <= 1 and first.job.key not in {c.job.key for c in rest}  # pending ones dropped
    with pytest.raises(RuntimeError, match="after close"):
        stream.submit(v, TASKS)
    fleet.shutdown()


def test_killed_worker_pair_rerun_and_replacement_joins(ray3, tmp_path):
    vs = variants(tmp_path, 8, task_s=1.0)
    killed = []
    with EvalFleet(FleetOptions(backend="sleep", workers=2)) as fleet:
        stream = fleet.stream(run_id="k", progress=False)

        def kill_other(event):
            if event.kind == "done" and not killed:
                victim = next((w for w in fleet.busy if w != event.worker), None)
                if victim is not None:
                    killed.append((victim, time.time()))
                    os.kill(fleet.info[victim]["pid"], signal.SIGKILL)

        stream.notify = kill_other
        for v in vs:
            stream.submit(v, TASKS)
        stream.close()
        done = list(stream)
    assert killed and fleet.deaths == 1 and fleet.worker_starts == 3
    victim, t_kill = killed[0]
    assert sorted(c.job.key for c in done) == sorted((v.name, t.name) for v in vs for t in TASKS)
    retried = [c for c in done if c.job.attempt == 2]
    assert len(retried) == 1 and retried[0].worker != victim
    joined = min(c.started for c in done if c.worker == "sleep-2")  # the replacement took pairs
    survivor = {"sleep-0", "sleep-1"} - {victim}
    assert any(c.worker in survivor and t_kill < c.finished < joined for c in done)  # no one waited for it


def test_worker_needing_more_gpus_than_any_node_fails_before_starting(ray3, vllm_python):
    from raymoe.eval.options import EngineOptions
    from raymoe.ray_cluster import ResourceError

    fleet = EvalFleet(FleetOptions(backend="vllm", workers=2,
                                   engine=EngineOptions(gpus=True, tensor_parallel_size=2, vllm_python=vllm_python)))
    with pytest.raises(ResourceError, match=r"an eval worker \(vllm\) asks for 1 CPU, 2 GPU each.*0 GPU per node"):
        fleet.start()
    assert fleet.worker_starts == 0 and not fleet.workers
