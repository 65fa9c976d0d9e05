"""The fleet: 2 workers score 3 variants x 2 tasks, every row once, also when a worker is killed mid-run."""

from __future__ import annotations

import os
import signal

import pytest

from raymoe.eval.fleet import EvalFleet
from raymoe.eval.options import EngineOptions, FleetOptions
from raymoe.eval.results import KEY, rows_frame
from raymoe.eval.tasks import parse_tasks
from raymoe.eval.variants import parse_variants

pytestmark = pytest.mark.integration

TASKS = "arc_easy:6,wiki_ppl:2"
METRICS = {"arc_easy": {"acc", "acc_norm"}, "wiki_ppl": {"word_perplexity", "byte_perplexity", "bits_per_byte"}}


def expected_keys(run: str, variants) -> set[tuple]:
    return {(run, v.name, t, m) for v in variants for t, ms in METRICS.items() for m in ms}


@pytest.fixture(scope="module")
def variants(eval_models):
    m = eval_models("mixtral")
    return parse_variants([f"base={m['base']}", f"uniform={m['uniform']}", f"mixed={m['mixed']}"])


@pytest.fixture(scope="module")
def clean_run(ray_local, variants):
    events = []
    with EvalFleet(FleetOptions(backend="hf", workers=2, engine=EngineOptions(batch_size=4))) as fleet:
        rows = fleet.run(variants, parse_tasks(TASKS), run_id="clean", on_event=events.append, progress=False)
    return rows, events


def test_all_pairs_scored_once(clean_run, variants):
    rows, events = clean_run
    df = rows_frame(rows)  # raises on a duplicate (run, variant, task, metric)
    assert set(df.select(KEY).rows()) == expected_keys("clean", variants)
    assert df.height == 3 * 5
    assert {e.worker for e in events if e.kind == "done"} == {"hf-0", "hf-1"}  # both workers took pairs
    assert not [e for e in events if e.kind == "died"]
    assert set(df["attempt"].to_list()) == {1}
    arc = df.filter(df["task"] == "arc_easy")
    assert set(arc["n"].to_list()) == {6} and set(arc["limit"].to_list()) == {6}
    # provenance comes from each checkpoint: per-layer counts and the plan that made it
    per = {r["variant"]: r for r in df.iter_rows(named=True)}
    assert per["base"]["experts_per_layer"] == [8, 8, 8, 8] and per["base"]["method"] == "unpruned"
    assert per["uniform"]["experts_per_layer"] == [6, 6, 6, 6] and per["uniform"]["uniform"]
    assert per["mixed"]["experts_per_layer"] == [4, 6, 8, 3] and per["mixed"]["method"] == "manual-mixed"
    assert per["mixed"]["model_type"] == "raymoe_mixtral" and not per["mixed"]["uniform"]


def test_worker_killed_mid_run(ray_local, variants, clean_run):
    events, killed = [], []

    def kill_a_busy_worker(event):
        events.append(event)
        if event.kind == "done" and not killed:
            victim = next((w for w in fleet.busy if w != event.worker), None)  # the other worker, mid-pair
            if victim is not None:
                killed.append(victim)
                os.kill(fleet.info[victim]["pid"], signal.SIGKILL)

    with EvalFleet(FleetOptions(backend="hf", workers=2, engine=EngineOptions(batch_size=4))) as fleet:
        rows = fleet.run(variants, parse_tasks(TASKS), run_id="clean", on_event=kill_a_busy_worker, progress=False)
    assert killed, "no worker was busy when a pair finished"
    died = [e for e in events if e.kind == "died"]
    assert [e.worker for e in died] == killed  # its in-flight pair was lost once...
    pair = died[0].job.key
    assert fleet.deaths == 1 and any(e.kind == "replaced" for e in events)

    df = rows_frame(rows)
    assert set(df.select(KEY).rows()) == expected_keys("clean", variants)  # nothing lost, nothing twice
    retried = df.filter(df["attempt"] == 2)  # ...and re-run on another worker
    assert set(zip(retried["variant"], retried["task"])) == {pair}
    assert killed[0] not in set(retried["worker"].to_list())
    # the re-run pair (and every other) scores exactly as in the undisturbed run
    def values(frame):
        return {tuple(r[:-1]): r[-1] for r in frame.select(*KEY, "value").iter_rows()}

    assert values(df) == pytest.approx(values(rows_frame(clean_run[0])), rel=1e-9)
