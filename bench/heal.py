"""Healing curve: distil a built (unhealed) testbed from the dense SmolLM2 and measure as it goes.

    python bench/heal.py --testbed results/.cache/testbed/<id> --tokens 65536 --lr 3e-4 \
        --eval-at 8192 16384 32768 65536 [--save-at 65536 --save-dir results/heal] [--out curve.json]

Starts from the testbed checkpoint (so the 3-minute MoEfication is not repeated),
runs `raymoe.testbed.heal.distill` with the given options (one pass, cosine schedule
over the whole `--tokens`) and, after the steps that reach each `--eval-at` token
count, measures on the builder's held-out windows (4096 tokens, 8 x 512): token
perplexity of the student and of the dense model, mean KL(dense || student) and
expert load max/mean. Prints the curve, the distillation throughput (tokens/s, the
held-out evaluations excluded) and the ratio of the student's perplexity to the dense
model's, all measured in this run. `--save-at` writes the student at those points
(save_pretrained + tokenizer) for accuracy evaluation (`bench/testbed.py`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", type=Path, required=True, help="an unhealed testbed directory")
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--train", choices=("mlp", "router"), default="mlp")
    ap.add_argument("--eval-at", type=int, nargs="*", default=[], help="token counts to measure at (0: before)")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--save-at", type=int, nargs="*", default=[])
    ap.add_argument("--save-dir", type=Path, default=Path("results/heal"))
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop after this much distillation time (the curve ends there; the student is saved)")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="choose --tokens to fit this distillation time, from 2 timed steps on a copy of the student")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from raymoe.testbed.config import HealConfig
    from raymoe.testbed.heal import distill, held_out_fidelity
    from raymoe.testbed.source import load_dense, load_tokenizer, wiki_sequences

    cfg = HealConfig(tokens=args.tokens, lr=args.lr, seq_len=args.seq_len, batch=args.batch, train=args.train)
    manifest = json.loads((args.testbed / "testbed.json").read_text())
    if manifest["options"].get("heal"):
        raise SystemExit("error: --testbed is already healed")
    torch.manual_seed(0)
    teacher = load_dense()
    student = AutoModelForCausalLM.from_pretrained(args.testbed, dtype=torch.float32).eval()
    tok = load_tokenizer()
    per_step = cfg.batch * cfg.seq_len
    if args.budget_seconds:
        import copy

        probe = copy.deepcopy(student)
        stamps: list[float] = []  # the first step is slow (allocation): time steps 2-3 of 3
        distill(probe, teacher, wiki_sequences(tok, "calib", 3 * per_step, cfg.seq_len),
                cfg.model_copy(update={"tokens": 3 * per_step}), progress=False,
                on_step=lambda done, total: stamps.append(time.monotonic()))
        del probe
        rate = {"tokens_per_s": round(2 * per_step / (stamps[-1] - stamps[0]), 1)}
        steps_fit = max(1, int(rate["tokens_per_s"] * args.budget_seconds / per_step))
        cfg = cfg.model_copy(update={"tokens": steps_fit * per_step})
        args.eval_at = sorted({0, *(cfg.tokens * f // (4 * per_step) * per_step for f in (1, 2, 4))})
        args.save_at = [args.eval_at[-2], cfg.tokens]
        print(f"probe: {rate['tokens_per_s']} tokens/s -> {cfg.tokens} tokens for {args.budget_seconds:.0f} s",
              flush=True)
    steps = -(-cfg.tokens // per_step)
    windows = wiki_sequences(tok, "calib", steps * per_step, cfg.seq_len)
    held = wiki_sequences(tok, "heldout", args.eval_tokens, 512)
    dense_ppl = held_out_fidelity(teacher, teacher, held)["ppl"]
    curve = []

    def measure(done_tokens: int):
        t0 = time.monotonic()
        m = held_out_fidelity(student, teacher, held)
        row = {"tokens": done_tokens, **{k: round(v, 4) for k, v in m.items()},
               "ppl_over_dense": round(m["ppl"] / dense_ppl, 3), "eval_s": round(time.monotonic() - t0, 1)}
        curve.append(row)
        print(json.dumps(row), flush=True)

    eval_steps = {-(-t // per_step): t for t in args.eval_at if t > 0}
    save_steps = {-(-t // per_step): t for t in args.save_at}
    if 0 in args.eval_at:
        measure(0)

    class _Stop(Exception):
        pass

    t_start, paused = time.monotonic(), [0.0]
    state = {"done": 0}

    def save(done: int) -> None:
        out = args.save_dir / f"healed-{done * per_step}"
        if not out.exists():
            student.save_pretrained(out)
            tok.save_pretrained(out)
            row = next((r for r in curve if r["tokens"] == done * per_step), None)
            cfg_heal = {**manifest, "heal": {"tokens": done * per_step, "bench": True}}
            if row is not None:  # the held-out figures at this point (same windows as the builder's)
                cfg_heal["metrics"] = {**manifest["metrics"], "moe_ppl": row["ppl"], "dense_ppl": dense_ppl}
                cfg_heal["heal"] |= {"kl_after": row["kl"], "load_max_over_mean_after": row["load_max_over_mean"]}
            cfg_heal["options"] = {**manifest["options"], "heal": cfg.model_dump() | {"tokens": done * per_step}}
            (out / "testbed.json").write_text(json.dumps(cfg_heal, indent=2))
            print(f"saved {out}", flush=True)

    def on_step(done: int, total: int) -> None:
        t0 = time.monotonic()
        state["done"] = done
        if done in eval_steps:
            measure(done * per_step)
        if done in save_steps:
            save(done)
        paused[0] += time.monotonic() - t0
        if args.max_seconds and time.monotonic() - t_start - paused[0] > args.max_seconds and done < total:
            raise _Stop()

    try:
        info = distill(student, teacher, windows, cfg, progress=False, on_step=on_step)
    except _Stop:
        done = state["done"]
        print(f"stopped by --max-seconds after {done} of {steps} steps", flush=True)
        measure(done * per_step)
        save(done)
        info = {"steps": done, "seconds": round(time.monotonic() - t_start - paused[0], 1), "train_kl": []}
        info["tokens_per_s"] = round(done * per_step / info["seconds"], 1)
    summary = {"options": cfg.model_dump(), "dense_ppl": round(dense_ppl, 3), "steps": info["steps"],
               "distill_seconds": info["seconds"], "tokens_per_s": info["tokens_per_s"], "curve": curve,
               "train_kl": info["train_kl"]}
    print(json.dumps({k: v for k, v in summary.items() if k != "train_kl"}))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
