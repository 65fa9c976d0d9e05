"""`raymoe calibrate` on bad input: one `error:` line, exit code 2, nothing written, Ray never started."""

from __future__ import annotations

import pytest

from raymoe.cli import main

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory):
    """A real (tiny) dense Llama checkpoint: not an MoE model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("dense") / "llama"
    LlamaForCausalLM(cfg).save_pretrained(out)
    return str(out)


def run_cli(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    rc = main(["calibrate", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def assert_clean_failure(rc, err, out, match):
    import ray

    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert match in err[0], err[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]
    assert not ray.is_initialized()


@pytest.mark.parametrize("name, text, samples, seq_len, needle", [
    ("empty.txt", "   \n\n", 2, 8, "is empty"),
    ("short.jsonl", '{"text": "a few words only"}\n', 4, 64, "too short"),
], ids=["empty", "too_short"])
def test_bad_text(capsys, tmp_path, tiny_model, name, text, samples, seq_len, needle):
    src = tmp_path / name
    src.write_text(text)
    out = tmp_path / "stats"
    rc, err = run_cli(capsys, tiny_model("mixtral"), "--data", src, "--samples", samples, "--seq-len", seq_len,
                      "--out", out)
    assert_clean_failure(rc, err, out, needle)


def test_non_moe_model(capsys, tmp_path, dense_model):
    out = tmp_path / "stats"
    rc, err = run_cli(capsys, dense_model, "--data", "tiny", "--samples", 2, "--seq-len", 8, "--out", out)
    assert_clean_failure(rc, err, out, "'llama' is not a supported MoE architecture")


def test_more_stages_than_layers(capsys, tmp_path, tiny_model):
    out = tmp_path / "stats"
    rc, err = run_cli(capsys, tiny_model("olmoe"), "--data", "tiny", "--samples", 2, "--seq-len", 8,
                      "--stages", 5, "--out", out)
    assert_clean_failure(rc, err, out, "5 stages asked but the model has only 4 decoder layers")


def test_missing_model_path(capsys, tmp_path):
    out = tmp_path / "stats"
    rc, err = run_cli(capsys, tmp_path / "nope", "--data", "tiny", "--out", out)
    assert_clean_failure(rc, err, out, "does not exist")


def test_unknown_corpus_and_bad_option(capsys, tmp_path, tiny_model):
    out = tmp_path / "stats"
    rc, err = run_cli(capsys, tiny_model("mixtral"), "--data", "nonsense", "--samples", 2, "--seq-len", 8,
                      "--out", out)
    assert_clean_failure(rc, err, out, "neither a corpus name")
    rc, err = run_cli(capsys, tiny_model("mixtral"), "--samples", 0, "--out", out)
    assert_clean_failure(rc, err, out, "invalid calibration option samples")


def test_existing_out_is_not_overwritten(capsys, tmp_path, tiny_model):
    out = tmp_path / "stats"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, err = run_cli(capsys, tiny_model("mixtral"), "--data", "tiny", "--out", out)
    assert rc == 2 and err[0].startswith("error: ") and "already exists" in err[0]
    assert (out / "keep.txt").read_text() == "x"


def test_local_run_writes_stats(tmp_path, tiny_model):
    """The in-process path of the CLI (`--local`, no Ray) writes a complete stats directory."""
    from raymoe.store import STORE_FILES, load_stats

    out = tmp_path / "stats"
    rc = main(["calibrate", tiny_model("qwen2_moe"), "--data", "tiny", "--samples", "3", "--seq-len", "12",
               "--micro-batch", "2", "--probe-tokens", "5", "--clusters", "2", "--local", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(STORE_FILES)
    stats = load_stats(out)
    assert stats.num_clusters == 2 and stats.seq_pooled.shape == (3, 32)
    assert all(st.probe_inputs.shape == (10, 32) for st in stats.layers.values())
