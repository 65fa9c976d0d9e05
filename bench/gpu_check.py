"""GPU readiness: calibration, apply and a transformers evaluation on a device in bf16, against CPU float32.

    python bench/gpu_check.py [--device cuda|cpu] [--size medium|tiny] [--family qwen3_moe] [--json out.json]

Builds a random MoE in-process (`raymoe.testing.tiny`; `medium`: 6 layers, 16 experts, top-4, hidden 256,
about 90 MB of float32 weights; `tiny`: the unit-test size), then
1. calibration statistics with the in-process executor (`raymoe.calib.executors.LocalExecutor`,
   `calibrate(..., device=)` with `local=True`): float32 on the CPU (the reference) and `--dtype` (bf16)
   on `--device`; per statistic the largest difference over the MoE layers, absolute and relative to
   the reference's largest magnitude;
2. a REAP plan at ratio 0.5 (global allocation, so the layers keep different counts) from the reference
   statistics, written by `raymoe.checkpoint.apply_plan`; the plan from the device statistics is compared
   (kept-set agreement, informational: near-tied experts may swap);
3. the pruned checkpoint loaded with transformers' Auto classes (`raymoe.ensure_registered()`), float32
   on the CPU and `--dtype` on `--device`: logits and per-text log-likelihood / perplexity of a few texts.

Each check prints PASS or FAIL against a tolerance suited to bf16 (8 mantissa bits: one rounding is
2^-8 = 0.4%, a few layers of them and an occasional flipped top-k choice make a few percent); the exit
code is 1 if any check fails. It imports only torch, transformers, safetensors, numpy, pydantic, tqdm and
pyyaml (no ray, vllm, polars or pyarrow), so the repository plus those packages is all a GPU machine needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout (no install)

#: tiny_config keyword arguments per size; expert widths use each family's own key
SIZES = {
    "tiny": dict(layers=4, experts=8, top_k=2),
    "medium": dict(layers=6, experts=16, top_k=4, hidden=256, max_position_embeddings=512),
}
_EXPERT_WIDTH = {"mixtral": "intermediate_size", "olmoe": "intermediate_size"}
#: calibration shape per size: samples, seq_len, micro_batch, probe_tokens
CALIB = {"tiny": (8, 32, 4, 8), "medium": (16, 128, 4, 32)}
TEXTS = 6  # evaluation texts (sentences of SAMPLE_TEXT)

#: statistic -> tolerance on max |device - cpu| / max |cpu| (routing counts can flip near ties)
STAT_TOL = {"usage": 0.05, "prob_mass": 0.03, "gate_mass": 0.05, "reap": 0.05, "act_norm": 0.05,
            "loo_err": 0.08, "coact": 0.05, "trans": 0.05, "mean_output": 0.05, "probe_inputs": 0.03}
LOGIT_TOL = 0.05  # max |dlogit| / max |logit|
TOP1_MIN = 0.95  # argmax agreement of the pruned model's next-token predictions
PPL_TOL = 0.03  # relative perplexity difference per text


def build_model(family: str, size: str, out: Path) -> Path:
    from raymoe.testing.tiny import build_tiny_model

    kw = dict(SIZES[size])
    if size == "medium":
        kw[_EXPERT_WIDTH.get(family, "moe_intermediate_size")] = 256
        if family == "qwen3_moe":
            kw["head_dim"] = 64
    return build_tiny_model(family, out, **kw)


def calib_data(model: Path, size: str, work: Path):
    from raymoe.calib.calibration import load_tokenizer
    from raymoe.data.text import calibration_data
    from raymoe.testing.tiny import SAMPLE_TEXT

    samples, seq_len, _, _ = CALIB[size]
    corpus = work / "calib.txt"
    corpus.write_text((SAMPLE_TEXT + "\n") * 64)
    return calibration_data(str(corpus), load_tokenizer(model), samples, seq_len, seed=0)


def run_calibration(model: Path, size: str, data, dtype: str, device: str):
    from raymoe.calib.config import CalibConfig
    from raymoe.calib.calibration import Prepared, calibrate

    samples, seq_len, micro, probes = CALIB[size]
    cfg = CalibConfig(samples=samples, seq_len=seq_len, micro_batch=micro, probe_tokens=probes, clusters=1,
                      local=True, dtype=dtype, seed=0)
    return calibrate(Prepared(model, cfg, data), progress=False, device=device)


def stat_fields(st) -> dict[str, np.ndarray]:
    """What the methods read, as means (so the comparison does not scale with the token count)."""
    t, p = max(st.tokens, 1.0), max(st.probe_tokens, 1.0)
    out = {"usage": st.usage, "prob_mass": st.prob_mass / t, "gate_mass": st.gate_mass / t, "reap": st.reap,
           "act_norm": st.act_norm, "loo_err": st.loo_err_sum / p, "coact": st.coact / t,
           "mean_output": st.mean_output_sum / t, "probe_inputs": st.probe_inputs}
    if st.trans is not None:
        out["trans"] = st.trans / t
    return out


def diff(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max |got - ref|, that / max |ref|)."""
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return float("inf"), float("inf")
    if ref.size == 0:
        return 0.0, 0.0
    d = float(np.abs(got - ref).max())
    return d, d / max(float(np.abs(ref).max()), 1e-12)


def compare_stats(ref, got) -> dict[str, tuple[float, float]]:
    worst: dict[str, tuple[float, float]] = {}
    for l in sorted(ref.layers):
        a, b = stat_fields(ref.layers[l]), stat_fields(got.layers[l])
        for name in a:
            d = diff(a[name], b[name])
            worst[name] = max(worst.get(name, (0.0, 0.0)), d, key=lambda x: x[1])
    return worst


