"""Eval backends as objects: each knows its worker actor, its own checks and its Ray actor options.

`BACKENDS` (a raymoe.registry.Registry) maps the user-facing name (`FleetOptions.backend`,
`raymoe eval --backend`, a sweep spec's `eval.backend`) to a `Backend`. Callers resolve the name
once, `BACKENDS.get(name)`, and ask the object; nothing compares backend names.

- `hf`: transformers workers (raymoe.eval.hf_worker) in the driver's environment.
- `vllm`: vLLM workers (raymoe.eval.vllm_worker) in the vLLM environment (`.venv-vllm`, created by
  `make vllm-env`), started through Ray's runtime env with that interpreter (`py_executable`), so
  the main environment never imports vllm. A missing environment, or an architecture raymoe's
  vLLM plugin does not cover, is a user error raised before Ray starts.
- `sleep`: a benchmark engine of known cost (raymoe.eval.sleep_worker, bench/fleet_scale.py), not a scorer.

A new backend is a worker actor (`info()`, `evaluate(path, task, mask)`; raymoe.eval.engine_host.EngineHost
does the lm-eval part) and one entry here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from raymoe.errors import BackendError
from raymoe.registry import Registry, load_target

if TYPE_CHECKING:
    from raymoe.eval.options import EngineOptions

__all__ = ["Backend", "ActorBackend", "VLLMBackend", "BACKENDS", "BackendError", "scorer_names",
           "check_backend", "actor_options"]


@runtime_checkable
class Backend(Protocol):
    """What the fleet, `raymoe eval` and the sweep need of a backend."""

    name: str
    summary: str  # one line for `raymoe eval --help`
    scorer: bool  # scores lm-eval tasks (offered by `raymoe eval --backend`); False: a benchmark engine

    def worker_class(self) -> Any:
        """The Ray actor class of a worker: `cls(worker_id, EngineOptions)` with `info()` and `evaluate(...)`."""

    def check(self, opts: "EngineOptions", variant_paths: Sequence[str] = ()) -> None:
        """Raise BackendError when this backend cannot serve these variants (before Ray starts)."""

    def actor_options(self, opts: "EngineOptions", num_cpus: float) -> dict:
        """Ray `.options(...)` of a worker beyond its decorator's: `num_cpus`, and `num_gpus`, `runtime_env`."""


@dataclass(frozen=True)
class ActorBackend:
    """A backend whose workers are the Ray actor `worker` ("module:Class"), run in the driver's environment."""

    name: str
    worker: str
    summary: str
    scorer: bool = True

    def worker_class(self) -> Any:
        return load_target(self.worker)

    def check(self, opts: "EngineOptions", variant_paths: Sequence[str] = ()) -> None:
        self.worker_class()

    def actor_options(self, opts: "EngineOptions", num_cpus: float) -> dict:
        return {"num_cpus": num_cpus}


_HOW_TO = ("create it with `make vllm-env` (or scripts/setup_vllm_env.sh; on GPU clusters "
           "VLLM_PKG=vllm==0.32.0 TORCH_SPEC= scripts/setup_vllm_env.sh), or point --vllm-python / "
           "RAYMOE_VLLM_PYTHON at an interpreter with vllm and raymoe installed")


@dataclass(frozen=True)
class VLLMBackend(ActorBackend):
    """Workers in their own Python environment (see the module docstring); GPUs for tensor parallelism."""

    name: str = "vllm"
    worker: str = "raymoe.eval.vllm_worker:VLLMWorker"
    summary: str = "vLLM workers, in their own environment (.venv-vllm)"

    def python(self, opts: "EngineOptions") -> Path:
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

    def check(self, opts: "EngineOptions", variant_paths: Sequence[str] = ()) -> None:
        super().check(opts, variant_paths)
        py = self.python(opts)
        if not py.exists():
            raise BackendError(f"backend {self.name} needs its own Python environment, but {py} does not exist; "
                               f"{_HOW_TO}")
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

    def actor_options(self, opts: "EngineOptions", num_cpus: float) -> dict:
        from raymoe.eval.vllm_worker import vllm_env_vars

        out: dict = {"num_cpus": num_cpus,
                     "runtime_env": {"py_executable": str(self.python(opts)), "env_vars": vllm_env_vars(opts)}}
        if opts.gpus:
            out["num_gpus"] = opts.tensor_parallel_size
        return out


#: name -> Backend (the objects are light: a worker class is imported when first asked for)
BACKENDS: Registry[Backend] = Registry("backend", {b.name: b for b in (
    ActorBackend("hf", "raymoe.eval.hf_worker:HFWorker", "transformers workers (the default)"),
    VLLMBackend(),
    ActorBackend("sleep", "raymoe.eval.sleep_worker:SleepWorker", "sleeps for known costs (a benchmark)",
                 scorer=False),
)}, error=BackendError)


def scorer_names() -> list[str]:
    """The backends that score tasks (`raymoe eval --backend` choices), in registry order."""
    return [name for name in BACKENDS if BACKENDS.get(name).scorer]


def check_backend(name: str, opts: "EngineOptions", variant_paths: Sequence[str] = ()) -> None:
    """`BACKENDS.get(name).check(opts, variant_paths)`: an unknown name or an unusable backend fails here."""
    BACKENDS.get(name).check(opts, variant_paths)


def actor_options(name: str, opts: "EngineOptions", num_cpus: float) -> dict:
    """`BACKENDS.get(name).actor_options(opts, num_cpus)`."""
    return BACKENDS.get(name).actor_options(opts, num_cpus)
