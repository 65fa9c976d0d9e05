"""A sweep spec embeds the component configs: calibration (CalibConfig), testbed (TestbedConfig), each method's
Config; their errors keep the spec's file:line, and the step ids of existing specs do not change."""

from __future__ import annotations

import textwrap

import pytest

from raymoe.calib.config import CalibConfig
from raymoe.sweep.records import step_id
from raymoe.sweep.pipeline import variant_grid
from raymoe.sweep.sweep_spec import SpecError, calib_config, load_spec
from raymoe.testbed.config import TestbedConfig


def spec_file(tmp_path, body: str) -> str:
    p = tmp_path / "spec.yaml"
    p.write_text("name: t\nmodel: testbed\n" + textwrap.dedent(body) + "ratios: [0.5]\noutput: results/t\n")
    return p


def error_of(tmp_path, body: str) -> tuple[int, str]:
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, body), check_names=False)
    prefix, line, rest = str(err.value).split(":", 2)
    assert prefix == str(tmp_path / "spec.yaml"), str(err.value)
    return int(line), rest.strip()


METHODS = "methods: [{name: frequency}]\n"


@pytest.mark.parametrize("body, line, message", [
    (METHODS + "calibration: {data: wiki, samples: 0}\n", 4,
     "calibration.samples: Input should be greater than or equal to 1"),
    (METHODS + "calibration:\n  data: wiki\n  micro_batch: many\n", 6,
     "calibration.micro_batch: Input should be a valid integer"),
    (METHODS + "calibration:\n  data: wiki\n  colour: blue\n", 6, "calibration.colour: unknown key"),
    (METHODS + "calibration:\n  data: wiki\n  num_gpus: 1\n", 6,
     "calibration.num_gpus: set by resources.stage_gpus in a sweep"),
    (METHODS + "calibration: {placement: spread}\n", 4, "calibration.placement: set by resources.placement"),
    (METHODS + "calibration:\n  stages: 2\n  stage_memory_gb: 4\n", 4,
     "calibration: give either stages or stage_memory_gb, not both"),
    (METHODS + "calibration: {data: nowhere.txt}\n", 4, "calibration.data: 'nowhere.txt' is neither a corpus name"),
    (METHODS + "testbed:\n  layout: shared\n  experts: 1\n", 6,
     "testbed.experts: Input should be greater than or equal to 2"),
    (METHODS + "testbed:\n  experts: 7\n", 4, "testbed: --experts 7 does not divide the routed MLP width 1024"),
    (METHODS + "testbed: {options: {experts: 8}}\n", 4, "testbed.options: unknown key"),
    ("methods:\n  - name: frequency\n  - name: reapp\n", 5, "methods[1].name: unknown method 'reapp' (known: "),
    ("methods:\n  - name: pathfinder\n    options: {top_m: 2, m: 3}\n", 5,
     "methods[0].options.m: method 'pathfinder' has no option 'm' (options: "),
    ("methods:\n  - name: pathfinder\n    grid:\n      paths: [true, false]\n      top_m: [1, 0]\n", 7,
     "methods[0].grid.top_m: method 'pathfinder' option 'top_m': Input should be greater than or equal to 1 (got 0)"),
    ("methods:\n  - name: frequency\n    seeds: [0, 1]\n", 5,
     "methods[0].seeds: method 'frequency' has no option 'seed' (options: none)"),
    (METHODS + "eval: {tasks: [wiki_ppl, arc_eesy]}\n", 4, "eval.tasks[1]: unknown task 'arc_eesy'"),
])
def test_component_errors_name_the_spec_line(tmp_path, body, line, message):
    got_line, got = error_of(tmp_path, body)
    assert got.startswith(message), got
    assert got_line == line, got


