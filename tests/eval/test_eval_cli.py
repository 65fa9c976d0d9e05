"""`raymoe eval`: results file on success; bad input -> one error line, exit 2, no results written."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from raymoe.cli import main
from raymoe.eval.results import SCHEMA


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed
    rc = main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, tmp_path / "empty", "--tasks", "arc_easy", "--out", tmp_path / "res")
    assert rc == 2 and err.strip() == f"error: '{tmp_path / 'empty'}' is not a checkpoint directory (no config.json)"
    assert not (tmp_path / "res").exists()


def test_unknown_task_lists_known(eval_models, tmp_path, capsys):
    rc, _, err = run_cli(capsys, eval_models("mixtral")["base"], "--tasks", "arc_easy,nosuchtask",
                         "--out", tmp_path / "res")
    assert rc == 2 and err.startswith("error: unknown task 'nosuchtask'; known offline tasks: arc_easy, ")
    assert "gsm8k" in err and "wiki_ppl" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_missing_vllm_env_says_how_to_create_it(eval_models, tmp_path, capsys):
    rc, _, err = run_cli(capsys, eval_models("mixtral")["base"], "--tasks", "arc_easy", "--backend", "vllm",
                         "--vllm-python", tmp_path / "no-venv" / "bin" / "python", "--out", tmp_path / "res")
    assert rc == 2 and "error: backend vllm needs its own Python environment" in err
    assert "make vllm-env" in err and "scripts/setup_vllm_env.sh" in err
    assert not (tmp_path / "res").exists()


@pytest.mark.integration
def test_eval_writes_results_then_refuses_to_overwrite(ray_local, eval_models, tmp_path, capsys):
    m = eval_models("mixtral")
    rc, out, err = run_cli(capsys, f"mixed={m['mixed']}", "--tasks", "arc_easy:3,c4_ppl:1", "--workers", "1",
                           "--out", tmp_path / "r1", "--no-progress")
    assert rc == 0, err
    df = pl.read_parquet(tmp_path / "r1" / "results.parquet")
    assert df.schema == SCHEMA
    assert sorted(zip(df["task"], df["metric"])) == sorted(
        [("arc_easy", "acc"), ("arc_easy", "acc_norm"), ("c4_ppl", "bits_per_byte"), ("c4_ppl", "byte_perplexity"),
         ("c4_ppl", "word_perplexity")])
    assert set(df["variant"]) == {"mixed"} and set(df["run"]) == {"r1"} and set(df["backend"]) == {"hf"}
    assert "wrote 5 rows" in out
    before = (tmp_path / "r1" / "results.parquet").read_bytes()
    rc, _, err = run_cli(capsys, m["mixed"], "--tasks", "arc_easy:3", "--out", tmp_path / "r1")
    assert rc == 2 and "already exists" in err
    assert (tmp_path / "r1" / "results.parquet").read_bytes() == before


@pytest.mark.integration
def test_failing_pair_writes_no_partial_rows(ray_local, eval_models, tmp_path, capsys):
    """A variant whose tokenizer is corrupt passes the up-front checks but fails on the worker: no rows at all."""
    good = eval_models("mixtral")["base"]
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "tokenizer.json").write_text("{not json")
    rc, _, err = run_cli(capsys, f"good={good}", f"bad={bad}", "--tasks", "arc_easy:2", "--workers", "1",
                         "--out", tmp_path / "res", "--no-progress")
    assert rc == 2 and err.startswith("error: bad x arc_easy:2: failed on hf-0: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").iterdir())
