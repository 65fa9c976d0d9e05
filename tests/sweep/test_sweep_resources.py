"""A spec asking for more GPUs per eval worker than any Ray node has: one clear line, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

ENV = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": ""}


@pytest.mark.parametrize("key,what", [
    ("worker_gpus: 2", "an eval worker (resources.worker_gpus) asks for 1 CPU, 2 GPU"),
    ("stage_gpus: 1", "a calibration stage (resources.stage_gpus) asks for 1 CPU, 1 GPU"),
])
def test_more_gpus_than_a_node_has_fails_before_any_work(tiny_model, tmp_path, key, what):
    out = tmp_path / "runs" / "gpus"
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(f"""\
        name: gpus
        model: {tiny_model("mixtral")}
        calibration: {{samples: 4, seq_len: 32}}
        methods: [{{name: frequency}}]
        ratios: [0.5]
        eval: {{tasks: [wiki_ppl], limit: 2}}
        resources: {{num_cpus: 2, num_gpus: 0, {key}}}
        output: {out}
        """))
    run = subprocess.run([sys.executable, "-m", "raymoe", "run", str(tmp_path / "spec.yaml"), "--quiet"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and what in errors[0] and "at most 2 CPU, 0 GPU per node, 1 node" in errors[0], errors
    assert not (tmp_path / "runs").exists()  # no run directory, no calibration cache
