"""Shared-context scoring (raymoe.eval.lm_hf) against lm-eval's stock HFLM on tiny MoE models.

Both compute float32 sums of per-token log-probabilities, so they agree to
float32 rounding of those sums: |a - b| <= 1e-5 * max(1, |a|) (one ulp of a
sum of magnitude 150 is 1.5e-5). Greedy flags must be equal.
"""

from __future__ import annotations

import random

import pytest
import torch

from raymoe.eval.lm_hf import SharedContextHFLM, pack_groups

WORDS = ("the cat sat on a warm mat while experts route tokens to a few of them quick brown fox jumps over "
         "lazy dog numbers like 1 2 3 and symbols + - * / appear in code").split()


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(a))


@pytest.fixture(scope="module", params=["qwen2_moe", "mixtral"])
def lms(request, tmp_path_factory):
    from lm_eval.models.huggingface import HFLM

    from raymoe.eval.engine_host import load_transformers
    from raymoe.testing import build_tiny_model

    path = build_tiny_model(request.param, tmp_path_factory.mktemp(f"hfscore-{request.param}") / "m")
    model, tok = load_transformers(str(path))
    kw = dict(pretrained=model, tokenizer=tok, backend="causal", device="cpu", batch_size=4, max_length=48)
    return HFLM(**kw), SharedContextHFLM(**kw, token_budget=200)


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _requests(pairs):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _compare(lms, pairs) -> tuple[float, int]:
    stock, shared = lms
    reqs = _requests(pairs)
    a = stock.loglikelihood(reqs, disable_tqdm=True)
    b = shared.loglikelihood(reqs, disable_tqdm=True)
    assert len(a) == len(b) == len(pairs)
    bad = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if not _close(x[0], y[0]) or x[1] != y[1]]
    assert not bad, bad[:5]
    return max(abs(x[0] - y[0]) for x, y in zip(a, b)), sum(x[1] for x in a)


def test_multiple_choice_equals_stock(lms):
    rng = random.Random(0)
    pairs = []
    for _ in range(10):
        ctx = _text(rng, 3, 15)
        pairs += [(ctx, " " + _text(rng, 1, 6)) for _ in range(rng.choice([2, 4]))]
    pairs.append(pairs[0])  # a duplicated request
    _compare(lms, pairs)


def test_single_token_continuations_equal_stock(lms):
    """One-token choices (as in MMLU's " A"/" B"...) on token-level requests; one context repeats."""
    stock, shared = lms
    rng = random.Random(1)
    vocab = stock.model.config.vocab_size
    ctxs = [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 30))] for _ in range(8)]
    reqs = [(None, c, [t]) for c in ctxs + ctxs[:1] for t in (5, 17, 40, rng.randrange(4, vocab))]
    a = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    b = shared._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert len(a) == len(b) == len(reqs)
    assert all(_close(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b)), list(zip(a, b))


def test_greedy_flag_can_be_true(lms):
    """A continuation made of the model's own greedy tokens is flagged greedy by both; token-level requests."""
    stock, shared = lms
    ctx = stock.tok_encode("the quick brown fox")
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(3):
            ids.append(int(stock.model(torch.tensor([ids])).logits[0, -1].argmax()))
    other = [t for t in range(5, 9) if t != ids[len(ctx)]][:1] * 3
    reqs = [(None, ctx, ids[len(ctx):]), (None, ctx, other), (None, ctx, ids[len(ctx):len(ctx) + 1])]
    a = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    b = shared._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [x[1] for x in a] == [y[1] for y in b] == [True, False, True]
    assert all(_close(x[0], y[0]) for x, y in zip(a, b))


def test_left_truncated_contexts_equal_stock(lms):
    stock, shared = lms
    rng = random.Random(2)
    pairs = []
    for _ in range(4):
        ctx = _text(rng, 60, 90)  # longer than max_length (48 tokens): HFLM cuts from the left
        pairs += [(ctx, " " + _text(rng, 1, 8)) for _ in range(3)]
    assert all(len(stock.tok_encode(c + x)) > stock.max_length + 1 for c, x in pairs)
    _compare(lms, pairs)


