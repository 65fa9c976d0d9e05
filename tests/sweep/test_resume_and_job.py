"""Sweeps end to end: killed and resumed without redoing steps; submitted as a Ray job to a loopback head."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

pytestmark = pytest.mark.integration

ENV = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def spec_text(model: Path, out: Path, workers: int = 1) -> str:
    return textwrap.dedent(f"""\
        name: tiny
        model: {model}
        calibration: {{data: wiki, samples: 8, seq_len: 64, stages: 2}}
        methods:
          - {{name: frequency}}
          - {{name: reap}}
          - {{name: random, seeds: [0]}}
        ratios: [0.5]
        eval: {{tasks: [wiki_ppl, arc_easy], limit: 4, workers: {workers}}}
        resources: {{num_cpus: {max(4, workers + 1)}}}
        output: {out}
        """)


def values(run_dir: Path) -> list[tuple]:
    df = pl.read_parquet(run_dir / "results.parquet")
    return sorted(df.select("variant", "task", "metric", "value").rows())


def records(run_dir: Path) -> dict[str, float]:
    return {p.stem: json.loads(p.read_text())["finished"] for p in (run_dir / "steps").glob("*.json")}


def raymoe(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raymoe", *args], env=ENV, capture_output=True, text=True,
                          timeout=900, **kw)


@pytest.fixture(scope="module")
def sequential(tiny_model, tmp_path_factory) -> Path:
    """The reference: the sweep with one eval worker (pairs scored one after another)."""
    root = tmp_path_factory.mktemp("sweeps")
    (root / "full.yaml").write_text(spec_text(tiny_model("mixtral"), root / "runs" / "full"))
    full = raymoe("run", str(root / "full.yaml"), "--quiet")
    assert full.returncode == 0, full.stderr[-2000:]
    return root / "runs" / "full"


def busy_at_once(spans: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one instant."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_parallel_sweep_overlaps_variants_and_equals_sequential(sequential, tmp_path):
    """3 workers > 2 tasks per variant: pairs of different variants run at once, on every worker."""
    spec = tmp_path / "parallel.yaml"
    spec.write_text(spec_text(Path(json.loads((sequential / "run.json").read_text())["model"]),
                              sequential.parent / "parallel", workers=3))
    run = raymoe("run", str(spec), "--quiet")
    assert run.returncode == 0, run.stderr[-2000:]
    run_dir = sequential.parent / "parallel"
    evals = [json.loads(p.read_text())["info"] for p in (run_dir / "steps").glob("eval-*.json")]
    assert len(evals) == 8
    assert {e["worker"] for e in evals} == {"hf-0", "hf-1", "hf-2"}
    spans = [(e["started"], e["finished"]) for e in evals]
    assert busy_at_once(spans) == 3  # all three workers busy at one instant...
    assert any(a["variant"] != b["variant"] and a["worker"] != b["worker"]
               and a["started"] < b["finished"] and b["started"] < a["finished"]
               for a in evals for b in evals)  # ...with pairs of different variants overlapping
    assert json.loads((run_dir / "steps.json").read_text())["eval_worker_starts"] == 3
    assert values(run_dir) == values(sequential)  # equal to the one-worker run


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def test_virtual_sweep_equals_materialized_and_loads_once(sequential, tmp_path):
    """The default sweep scored its pruning plans virtually: no checkpoint written, the source loaded once
    by its one worker; `--materialize` writes every variant and gives the same results (1e-5)."""
    record = json.loads((sequential / "steps.json").read_text())
    assert record["virtual_variants"] == 3 and record["engine_loads"] == 1
    assert not (sequential / "variants").exists() and len(list((sequential / "plans").glob("*/plan.json"))) == 3
    model = Path(json.loads((sequential / "run.json").read_text())["model"])
    (tmp_path / "mat.yaml").write_text(spec_text(model, sequential.parent / "materialized"))
    run = raymoe("run", str(tmp_path / "mat.yaml"), "--quiet", "--materialize")
    assert run.returncode == 0, run.stderr[-2000:]
    mat = sequential.parent / "materialized"
    assert len(list((mat / "variants").iterdir())) == 3 and _bytes(mat / "variants") > 10 * _bytes(sequential / "plans")
    assert json.loads((mat / "steps.json").read_text())["engine_loads"] == 4  # source + 3 checkpoints
    got, want = values(sequential), values(mat)
    assert [r[:3] for r in got] == [r[:3] for r in want]
    assert all(abs(a[3] - b[3]) <= 1e-5 * max(1.0, abs(b[3])) for a, b in zip(got, want))
    df = pl.read_parquet(sequential / "results.parquet")
    assert set(df.filter(pl.col("method") != "unpruned")["virtual"].to_list()) == {True}
    assert set(pl.read_parquet(mat / "results.parquet")["virtual"].to_list()) == {False}


def test_busy_at_once_counts_overlaps():
    assert busy_at_once([(0, 1), (1, 2), (2, 3)]) == 1  # back to back: never two at once
    assert busy_at_once([(0, 3), (1, 2), (1.5, 4), (5, 6)]) == 3


def test_killed_sweep_resumes_without_redoing_steps(sequential, tmp_path):
    model = Path(json.loads((sequential / "run.json").read_text())["model"])
    runs = sequential.parent  # the calibration cache is shared with the reference run
    (tmp_path / "killed.yaml").write_text(spec_text(model, runs / "killed", workers=2))

    # start the same sweep in another run directory and kill it once some variants are evaluated
    proc = subprocess.Popen([sys.executable, "-m", "raymoe", "run", str(tmp_path / "killed.yaml"), "--quiet"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    steps = runs / "killed" / "steps"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if len(list(steps.glob("eval-*.json"))) >= 4:  # baseline's 2 tasks + at least one variant
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records(runs / "killed")
    assert not (runs / "killed" / "results.parquet").exists()
    assert 4 <= sum(k.startswith("eval-") for k in before) < 8

    resumed = raymoe("run", str(tmp_path / "killed.yaml"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dir = runs / "killed"
    record = json.loads((run_dir / "steps.json").read_text())
    executed = set(record["executed"])
    assert executed and not executed & set(before), "a finished step was redone"
    assert record["eval_workers_started"] is True and record["eval_worker_starts"] == 2  # it scored the rest
    after = records(run_dir)
    evals = {k for k in after if k.startswith("eval-")}
    assert {k for k in executed if k.startswith("eval-")} == evals - set(before)  # exactly the missing pairs
    assert all(after[k] == t for k, t in before.items()), "a finished step's record was rewritten"
    assert sum(k.startswith("eval-") for k in after) == 8  # (3 variants + unpruned) x 2 tasks
    assert values(run_dir) == values(sequential)

    again = raymoe("run", str(tmp_path / "killed.yaml"), "--quiet")  # finished: nothing to do, no eval workers
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run_dir / "steps.json").read_text()) == {"executed": [], "eval_workers_started": False,
                                                                 "eval_worker_starts": 0, "engine_loads": 0,
                                                                 "virtual_variants": 3}
    assert values(run_dir) == values(sequential)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_as_ray_job_on_loopback_head(tiny_model, tmp_path):
    ray_bin = str(Path(sys.executable).parent / "ray")
    port, dash, agent, agent_grpc, metrics = (_free_port() for _ in range(5))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "spec.yaml").write_text(spec_text(tiny_model("mixtral"), tmp_path / "runs" / "job"))
    env = ENV | {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}  # loopback test cluster: no token
    # --block keeps the head's processes in this process group, so the test stops exactly them
    # (`ray stop` would stop every Ray instance on the machine, other tests' included)
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4",
                             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                             f"--metrics-export-port={metrics}", "--disable-usage-stats", f"--temp-dir={tempfile.mkdtemp(prefix='rj', dir='/tmp')}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:  # the head's job agent comes up some seconds after `ray start` returns
            sub = subprocess.run([ray_bin, "job", "submit", "--address", address, "--working-dir", str(job_dir),
                                  "--no-wait", "--", sys.executable, "-m", "raymoe", "run", "spec.yaml", "--quiet"],
                                 env=env, capture_output=True, text=True, timeout=180)
            if sub.returncode == 0 or time.time() > deadline:
                break
            time.sleep(3)
        assert sub.returncode == 0, sub.stderr[-2000:]
        job_id = re.search(r"raysubmit_[A-Za-z0-9]+", sub.stdout + sub.stderr).group(0)
        status = ""
        deadline = time.time() + 600
        while time.time() < deadline:
            st = subprocess.run([ray_bin, "job", "status", "--address", address, job_id], env=env,
                                capture_output=True, text=True, timeout=60)
            status = (st.stdout + st.stderr).upper()  # the verdict is logged on stderr
            if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
                break
            time.sleep(2)
        logs = subprocess.run([ray_bin, "job", "logs", "--address", address, job_id], env=env,
                              capture_output=True, text=True, timeout=60).stdout
        assert "SUCCEEDED" in status, logs[-3000:]
        assert "report:" in logs
        run_dir = tmp_path / "runs" / "job"
        df = pl.read_parquet(run_dir / "results.parquet")
        assert df.select("variant", "task").unique().height == 8
        assert (run_dir / "report" / "report.md").is_file()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