def kept_agreement(plan_a, plan_b) -> float:
    """Shared kept experts / kept experts of plan_a, over all layers."""
    b = {lp.layer: set(lp.keep) for lp in plan_b.layers}
    kept = sum(len(lp.keep) for lp in plan_a.layers)
    return sum(len(set(lp.keep) & b.get(lp.layer, set())) for lp in plan_a.layers) / max(kept, 1)


def evaluate(path: Path, dtype: str, device: str, texts: list[list[int]]):
    """(logits [n_i, V] float32 on the CPU, summed log-likelihood of each text's tokens 1..n-1)."""
    import torch
    from transformers import AutoModelForCausalLM

    import raymoe

    raymoe.ensure_registered()  # a pruned checkpoint with per-layer expert counts
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(device).eval()
    logits, ll = [], []
    with torch.no_grad():
        for ids in texts:
            x = torch.tensor([ids], device=device)
            out = model(x).logits[0].float()  # [n, V]
            logp = torch.log_softmax(out[:-1], -1).gather(1, x[0, 1:, None])[:, 0]  # [n-1]
            logits.append(out.cpu())
            ll.append(float(logp.sum()))
    return logits, ll


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--size", default="medium", choices=sorted(SIZES))
    p.add_argument("--family", default="qwen3_moe")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"gpu_check: {args.family} {args.size}, {args.dtype} on {args.device} ({name}) vs float32 on cpu; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    checks: list[dict] = []

    def check(what: str, value: float, tol: float, *, at_least: bool = False, extra: str = "") -> None:
        ok = value >= tol if at_least else value <= tol
        checks.append({"check": what, "value": value, "tol": tol, "pass": bool(ok), "extra": extra})
        op = ">=" if at_least else "<="
        print(f"  {what:<26} {value:10.3e}  {op} {tol:<8.3g} {'PASS' if ok else 'FAIL'}  {extra}")

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="raymoe-gpu-check-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        model = build_model(args.family, args.size, work / "model")
        mb = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**20
        data = calib_data(model, args.size, work)
        timings["build"] = time.perf_counter() - t

        t = time.perf_counter()
        ref = run_calibration(model, args.size, data, "float32", "cpu")
        timings["calibrate_cpu_fp32"] = time.perf_counter() - t
        t = time.perf_counter()
        got = run_calibration(model, args.size, data, args.dtype, args.device)
        timings[f"calibrate_{args.device}_{args.dtype}"] = time.perf_counter() - t
        print(f"model: {mb:.1f} MiB, {len(ref.layers)} MoE layers; calibration: {data.ids.shape[0]} x "
              f"{data.ids.shape[1]} tokens")
        print("calibration statistics (max |abs| diff, relative to max |cpu|):")
        same_tokens = all(ref.layers[l].tokens == got.layers[l].tokens for l in ref.layers)
        check("stats: tokens equal", float(not same_tokens), 0.0)
        for field, (d, rel) in compare_stats(ref, got).items():
            check(f"stats: {field}", rel, STAT_TOL[field], extra=f"abs {d:.3e}")

        from raymoe.checkpoint import apply_plan
        from raymoe.methods import make_plan

        t = time.perf_counter()
        plan = make_plan(ref, "reap", 0.5)
        pruned = apply_plan(model, plan, work / "pruned", progress=False)
        timings["plan_apply"] = time.perf_counter() - t
        agree = kept_agreement(plan, make_plan(got, "reap", 0.5))
        counts = ",".join(str(n) for n in plan.counts().values())
        print(f"plan: reap 0.5, experts per layer {counts}; device-stats plan keeps {agree:.1%} of the same "
              f"experts (informational)")

        from raymoe.testing.tiny import SAMPLE_TEXT, build_tokenizer

        tok = build_tokenizer()
        sentences = [s.strip() + "." for s in SAMPLE_TEXT.split(". ") if s.strip()][:TEXTS]
        texts = [tok(s, add_special_tokens=False)["input_ids"] for s in sentences]
        t = time.perf_counter()
        ref_logits, ref_ll = evaluate(pruned, "float32", "cpu", texts)
        got_logits, got_ll = evaluate(pruned, args.dtype, args.device, texts)
        timings["evaluate"] = time.perf_counter() - t
        print(f"pruned model, {len(texts)} texts ({sum(map(len, texts))} tokens):")
        worst = max((diff(a.numpy(), b.numpy()) for a, b in zip(ref_logits, got_logits)), key=lambda x: x[1])
        check("logits", worst[1], LOGIT_TOL, extra=f"abs {worst[0]:.3e}")
        top1 = np.mean(np.concatenate([(a.argmax(-1) == b.argmax(-1)).numpy() for a, b in
                                       zip(ref_logits, got_logits)]))
        check("next-token argmax agree", float(top1), TOP1_MIN, at_least=True)
        ppl = [(np.exp(-a / (len(x) - 1)), np.exp(-b / (len(x) - 1))) for a, b, x in zip(ref_ll, got_ll, texts)]
        rel_ppl = max(abs(b - a) / a for a, b in ppl)
        check("perplexity", rel_ppl, PPL_TOL, extra=f"loglik abs {max(abs(a - b) for a, b in zip(ref_ll, got_ll)):.3e}; "
              f"cpu ppl {np.mean([a for a, _ in ppl]):.2f}")

    failed = [c["check"] for c in checks if not c["pass"]]
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"gpu_check: {'PASS' if not failed else 'FAIL'} ({len(checks) - len(failed)}/{len(checks)} checks"
          + (f"; failed: {', '.join(failed)})" if failed else ")"))
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "device_name": name, "dtype": args.dtype,
                                         "family": args.family, "size": args.size, "model_mib": mb,
                                         "plan_agreement": agree, "checks": checks, "timings": timings},
                                        indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