def test_calibration_is_a_calib_config_with_sweep_defaults(tmp_path):
    spec = load_spec(spec_file(tmp_path, METHODS + "calibration: {data: wiki_calib, micro_batch: 2, clusters: 4}\n"
                                                   "resources: {stage_gpus: 1, placement: spread}\n"),
                     check_names=False)
    assert isinstance(spec.calibration, CalibConfig) and spec.calibration.data == "wiki_calib"
    cfg = calib_config(spec)
    assert type(cfg) is CalibConfig
    assert (cfg.samples, cfg.seq_len, cfg.stages, cfg.micro_batch, cfg.clusters) == (32, 256, 1, 2, 4)
    assert (cfg.num_gpus, cfg.placement) == (1.0, "spread")
    memory = load_spec(spec_file(tmp_path, METHODS + "calibration: {stage_memory_gb: 2.5}\n"), check_names=False)
    assert calib_config(memory).stages is None and calib_config(memory).stage_memory_gb == 2.5


def test_calibrate_key_is_the_pre_embedding_config(tmp_path):
    """The calibrate step hashes calib_config(spec).model_dump(): equal to what the spec built before."""
    spec = load_spec(spec_file(tmp_path, METHODS + "calibration: {data: wiki, samples: 8, seq_len: 64, stages: 2}\n"
                                                   "resources: {stage_gpus: 0.5}\n"), check_names=False)
    before = CalibConfig(samples=8, seq_len=64, seed=0, stages=2, replicas=1, num_gpus=0.5, placement="pack")
    assert calib_config(spec).model_dump(mode="json") == before.model_dump(mode="json")
    bare = load_spec(spec_file(tmp_path, METHODS), check_names=False)
    assert calib_config(bare) == CalibConfig(samples=32, seq_len=256, seed=0, stages=1, replicas=1, num_gpus=0.0,
                                             placement="pack")


def test_testbed_is_a_testbed_config(tmp_path):
    spec = load_spec(spec_file(tmp_path, METHODS + "testbed: {layout: mixtral, experts: 8, heal: {tokens: 4096}}\n"),
                     check_names=False)
    want = TestbedConfig.parse(layout="mixtral", experts=8, heal={"tokens": 4096})
    assert spec.testbed == want and spec.testbed.digest() == want.digest() and spec.testbed.top_k == 6
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(f"name: t\nmodel: {tmp_path}\n{METHODS}testbed: {{experts: 8}}\nratios: [0.5]\noutput: o\n")
    with pytest.raises(SpecError, match=r"elsewhere.yaml:4: testbed: testbed options given but model is not"):
        load_spec(elsewhere, check_names=False)


def test_method_configs_are_validated_and_kept(tmp_path):
    spec = load_spec(spec_file(tmp_path, "methods:\n  - name: pathfinder\n    options: {top_m: 2}\n"
                                         "    grid: {paths: [true, false]}\n  - {name: random, seeds: [3, 4]}\n"),
                     check_names=False)
    pf, rnd = spec.methods
    assert [c.model_dump() for c in pf.configs()] == [
        type(pf.configs()[0])(top_m=2, paths=p).model_dump() for p in (True, False)]
    assert pf.option_sets() == [{"top_m": 2, "paths": True}, {"top_m": 2, "paths": False}]  # as written
    assert [c.seed for c in rnd.configs()] == [3, 4]


def test_step_ids_of_existing_specs_unchanged(tmp_path):
    """Ids computed with the spec before it embedded the configs (resumed sweeps must find their steps)."""
    spec = load_spec(spec_file(tmp_path, "calibration: {data: wiki, samples: 8}\n"
                                         "methods: [{name: frequency}, {name: reap}]\n"), check_names=False)
    assert [step_id("plan", c.params("s")) for c in variant_grid(spec)] == ["plan-3226f1fc09b8", "plan-d0069d5c5f6d"]
    assert step_id("testbed", {"testbed": (spec.testbed or TestbedConfig()).model_dump(mode="json")}) == \
        "testbed-3f4612558d03"
