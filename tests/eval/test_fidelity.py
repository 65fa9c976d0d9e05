"""Fidelity tasks: the cached top-K KL against a direct full-vocabulary KL, self-reference, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymoe.cli import main
from raymoe.eval import reference as R
from raymoe.eval.fidelity import FidelityError, fidelity_rows, full_kl, token_scores
from raymoe.eval.items import attach_items, sample_items
from raymoe.eval.engine_host import load_transformers
from raymoe.eval.tasks import check_task, parse_tasks

pytestmark = pytest.mark.unit

SPEC = dict(corpus="wiki_heldout", docs=5, window=48, windows_per_doc=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Qwen2-MoE and the same model with experts removed (a pruned variant)."""
    from raymoe.checkpoint import apply_plan
    from raymoe.moe import MoeModelSpec
    from raymoe.plan import LayerPlan, PrunePlan
    from raymoe.testing import build_tiny_model

    root = tmp_path_factory.mktemp("fidelity")
    base = build_tiny_model("qwen2_moe", root / "base")
    spec = MoeModelSpec.from_pretrained(base)
    plan = PrunePlan(method="manual", ratio=0.5, model=str(base), model_type=spec.arch.family,
                     layers=[LayerPlan(layer=l, num_experts=spec.experts[l], keep=[0, 2, 5, 7])
                             for l in spec.moe_layers])
    pruned = apply_plan(base, plan, root / "pruned", progress=False)
    other = build_tiny_model("qwen2_moe", root / "other-vocab", vocab_size=400)
    return {"base": base, "pruned": pruned, "other": other, "root": root}


def _sharp(path, scale: float = 100.0):
    """A random tiny model's next-token distributions are nearly uniform: scale its output layer so they
    are peaked (as a trained model's are) and the pruned variant's KL is far from zero."""
    m, t = load_transformers(str(path))
    with torch.no_grad():
        m.lm_head.weight.mul_(scale)
    return m, t


def _direct(models, top_k, tail_samples=0, scale=100.0):
    """Cached top-K scores and the exact full-vocabulary KL on the same positions."""
    ref_m, ref_t = _sharp(models["base"], scale)
    var_m, var_t = _sharp(models["pruned"], scale)
    spec = R.WindowSpec(**SPEC, top_k=top_k, tail_samples=tail_samples)
    path = R.build_reference(ref_m, ref_t, spec, R.reference_file(models["base"], spec, models["root"] / "cache"))
    ref, meta = R.load_reference(path)
    per_doc = R.score_windows(var_m, var_t, ref, meta)
    approx = np.concatenate([per_doc[d]["kld"] for d in sorted(per_doc)])
    exact, tail = [], []
    with torch.inference_mode():
        for i, n in enumerate(ref["lengths"].tolist()):
            x = ref["tokens"][i : i + 1, :n].long()
            logp = torch.log_softmax(ref_m(input_ids=x).logits[0, :-1].double(), -1)
            logq = torch.log_softmax(var_m(input_ids=x).logits[0, :-1].double(), -1)
            exact.append(full_kl(logp, logq).numpy())
            # the tail term: p_R * KL(p | R || q | R), R = outside the reference's top K
            top = logp.topk(top_k, -1).indices
            mask = torch.ones_like(logp, dtype=torch.bool).scatter(-1, top, False)
            lp = torch.where(mask, logp, -torch.inf)
            lq = torch.where(mask, logq, -torch.inf)
            p_r, q_r = torch.logsumexp(lp, -1), torch.logsumexp(lq, -1)
            cond = torch.where(mask, (lp - p_r[:, None]).exp() * ((lp - p_r[:, None]) - (lq - q_r[:, None])), 0.0)
            tail.append((p_r.exp() * cond.sum(-1)).numpy())
    return approx, np.concatenate(exact), np.concatenate(tail)


