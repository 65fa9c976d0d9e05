"""`raymoe --help`, `raymoe methods` and spec validation import neither torch nor transformers, and the
variable-expert architectures are registered with transformers only when asked for (`ensure_registered`).

Each check runs in a fresh interpreter, so what earlier tests imported does not count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "torch_geometric", "graspologic", "ray", "vllm", "polars", "pyarrow")


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last, returned parsed."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


LOADED = f"import json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def test_import_raymoe_is_light():
    assert run_python("import raymoe; raymoe.MoeModelSpec; import raymoe.moe, raymoe.calib, raymoe.store, "
                      "raymoe.cli; from raymoe.moe import MoeModelSpec, arch_for_config\n" + LOADED) == []


def test_help_is_light():
    code = ("import contextlib, io\nfrom raymoe.cli import main\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n        main(['--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
            "assert 'methods' in buf.getvalue() and 'calibrate' in buf.getvalue()\n" + LOADED)
    assert run_python(code) == []


def test_methods_listing_is_light():
    """`raymoe methods` instantiates every method and reads its pydantic config: still no torch."""
    code = ("import contextlib, io, json as j\nfrom raymoe.cli import main\nfrom raymoe.methods import METHODS\n"
            "buf = io.StringIO()\nwith contextlib.redirect_stdout(buf):\n    assert main(['methods', '--json']) == 0\n"
            "rows = j.loads(buf.getvalue())\nassert [r['name'] for r in rows] == METHODS.names(), rows\n"
            "assert any(r['options'] for r in rows)\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['methods']) == 0\n" + LOADED)
    assert run_python(code) == []


def test_spec_validation_is_light():
    """Every jobs/*.yaml validated with its name checks (methods and options, tasks, data, model); specs
    naming a model path absent here fail with a SpecError, which needs no torch either."""
    code = ("import glob\nfrom raymoe.errors import RaymoeError\nfrom raymoe.sweep.sweep_spec import load_spec\n"
            "ok = 0\nfor p in sorted(glob.glob('jobs/*.yaml')):\n    try:\n        load_spec(p)\n        ok += 1\n"
            "    except RaymoeError as err:\n        assert 'does not exist' in str(err), err\n"
            "assert ok >= 2, ok\n" + LOADED)
    assert run_python(code) == []


def test_registration_happens_on_request_only():
    code = ("import raymoe, transformers\nfrom transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
            "before = 'raymoe_mixtral' in CONFIG_MAPPING\nraymoe.ensure_registered()\nraymoe.ensure_registered()\n"
            "from raymoe.moe.arch import ARCHS\nfrom raymoe.moe.variable import VARIABLE_CLASSES\n"
            "import json\nprint(json.dumps([before, all(a.variable_model_type in CONFIG_MAPPING for a in "
            "ARCHS.values()), sorted(VARIABLE_CLASSES) == sorted(ARCHS)]))")
    assert run_python(code) == [False, True, True]


def test_variable_checkpoint_loads_after_apply_without_explicit_registration(tmp_path):
    """A process that writes a mixed-count checkpoint with `apply_plan` can load it with the Auto classes
    (apply registers the architectures it wrote); the loaded model has the per-layer counts."""
    code = f"""
import json
from transformers import AutoModelForCausalLM
from raymoe.checkpoint import apply_plan
from raymoe.moe import MoeModelSpec
from raymoe.plan import LayerPlan, PrunePlan
from raymoe.testing import build_tiny_model
src = build_tiny_model("mixtral", {str(tmp_path / 'src')!r})
spec = MoeModelSpec.from_pretrained(src)
keep = {{l: list(range(8 - 2 * (i % 2))) for i, l in enumerate(spec.moe_layers)}}
plan = PrunePlan(method="test", ratio=0.25, model=str(src), model_type="mixtral",
                 layers=[LayerPlan(layer=l, num_experts=8, keep=k) for l, k in keep.items()])
out = apply_plan(src, plan, {str(tmp_path / 'out')!r}, progress=False)
model = AutoModelForCausalLM.from_pretrained(out)
print(json.dumps([type(model).__name__, [len(layer.mlp.experts.gate_up_proj) for layer in model.model.layers]]))
"""
    name, counts = run_python(code)
    assert name == "RaymoeMixtralForCausalLM"
    assert counts == [8, 6, 8, 6]
