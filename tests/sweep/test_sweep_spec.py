"""Sweep specs: valid ones parse; bad ones fail with the spec line, before any Ray work."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from raymoe.cli import main
from raymoe.sweep.pipeline import variant_grid
from raymoe.sweep.sweep_spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def base(model: str) -> str:
    return f"""\
    name: t
    model: {model}
    methods:
      - {{name: frequency}}
      - name: random
        seeds: [0, 1]
    ratios: [0.25, 0.5]
    eval: {{tasks: [wiki_ppl, arc_easy], limit: 5}}
    output: results/t
    """


def test_valid_spec_and_grid(tiny_model, tmp_path):
    spec = load_spec(write(tmp_path, base(tiny_model("mixtral"))))
    names = [v.name for v in variant_grid(spec)]
    assert names == ["frequency@0.25", "frequency@0.5", "random@0.25[seed=0]", "random@0.5[seed=0]",
                     "random@0.25[seed=1]", "random@0.5[seed=1]"]


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.yaml")))
def test_shipped_specs_parse(path):
    spec = load_spec(path, check_names=False)  # real-model paths do not exist here
    assert spec.methods and spec.ratios


@pytest.mark.parametrize("edit, line, needle", [
    (("    ratios: [0.25, 0.5]", "    ratios: [0.25, 1.5]"), 7, "ratio 1.5 at position 1 is outside (0, 1)"),
    (("    output: results/t", "    output: results/t\n    colour: blue"), 10, "colour: unknown key"),
    (("{name: frequency}", "{name: frequencyy}"), 4, "unknown method 'frequencyy'"),
    (("{name: frequency}", "{name: frequency, options: {nope: 1}}"), 4, "no option 'nope'"),
    (("[wiki_ppl, arc_easy]", "[wiki_ppl, arc_eesy]"), 8, "unknown task 'arc_eesy'"),
    (("    ratios: [0.25, 0.5]", "    ratios: [0.25, 0.5]\n    calibration: {data: wikii}"), 8,
     "calibration.data: 'wikii' is neither a corpus name"),
    (("    output: results/t", "    output: results/t\n    materialize: [frequency, reap@0.5]"), 10,
     "materialize[1]: 'reap@0.5' is neither a method of this spec nor one of its variants"),
])
def test_bad_spec_names_line(tiny_model, tmp_path, edit, line, needle):
    text = base(tiny_model("mixtral")).replace(*edit)
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, text))
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'spec.yaml'}:{line}:"), msg
    assert needle in msg, msg


def test_materialize_names_methods_or_variants(tiny_model, tmp_path):
    text = base(tiny_model("mixtral")).replace("    output: results/t",
                                               "    output: results/t\n    materialize: [frequency, 'random@0.5[seed=1]']")
    assert load_spec(write(tmp_path, text)).materialize == ["frequency", "random@0.5[seed=1]"]


def test_missing_model(tmp_path):
    with pytest.raises(SpecError, match=r"spec.yaml:2: model: model path .* does not exist"):
        load_spec(write(tmp_path, base(str(tmp_path / "nope"))))


def test_cli_fails_before_ray(tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init called before the spec was validated")

    monkeypatch.setattr(ray, "init", no_ray)
    code = main(["run", str(write(tmp_path, base(str(tmp_path / "nope"))))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    assert not (tmp_path / "results").exists()