def test_rolling_perplexity_equals_stock(lms):
    from lm_eval.api.instance import Instance

    stock, shared = lms
    rng = random.Random(3)
    docs = [Instance("loglikelihood_rolling", {}, (_text(rng, n, n),), i) for i, n in enumerate([3, 20, 70, 150, 9])]
    assert max(len(stock.tok_encode(d.args[0])) for d in docs) > 2 * stock.max_length  # several windows
    a = stock.loglikelihood_rolling(docs, disable_tqdm=True)
    b = shared.loglikelihood_rolling(docs, disable_tqdm=True)
    assert all(_close(x, y) for x, y in zip(a, b)), list(zip(a, b))


def test_context_is_computed_once(lms):
    """Four choices of one context feed len(ctx) + sum(len(choice) - 1) tokens, not 4 x (ctx + choice)."""
    stock, shared = lms
    ctx = " ".join(["cat"] * 8)
    c = len(stock.tok_encode(ctx))
    conts = [" dog dog", " mat mat mat", " fox", " a a a a a"]
    lens = [len(stock.tok_encode(ctx + x)) - c for x in conts]
    assert c + max(lens) <= stock.max_length + 1 and min(lens) >= 2  # no truncation; something to share
    fed = []
    emb = shared.model.get_input_embeddings()
    handle = emb.register_forward_hook(lambda m, i, o: fed.append(int((i[0] >= 0).sum())))
    try:
        shared.loglikelihood(_requests([(ctx, x) for x in conts]), disable_tqdm=True)
    finally:
        handle.remove()
    assert fed == [c + sum(n - 1 for n in lens)]


def test_pack_groups_truncates_groups_and_limits_rows():
    reqs = [(None, [1, 2, 3], [4]), (None, [1, 2, 3], [5, 6]), (None, [9], [4]), (None, [0, 1, 2, 3], [7, 8])]
    groups = pack_groups(reqs, max_length=4)  # the last is cut to [1, 2, 3] + [7, 8]: it joins the first group
    assert [g["ctx"] for g in groups] == [[1, 2, 3], [9]]
    assert [i for i, _ in groups[0]["members"]] == [0, 1, 3]
    limited = pack_groups(reqs, max_length=4, row_limit=4)  # ctx 3 + 0 + 1 fits, + 1 more does not
    assert [[i for i, _ in g["members"]] for g in limited] == [[0, 1], [2], [3]]
    assert len(pack_groups(reqs, max_length=4, share=False)) == 4
    with pytest.raises(ValueError, match="continuation"):
        pack_groups([(None, [1], [2] * 5)], max_length=4)


@pytest.mark.parametrize("task", ["arc_easy:12", "wiki_heldout_ppl:3"])
def test_engine_option_selects_path_and_tasks_agree(task, tmp_path):
    """The `scoring` engine option picks the LM class; a real lm-eval task gives the same metrics on both."""
    from lm_eval.models.huggingface import HFLM

    from raymoe.eval.hf_worker import load_hf
    from raymoe.eval.options import EngineOptions
    from raymoe.eval.engine_host import EngineHost
    from raymoe.eval.tasks import parse_tasks
    from raymoe.testing import build_tiny_model

    path = str(build_tiny_model("qwen2_moe", tmp_path / "m"))
    [req] = parse_tasks(task)
    rows = {}
    for scoring in ("stock", "shared"):
        opts = EngineOptions(scoring=scoring, bootstrap_iters=0)
        host = EngineHost(f"t-{scoring}", "hf", lambda p, o=opts: load_hf(p, o))
        rows[scoring] = {r["metric"]: r["value"] for r in host.evaluate(path, req)["rows"]}
        assert (type(host.engine.lm) is HFLM) == (scoring == "stock")
        assert isinstance(host.engine.lm, SharedContextHFLM) == (scoring == "shared")
    assert rows["stock"].keys() == rows["shared"].keys() and rows["stock"]
    for metric, value in rows["stock"].items():
        assert abs(rows["shared"][metric] - value) <= 1e-5 * max(1.0, abs(value)), metric
