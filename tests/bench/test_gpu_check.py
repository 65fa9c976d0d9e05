"""bench/gpu_check.py: its device-vs-CPU checks pass on the CPU (bf16 against float32), and everything it
imports loads where ray, polars, pyarrow and vllm are not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"

#: a meta-path hook that makes the packages gpu_check must not need fail to import
BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "polars", "pyarrow", "vllm"}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, _Block())
"""


def run_blocked(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_check_modules_load_without_ray_polars_pyarrow_vllm():
    """The modules gpu_check imports (and the method it plans with) load with the hook in place."""
    code = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("gpu_check", {str(SCRIPT)!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
import raymoe, raymoe.calib.calibration, raymoe.calib.executors, raymoe.calib.config, raymoe.data.text
import raymoe.checkpoint, raymoe.methods, raymoe.testing.tiny, raymoe.store.calib_stats
from raymoe.methods import METHODS
METHODS.get("reap")
from raymoe.calib.executors import LocalExecutor
try:
    import ray
except ModuleNotFoundError:
    print("blocked")
"""
    out = run_blocked(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("blocked")  # the hook works, so the imports above really ran without ray


def test_gpu_check_passes_on_cpu(tmp_path):
    """The whole check (calibration bf16 vs float32 in-process, REAP plan, apply, transformers evaluation)
    on the tiny model, under the import block: every check passes and the JSON lists them."""
    res = tmp_path / "check.json"
    code = f"""
import runpy, sys
sys.argv = ["gpu_check.py", "--device", "cpu", "--size", "tiny", "--json", {str(res)!r}]
try:
    runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
except SystemExit as e:
    sys.exit(e.code)
"""
    out = run_blocked(code, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "gpu_check: PASS" in out.stdout
    got = json.loads(res.read_text())
    names = [c["check"] for c in got["checks"]]
    assert {"stats: usage", "stats: reap", "stats: probe_inputs", "logits", "perplexity"} <= set(names)
    assert all(c["pass"] for c in got["checks"]), got["checks"]
    assert got["device"] == "cpu" and got["dtype"] == "bfloat16"
    # bf16 really differs from float32 (the comparison is not of a run with itself)
    assert max(c["value"] for c in got["checks"] if c["check"].startswith("stats: ")) > 0


def test_gpu_check_refuses_cuda_without_a_device(monkeypatch, capsys):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