def test_top_k_kld_equals_full_kl_minus_the_tail_term(models):
    """Without tail draws the cache gives KL_K: exactly the full KL minus the tail term."""
    approx, exact, tail = _direct(models, top_k=32)
    assert approx.shape == exact.shape and exact.mean() > 0.02  # the pruned model differs
    assert np.all(approx <= exact + 1e-5)  # log-sum inequality: grouping the tail lowers KL
    np.testing.assert_allclose(approx + tail, exact, atol=2e-5)  # the gap is exactly the tail term


def test_tail_draws_estimate_the_full_kl_without_bias(models):
    """With tail draws the estimate matches the full KL: per position within sampling noise, on average
    within 2%, where KL_K alone misses the whole tail term."""
    approx, exact, tail = _direct(models, top_k=8, tail_samples=4000, scale=20.0)  # a heavier tail
    bound = exact - tail  # KL_K
    assert tail.mean() > 0.05 * exact.mean()  # the tail matters here
    assert abs(approx.mean() - exact.mean()) < 0.02 * exact.mean()
    assert abs(approx.mean() - exact.mean()) < 0.2 * tail.mean()
    assert np.corrcoef(approx, exact)[0, 1] > 0.95  # per position: sampling noise only
    assert abs(bound.mean() - exact.mean()) > 3 * abs(approx.mean() - exact.mean())


def test_top_k_equal_to_vocabulary_is_the_exact_kl(models):
    approx, exact, tail = _direct(models, top_k=320, tail_samples=16)
    np.testing.assert_allclose(approx, exact, atol=2e-5)
    assert np.abs(tail).max() < 1e-9


