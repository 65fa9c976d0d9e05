"""Sweep specs (YAML): model, calibration, methods x ratios x options, eval suite, resources, output.

Validated before any Ray work starts; an error names the spec line, e.g.
`jobs/x.yaml:7: methods[1].name: unknown method 'reapp' (known: ...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymoe.errors import RaymoeError

__all__ = ["SweepSpec", "MethodGrid", "CalibrationSpec", "EvalSpec", "ResourceSpec", "TestbedSpec",
           "load_spec", "SpecError", "calib_config", "fleet_options"]


class SpecError(RaymoeError):
    """A sweep spec is invalid; the message names the file and line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TestbedSpec(_Strict):
    """Options of `raymoe testbed` when `model: testbed`."""

    options: dict[str, Any] = Field(default_factory=dict)


class CalibrationSpec(_Strict):
    data: str = "wiki"
    samples: int = Field(32, gt=0)
    seq_len: int = Field(256, gt=1)
    stages: int = Field(1, gt=0)
    replicas: int = Field(1, gt=0)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)  # further calibration options


class MethodGrid(_Strict):
    """One method with a grid of option values: every combination is a variant per ratio."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] | None = None  # for seeded methods (random): one variant per seed

    def option_sets(self) -> list[dict[str, Any]]:
        import itertools

        keys = sorted(self.grid)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))] or [{}]
        sets = [self.options | c for c in combos]
        if self.seeds:
            sets = [s | {"seed": seed} for s in sets for seed in self.seeds]
        return sets


class EvalSpec(_Strict):
    tasks: list[str] = Field(default_factory=lambda: ["wiki_ppl"])
    limit: int | None = Field(None, gt=0)  # items per task (None: all)
    limits: dict[str, int] = Field(default_factory=dict)  # per-task overrides
    backend: Literal["hf", "vllm"] = "hf"
    workers: int = Field(1, gt=0)
    batch_size: int = Field(8, gt=0)


class ResourceSpec(_Strict):
    num_cpus: float | None = None  # for the local Ray started by raymoe (None: all)
    num_gpus: float | None = None
    address: str | None = None  # an existing cluster ("auto" inside a Ray job)
    stage_gpus: float = 0.0  # GPUs per calibration stage actor
    worker_gpus: int = Field(0, ge=0)  # GPUs per eval worker (= vLLM tensor parallel size; 0: CPU)
    placement: Literal["pack", "spread", "strict_spread"] = "pack"  # calibration stages across nodes


class SweepSpec(_Strict):
    name: str
    model: str  # checkpoint directory, or "testbed"
    testbed: TestbedSpec | None = None
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    methods: list[MethodGrid]
    ratios: list[float]
    uniform: bool = False
    baseline: bool = True  # also evaluate the unpruned model
    # which pruning variants are written as checkpoints (True: all; a list: method names or variant
    # names like "reap@0.5"); the others are scored virtually on the source model (raymoe.plan.mask).
    # Plans that merge experts are always materialised.
    materialize: bool | list[str] = False
    eval: EvalSpec = Field(default_factory=EvalSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    output: str

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("at least one ratio")
        for i, r in enumerate(v):
            if not 0.0 < r < 1.0:
                raise ValueError(f"ratio {r} at position {i} is outside (0, 1)")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[MethodGrid]) -> list[MethodGrid]:
        if not v:
            raise ValueError("at least one method")
        return v

    @model_validator(mode="after")
    def _model(self) -> "SweepSpec":
        if self.model != "testbed" and self.testbed is not None:
            raise ValueError("testbed options given but model is not 'testbed'")
        return self


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the YAML node at pydantic location `loc` (the deepest one that exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
            if nxt is None:  # an unknown key: point at the key itself
                knode = next((k for k, _ in node.value if k.value == key), None)
                return knode.start_mark.line + 1 if knode is not None else line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_spec(path: str | Path, *, check_names: bool = True) -> SweepSpec:
    """Parse and validate a sweep spec; SpecError names the file and line of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec {str(path)!r} does not exist")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise SpecError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: a sweep spec is a mapping (name, model, methods, ratios, ...)")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        raise SpecError(f"{path}:{_line_of(node, loc)}: {_where(loc)}: {msg}") from None
    if check_names:
        _check_names(spec, path, node)
    return spec


def _check_names(spec: SweepSpec, path: Path, node: yaml.Node) -> None:
    """Methods, their options and tasks must exist: checked here, before any Ray work."""
    from raymoe.sweep.registry_names import check_data, check_method, check_model, check_task

    for i, m in enumerate(spec.methods):
        for opts in m.option_sets():
            problem = check_method(m.name, opts)
            if problem:
                raise SpecError(f"{path}:{_line_of(node, ('methods', i))}: methods[{i}]: {problem}")
    for i, t in enumerate(spec.eval.tasks):
        problem = check_task(t)
        if problem:
            raise SpecError(f"{path}:{_line_of(node, ('eval', 'tasks', i))}: eval.tasks[{i}]: {problem}")
    if isinstance(spec.materialize, list):
        from raymoe.sweep.runner import variant_grid

        known = {m.name for m in spec.methods} | {c.name for c in variant_grid(spec)}
        for i, name in enumerate(spec.materialize):
            if name not in known:
                raise SpecError(f"{path}:{_line_of(node, ('materialize', i))}: materialize[{i}]: {name!r} is neither "
                                f"a method of this spec nor one of its variants ({', '.join(sorted(known)[:6])}, ...)")
    problem = check_model(spec.model, path.parent)
    if problem:
        raise SpecError(f"{path}:{_line_of(node, ('model',))}: model: {problem}")
    problem = check_data(spec.calibration.data)
    if problem:
        raise SpecError(f"{path}:{_line_of(node, ('calibration', 'data'))}: calibration.data: {problem}")
    try:
        calib_config(spec)
    except ValidationError as err:
        e = err.errors()[0]
        raise SpecError(f"{path}:{_line_of(node, ('calibration',))}: calibration: "
                        f"{'.'.join(map(str, e['loc']))}: {e['msg']}") from None


def calib_config(spec: SweepSpec):
    """The calibration config object the sweep will use (validated here, before any Ray work)."""
    from raymoe.calib.config import CalibConfig

    c = spec.calibration
    return CalibConfig(samples=c.samples, seq_len=c.seq_len, seed=c.seed, stages=c.stages, replicas=c.replicas,
                       num_gpus=spec.resources.stage_gpus, placement=spec.resources.placement, **c.options)


def fleet_options(spec: SweepSpec):
    """The eval fleet's options: backend, workers, batch size, and GPUs per worker as vLLM tensor parallelism."""
    from raymoe.eval.options import EngineOptions, FleetOptions

    gpus = spec.resources.worker_gpus
    engine = EngineOptions(batch_size=spec.eval.batch_size, tensor_parallel_size=max(1, gpus), gpus=gpus > 0)
    return FleetOptions(backend=spec.eval.backend, workers=spec.eval.workers, engine=engine)
