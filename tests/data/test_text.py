"""Calibration text: sources, deterministic sampling, data hash, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raymoe.data import NAMED_CORPORA, DataError, calibration_data, load_text, named_corpus_path, sample_windows

pytestmark = pytest.mark.unit


class CharTokenizer:
    """One token per character (code point mod 1000): an independent, predictable tokenizer."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 1000 for c in text]}


@pytest.mark.parametrize("name", ["wiki", "c4", "code", "tiny"])
def test_named_corpora(name):
    src = load_text(name)
    assert src.kind == "named" and len(src.text) > 100_000
    assert src.text == named_corpus_path(name).read_text(encoding="utf-8")
    assert name in NAMED_CORPORA


def test_txt_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world\nsecond line")
    assert load_text(txt).text == "hello world\nsecond line" and load_text(txt).kind == "txt"
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join([json.dumps({"text": "first", "id": 1}), "", json.dumps("second")]) + "\n")
    src = load_text(jl)
    assert src.kind == "jsonl" and src.text == "first\n\nsecond"


def test_sampling_is_deterministic_and_exact():
    ids = np.arange(1000)
    a = sample_windows(ids, 5, 100, seed=7)
    b = sample_windows(ids, 5, 100, seed=7)
    c = sample_windows(ids, 5, 100, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (5, 100)
    starts = a[:, 0]
    assert list(starts) == sorted(starts) and len(set(starts)) == 5
    assert all(s % 100 == 0 for s in starts)  # whole windows of the token stream
    np.testing.assert_array_equal(a, starts[:, None] + np.arange(100)[None, :])


def test_calibration_data_hash(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("abcdefghij" * 30)
    d1 = calibration_data(txt, CharTokenizer(), 3, 50, seed=0)
    d2 = calibration_data(txt, CharTokenizer(), 3, 50, seed=0)
    assert d1.hash == d2.hash and len(d1.hash) == 64
    assert d1.ids.shape == (3, 50) and d1.info["corpus_tokens"] == 300
    text = "abcdefghij" * 30
    windows = [[ord(c) for c in text[s:s + 50]] for s in range(0, 300, 50)]
    assert all(row in windows for row in d1.ids.tolist())
    assert calibration_data(txt, CharTokenizer(), 3, 50, seed=1).hash != d1.hash  # the seed is part of the hash
    txt.write_text("abcdefghij" * 29 + "abcdefghiX")
    changed = calibration_data(txt, CharTokenizer(), 6, 50, seed=0)  # every window: the last one differs
    txt2 = tmp_path / "u.txt"
    txt2.write_text("abcdefghij" * 30)
    assert calibration_data(txt2, CharTokenizer(), 6, 50, seed=0).hash != changed.hash


def test_errors(tmp_path):
    with pytest.raises(DataError, match="neither a corpus name"):
        load_text(tmp_path / "missing.txt")
    empty = tmp_path / "e.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="is empty"):
        load_text(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2: invalid JSON"):
        load_text(bad)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="'text' field"):
        load_text(nofield)
    with pytest.raises(DataError, match="too short: 10 tokens, fewer than seq_len 20"):
        sample_windows(np.arange(10), 1, 20, 0)
    with pytest.raises(DataError, match="give 3 windows of 30, 4 samples asked"):
        sample_windows(np.arange(100), 4, 30, 0)
