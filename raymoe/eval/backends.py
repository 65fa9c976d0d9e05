"""Eval backends: name -> worker actor class ("module:Class"), and where each one's Python lives.

`hf` workers run in the driver's environment. `vllm` workers run in the vLLM
environment (`.venv-vllm`, created by `make vllm-env`), started through Ray's
runtime env with that interpreter (`py_executable`), so the main environment
never imports vllm. A missing environment is a user error that says how to
create it.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from raymoe.errors import RaymoeError
from raymoe.eval.options import EngineOptions

__all__ = ["BACKENDS", "BackendError", "worker_class", "vllm_python", "check_backend", "actor_options"]

#: backend name -> "module:Class" of its worker actor
BACKENDS: dict[str, str] = {
    "hf": "raymoe.eval.hf_worker:HFWorker",
    "vllm": "raymoe.eval.vllm_worker:VLLMWorker",
    # a benchmark tool, not a scorer: an engine of known cost (bench/fleet_scale.py; engineer A)
    "sleep": "raymoe.eval.sleep_worker:SleepWorker",
}

_HOW_TO = ("create it with `make vllm-env` (or scripts/setup_vllm_env.sh; on GPU clusters "
           "VLLM_PKG=vllm==0.32.0 TORCH_SPEC= scripts/setup_vllm_env.sh), or point --vllm-python / "
           "RAYMOE_VLLM_PYTHON at an interpreter with vllm and raymoe installed")


class BackendError(RaymoeError):
    """An unknown backend, or a backend whose environment is missing."""


def worker_class(backend: str):
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), cls)


def vllm_python(opts: EngineOptions) -> Path:
    """The vLLM environment's interpreter: option, $RAYMOE_VLLM_PYTHON, ./.venv-vllm, or beside the repo."""
    if opts.vllm_python is not None:
        return Path(opts.vllm_python)
    if os.environ.get("RAYMOE_VLLM_PYTHON"):
        return Path(os.environ["RAYMOE_VLLM_PYTHON"])
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.exists():
            return candidate
    return Path.cwd() / ".venv-vllm" / "bin" / "python"


def check_backend(backend: str, opts: EngineOptions, variant_paths: list[str] = ()) -> None:
    """Fail fast (before Ray starts) when the backend cannot serve these variants."""
    worker_class(backend)
    if backend != "vllm":
        return
    py = vllm_python(opts)
    if not py.exists():
        raise BackendError(f"backend vllm needs its own Python environment, but {py} does not exist; {_HOW_TO}")
    if not (py.parent.parent / ".installed").exists() and opts.vllm_python is None \
            and not os.environ.get("RAYMOE_VLLM_PYTHON"):
        raise BackendError(f"the vLLM environment at {py.parent.parent} is incomplete (no .installed marker); "
                           f"{_HOW_TO}")
    from raymoe.vllm_plugin import VLLM_ARCHITECTURES, supports

    for path in variant_paths:
        archs = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
        bad = [a for a in archs if not supports(a)]
        if bad:
            raise BackendError(f"{path}: vLLM has no implementation of {bad[0]} (raymoe's vLLM plugin covers "
                               f"{', '.join(VLLM_ARCHITECTURES)}); use --backend hf")


def actor_options(backend: str, opts: EngineOptions, num_cpus: float) -> dict:
    """Ray actor options beyond the decorator's: the vLLM interpreter and env, GPUs for tensor parallelism."""
    out: dict = {"num_cpus": num_cpus}
    if backend == "vllm":
        from raymoe.eval.vllm_worker import vllm_env_vars

        out["runtime_env"] = {"py_executable": str(vllm_python(opts)), "env_vars": vllm_env_vars(opts)}
        if opts.gpus:
            out["num_gpus"] = opts.tensor_parallel_size
    return out
