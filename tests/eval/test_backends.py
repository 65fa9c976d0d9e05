"""Eval backends as objects in one registry: the protocol, one unknown-name error, no dispatch on a name."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import raymoe
from raymoe.eval.backends import BACKENDS, Backend, BackendError, VLLMBackend, check_backend, scorer_names
from raymoe.eval.options import EngineOptions, FleetOptions

UNKNOWN = "unknown backend 'tgi' (known: hf, vllm, sleep)"


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_backend_satisfies_the_protocol(name):
    backend = BACKENDS.get(name)
    assert isinstance(backend, Backend) and backend.name == name and backend.summary
    cls = backend.worker_class()  # a Ray actor class built as cls(worker_id, EngineOptions)
    assert callable(cls.options) and hasattr(cls, "info") and hasattr(cls, "evaluate")
    assert list(inspect.signature(cls.__ray_actor_class__.__init__).parameters)[1:3] == ["worker_id", "opts"]
    opts = backend.actor_options(EngineOptions(vllm_python=Path(sys.executable)), 2.5)
    assert opts["num_cpus"] == 2.5 and set(opts) <= {"num_cpus", "num_gpus", "runtime_env"}
    assert BACKENDS.get(name) is backend  # one object, cached


def test_registry_lists_scorers_and_the_benchmark_engine():
    assert BACKENDS.names() == ["hf", "vllm", "sleep"]
    assert scorer_names() == ["hf", "vllm"]  # `sleep` is not offered by `raymoe eval --backend`


def test_unknown_backend_is_one_error_everywhere():
    with pytest.raises(BackendError, match=re.escape(UNKNOWN)):
        BACKENDS.get("tgi")
    with pytest.raises(BackendError, match=re.escape(UNKNOWN)):
        check_backend("tgi", EngineOptions())
    with pytest.raises(ValidationError, match=re.escape(UNKNOWN)):
        FleetOptions(backend="tgi")
    assert FleetOptions(backend="sleep").backend == "sleep"  # the option stays the user's string


def test_cli_offers_the_scorers_only(capsys):
    from raymoe.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "m", "--tasks", "arc_easy", "--backend", "sleep", "--out", "x"])
    assert re.search(r"--backend: invalid choice: 'sleep' \(choose from '?hf'?, '?vllm'?\)", capsys.readouterr().err)


def test_vllm_actor_options_carry_its_interpreter_env_and_gpus(tmp_path):
    vllm = BACKENDS.get("vllm")
    py = tmp_path / "venv" / "bin" / "python"
    cpu = vllm.actor_options(EngineOptions(vllm_python=py, kv_cache_gib=3), 1)
    assert cpu["runtime_env"]["py_executable"] == str(py) and "num_gpus" not in cpu
    assert cpu["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert cpu["runtime_env"]["env_vars"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # no Ray inside the actor
    gpu = vllm.actor_options(EngineOptions(vllm_python=py, gpus=True, tensor_parallel_size=4), 1)
    assert gpu["num_gpus"] == 4
    hf = BACKENDS.get("hf").actor_options(EngineOptions(gpus=True, tensor_parallel_size=4), 1)
    assert hf == {"num_cpus": 1}  # the driver's environment, CPUs only


def test_vllm_check_finds_a_missing_or_incomplete_environment(tmp_path, monkeypatch):
    vllm = BACKENDS.get("vllm")
    with pytest.raises(BackendError, match="backend vllm needs its own Python environment.*make vllm-env"):
        vllm.check(EngineOptions(vllm_python=tmp_path / "none" / "bin" / "python"))
    env = tmp_path / "repo" / ".venv-vllm"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").touch()
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.delenv("RAYMOE_VLLM_PYTHON", raising=False)
    assert VLLMBackend().python(EngineOptions()) == Path(".venv-vllm/bin/python").resolve()
    with pytest.raises(BackendError, match=r"incomplete \(no .installed marker\)"):
        vllm.check(EngineOptions())
    (env / ".installed").touch()
    vllm.check(EngineOptions())  # complete: nothing raised
    BACKENDS.get("hf").check(EngineOptions(vllm_python=tmp_path / "none"))  # hf needs no other environment


NAMES = "|".join(map(re.escape, BACKENDS.names()))
BRANCH = re.compile(rf"""(==|!=)\s*['"]({NAMES})['"]|['"]({NAMES})['"]\s*(==|!=)"""
                    rf"""|\bin\s*[(\[{{][^)\]}}]*['"]({NAMES})['"]""")


def test_no_code_branches_on_a_backend_name():
    """Behaviour is a property of the backend object: no `backend == "vllm"` (or `in ("hf", ...)`) in raymoe/."""
    root = Path(raymoe.__file__).parent
    hits = [f"{p.relative_to(root.parent)}:{i}: {line.strip()}" for p in sorted(root.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if BRANCH.search(line)]
    assert hits == []
    assert BRANCH.search('if backend != "vllm":') and BRANCH.search("x = opts.backend in ('hf', 'sleep')")


def test_backends_import_no_worker_or_ray():
    """Listing and validating backend names imports no worker module (so no ray, torch or lm-eval)."""
    code = ("import sys; from raymoe.eval.options import FleetOptions; FleetOptions(backend='vllm'); "
            "from raymoe.eval.backends import scorer_names; scorer_names(); "
            "print(sorted(m for m in ('ray', 'lm_eval', 'raymoe.eval.hf_worker', 'raymoe.eval.vllm_worker') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