def test_reference_against_itself(models):
    m, t = load_transformers(str(models["base"]))
    spec = R.WindowSpec(**SPEC)
    path = R.build_reference(m, t, spec, models["root"] / "self.safetensors")
    ref, meta = R.load_reference(path)
    rows = {r["metric"]: r for r in fidelity_rows("kld:wiki_heldout", R.score_windows(m, t, ref, meta))}
    assert rows["kld_mean"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rows["kld_p99"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rows["top1_agree"]["value"] == 1.0
    assert rows["kld_mean"]["n"] == 5 and len(rows["kld_mean"]["items"]) == 5
    assert all(np.isfinite(r["stderr"]) for r in rows.values())


def test_variant_with_another_vocabulary_is_refused(models):
    m, t = load_transformers(str(models["base"]))
    spec = R.WindowSpec(**SPEC)
    ref, meta = R.load_reference(R.build_reference(m, t, spec, models["root"] / "v.safetensors"))
    om, ot = load_transformers(str(models["other"]))
    with pytest.raises(FidelityError, match="tokenizer or vocabulary differs"):
        R.score_windows(om, ot, ref, meta)


def test_token_scores_small_case():
    """Three-token vocabulary, K = 1: the formula by hand."""
    p = torch.tensor([[0.7, 0.2, 0.1]]).log()
    q = torch.tensor([[0.5, 0.25, 0.25]]).log()
    ref = {"top_logp": p[:, :1], "top_ids": torch.tensor([[0]]), "rest_logp": torch.tensor([0.3]).log(),
           "targets": torch.tensor([1]), "tail_ids": torch.tensor([[1, 2, 2]]), "tail_logp": p[:, [1, 2, 2]]}
    s = token_scores(q, ref)
    grouped = 0.7 * np.log(0.7 / 0.5) + 0.3 * np.log(0.3 / 0.5)
    # tail term from the draws 1, 2, 2: p|R = (2/3, 1/3), q|R = (1/2, 1/2)
    inner = (np.log((2 / 3) / 0.5) + 2 * np.log((1 / 3) / 0.5)) / 3
    want = grouped + 0.3 * inner
    assert s["kld"][0] == pytest.approx(want) and s["agree"][0] == 1.0 and s["ll"][0] == pytest.approx(np.log(0.25))


def test_kld_task_names():
    (t,) = parse_tasks("kld:wiki_heldout:30")
    assert (t.name, t.limit) == ("kld:wiki_heldout", 30)
    assert parse_tasks("kld:c4,piqa:5")[0].name == "kld:c4"
    assert check_task("kld:wiki_heldout") == "fidelity"
    with pytest.raises(FidelityError, match="unknown corpus .nope."):
        check_task("kld:nope")


def test_items_from_lm_eval_samples():
    samples = {"piqa": [{"doc_id": i, "metrics": ["acc", "acc_norm"], "acc": float(i % 2), "acc_norm": 1.0,
                         "arguments": [("c", " a"), ("c", " b")], "filter": "none"} for i in range(6)],
               "wiki_ppl": [{"doc_id": i, "metrics": ["word_perplexity"], "word_perplexity": (-10.0 * (i + 1), 5),
                             "arguments": [("x",)], "filter": "none"} for i in range(4)]}
    items, chance = sample_items(samples["piqa"])
    assert chance == 0.5 and items["acc"].value == 0.5
    items, chance = sample_items(samples["wiki_ppl"])
    assert chance is None and items["word_perplexity"].value == pytest.approx(np.exp(100 / 20))
    rows = attach_items([{"task": "wiki_ppl", "metric": "word_perplexity", "value": 1.0, "stderr": None},
                         {"task": "piqa", "metric": "acc", "value": 0.5, "stderr": 0.2}], samples)
    assert rows[0]["stderr"] > 0 and rows[0]["transform"] == "exp_neg" and rows[0]["items"] == [0, 1, 2, 3]
    assert rows[1]["stderr"] == 0.2 and rows[1]["chance"] == 0.5  # lm-eval's stderr kept


def _cli(capsys, *args):
    capsys.readouterr()
    rc = main(["eval", *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", ["unknown corpus", "no reference", "missing reference", "other vocabulary"])
def test_bad_fidelity_input_is_one_line(models, tmp_path, capsys, case):
    task, extra = "kld:wiki_heldout", []
    if case == "unknown corpus":
        task = "kld:nope"
    elif case == "missing reference":
        extra = ["--reference", tmp_path / "nowhere"]
    elif case == "other vocabulary":
        extra = ["--reference", models["other"]]
    rc, err = _cli(capsys, models["pruned"], "--tasks", task, *extra, "--out", tmp_path / "res")
    want = {"unknown corpus": "unknown corpus 'nope'", "no reference": "need --reference",
            "missing reference": "is not a model directory", "other vocabulary": "tokenizer or vocabulary differs"}
    assert rc == 2 and err.startswith("error: ") and want[case] in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_reference_cache_tells_apart_checkpoints_of_one_layout(models, tmp_path):
    """Same config and tensor layout, other weights (the unhealed vs the healed testbed): other cache files."""
    import shutil

    from safetensors.torch import load_file, save_file

    spec = R.WindowSpec(**SPEC)
    twin = tmp_path / "twin"
    shutil.copytree(models["base"], twin)
    from raymoe.moe.safetensors_files import SafetensorsCheckpoint, model_hash

    layout = model_hash(twin, SafetensorsCheckpoint(twin))
    first = R.reference_file(twin, spec, tmp_path / "cache")
    assert R.reference_file(twin, spec, tmp_path / "cache") == first  # stable while the files are untouched
    for f in twin.glob("*.safetensors"):
        tensors = load_file(f)
        with open(f, "rb") as fh:  # keep the header (and so the layout) byte for byte
            import json, struct
            n = struct.unpack("<Q", fh.read(8))[0]
            meta = json.loads(fh.read(n)).get("__metadata__")
        save_file({k: v + 1e-3 for k, v in tensors.items()}, f, metadata=meta)
    assert model_hash(twin, SafetensorsCheckpoint(twin)) == layout  # only the weights differ
    assert R.reference_file(twin, spec, tmp_path / "cache") != first
