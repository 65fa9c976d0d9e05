"""Sweep specs (YAML): model, calibration, methods x ratios x options, eval suite, resources, output.

The spec embeds the component configs themselves, so every field is declared
once: `calibration` is a CalibConfig (plus the calibration text `data`),
`testbed` a TestbedConfig, and each method's options are validated against that
method's own Config. Validated before any Ray work starts; an error names the
spec line, e.g. `jobs/x.yaml:7: methods[1].name: unknown method 'reapp' (known: ...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from raymoe.calib.config import CalibConfig, Placement
from raymoe.errors import RaymoeError, SpecError
from raymoe.testbed.config import TestbedConfig, TestbedConfigError

__all__ = ["SweepSpec", "MethodGrid", "CalibrationSpec", "EvalSpec", "ResourceSpec", "load_spec", "SpecError",
           "calib_config", "fleet_options", "SWEEP_CALIBRATION"]

#: a sweep calibrates smaller than `raymoe calibrate` unless the spec says otherwise
SWEEP_CALIBRATION: dict[str, Any] = {"samples": 32, "seq_len": 256, "stages": 1}
#: CalibConfig fields a sweep takes from `resources` (they place actors, like the eval workers' GPUs)
_FROM_RESOURCES = {"num_gpus": "resources.stage_gpus", "placement": "resources.placement"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _problem(check, value):
    """Run a raymoe check; its error becomes the validation message (pydantic keeps the spec location)."""
    try:
        check(value)
    except RaymoeError as err:
        raise ValueError(str(err)) from None
    return value


def _check_data(data: str) -> None:
    """A calibration source must be a corpus name or an existing file (read later, on the stage actors)."""
    from raymoe.data.packages import NAMED_CORPORA
    from raymoe.data.splits import SPLIT_CORPORA

    if not (data in NAMED_CORPORA or data in SPLIT_CORPORA or Path(data).is_file()):
        raise SpecError(f"{data!r} is neither a corpus name ({', '.join([*NAMED_CORPORA, *SPLIT_CORPORA])}) "
                        f"nor an existing file")


def _check_task(name: str) -> None:
    from raymoe.eval.tasks import check_task_name

    check_task_name(name)


def _check_method(name: str) -> None:
    from raymoe.methods import METHODS

    METHODS.target(name)  # the registry's error, listing the known names; imports nothing


class CalibrationSpec(CalibConfig):
    """The sweep's calibration: CalibConfig's fields (SWEEP_CALIBRATION defaults) and the text it reads."""

    data: Annotated[str, AfterValidator(lambda v: _problem(_check_data, v))] = "wiki"

    @model_validator(mode="before")
    @classmethod
    def _sweep_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = {k: v for k, v in SWEEP_CALIBRATION.items()
                        if not (k == "stages" and data.get("stage_memory_gb") is not None)}
            data = defaults | data
        return data

    @field_validator(*_FROM_RESOURCES, mode="before")
    @classmethod
    def _from_resources(cls, v: Any, info) -> Any:
        raise ValueError(f"set by {_FROM_RESOURCES[info.field_name]} in a sweep")


class MethodGrid(_Strict):
    """One method with a grid of option values: every combination is a variant per ratio.

    Each combination is validated against the method's own Config (imported through
    the METHODS registry); the validated configs are kept (`configs()`).
    """

    name: Annotated[str, AfterValidator(lambda v: _problem(_check_method, v))]
    options: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] | None = None  # for seeded methods (random): one variant per seed
    _configs: list[BaseModel] = PrivateAttr(default_factory=list)

    def option_sets(self) -> list[dict[str, Any]]:
        """The options of every variant, as written (the sweep's step ids hash these)."""
        import itertools

        keys = sorted(self.grid)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))] or [{}]
        sets = [self.options | c for c in combos]
        if self.seeds:
            sets = [s | {"seed": seed} for s in sets for seed in self.seeds]
        return sets

    def configs(self) -> list[BaseModel]:
        """The method's validated Config of every option set (same order as `option_sets`)."""
        return list(self._configs)

    @model_validator(mode="after")
    def _validate_options(self) -> "MethodGrid":
        from raymoe.methods import METHODS, option_message

        config, configs = METHODS.get(self.name).Config, []
        for opts in self.option_sets():
            try:
                configs.append(config.model_validate(opts))
            except ValidationError as err:
                e = err.errors()[0]
                key = e["loc"][0] if e["loc"] else None
                where = (("seeds",) if key == "seed" and self.seeds else ("grid", key) if key in self.grid
                         else ("options", key) if key in self.options else ())
                msg = PydanticCustomError("method_option", option_message(self.name, config, e))
                raise ValidationError.from_exception_data(
                    "MethodGrid", [InitErrorDetails(type=msg, loc=where, input=e.get("input"))]) from None
        self._configs = configs
        return self


class EvalSpec(_Strict):
    tasks: list[Annotated[str, AfterValidator(lambda v: _problem(_check_task, v))]] = Field(
        default_factory=lambda: ["wiki_ppl"])
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
    placement: Placement = "pack"  # calibration stages across nodes (CalibConfig.placement)


class SweepSpec(_Strict):
    name: str
    model: str  # checkpoint directory, or "testbed"
    testbed: TestbedConfig | None = None  # `raymoe testbed`'s options when model is "testbed"
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

    @field_validator("testbed")
    @classmethod
    def _testbed(cls, v: TestbedConfig | None, info) -> TestbedConfig | None:
        if v is not None and info.data.get("model") != "testbed":
            raise ValueError("testbed options given but model is not 'testbed'")
        return v


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of pydantic location `loc` in the YAML (a mapping entry: its key's line; deepest that exists)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == key), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line + 1, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
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
        raise SpecError(f"{path}:{_line_of(node, loc)}: {_where(loc) + ': ' if loc else ''}{msg}") from None
    except TestbedConfigError as err:  # the builder's cross-field checks (E dividing the MLP width, ...)
        raise SpecError(f"{path}:{_line_of(node, ('testbed',))}: testbed: {err}") from None
    if check_names:
        _check_names(spec, path, node)
    return spec


def _check_names(spec: SweepSpec, path: Path, node: yaml.Node) -> None:
    """The checks beyond the models' own: materialised names are variants of this spec, the model exists."""
    if isinstance(spec.materialize, list):
        from raymoe.sweep.pipeline import variant_grid

        known = {m.name for m in spec.methods} | {c.name for c in variant_grid(spec)}
        for i, name in enumerate(spec.materialize):
            if name not in known:
                raise SpecError(f"{path}:{_line_of(node, ('materialize', i))}: materialize[{i}]: {name!r} is neither "
                                f"a method of this spec nor one of its variants ({', '.join(sorted(known)[:6])}, ...)")
    if spec.model != "testbed":
        from raymoe.moe import MoeModelSpec

        try:
            MoeModelSpec.from_pretrained(spec.model)
        except RaymoeError as err:
            raise SpecError(f"{path}:{_line_of(node, ('model',))}: model: {err}") from None


def calib_config(spec: SweepSpec) -> CalibConfig:
    """The calibration config the sweep uses: the spec's, with the stage actors' GPUs and placement from resources."""
    fields = spec.calibration.model_dump(exclude={"data", "stats_schema"})
    return CalibConfig(**fields | {"num_gpus": spec.resources.stage_gpus, "placement": spec.resources.placement})


def fleet_options(spec: SweepSpec):
    """The eval fleet's options: backend, workers, batch size, and GPUs per worker as vLLM tensor parallelism."""
    from raymoe.eval.options import EngineOptions, FleetOptions

    gpus = spec.resources.worker_gpus
    engine = EngineOptions(batch_size=spec.eval.batch_size, tensor_parallel_size=max(1, gpus), gpus=gpus > 0)
    return FleetOptions(backend=spec.eval.backend, workers=spec.eval.workers, engine=engine)
