"""`raymoe smoke`: the end-to-end check that runs on any machine in about a minute.

For every family it builds a tiny random model, counts routing on text with
hooks, plans by frequency (uniform and per-layer), applies the plans, reloads
the pruned checkpoints with transformers and compares their logits with the
original model with the same experts masked. Prints one row per variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["Smoke"]


def _routing_counts(model, spec, ids):
    import torch

    counts = {l: torch.zeros(spec.experts[l]) for l in spec.moe_layers}
    hooks = []
    for l in spec.moe_layers:
        def hook(module, args, output, l=l):
            counts[l] += torch.bincount(output[2].flatten(), minlength=spec.experts[l]).float()
        hooks.append(model.model.layers[l].mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return counts


def _frequency_plan(spec, src, counts, keep_n: dict[int, int]):
    from raymoe.plan import LayerPlan, PrunePlan

    layers = []
    for l in spec.moe_layers:
        c = counts[l]
        if spec.n_group > 1:  # keep the same number in every routing group
            g = spec.experts[l] // spec.n_group
            per = keep_n[l] // spec.n_group
            keep = sorted(i * g + int(j) for i in range(spec.n_group) for j in c[i * g:(i + 1) * g].argsort(
                descending=True, stable=True)[:per])
        else:
            keep = sorted(int(j) for j in c.argsort(descending=True, stable=True)[:keep_n[l]])
        layers.append(LayerPlan(layer=l, num_experts=spec.experts[l], keep=keep,
                                scores={"frequency": c.tolist()}))
    return PrunePlan(method="frequency", ratio=None, model=str(src), model_type=spec.arch.family, layers=layers)


class Smoke:
    help = "build tiny models of every family, prune them, check they load and match the masked original"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, default=Path("results/smoke"), help="working directory")
        p.add_argument("--families", default="all", help="comma-separated families (default: all)")

    def run(self, args: argparse.Namespace) -> int:
        import shutil

        import torch
        from transformers import AutoModelForCausalLM

        from raymoe.checkpoint import apply_plan
        from raymoe.errors import RaymoeError
        from raymoe.moe import MoeModelSpec
        from raymoe.moe.variable import ensure_registered
        from raymoe.testing import FAMILIES, build_tiny_model, build_tokenizer
        from raymoe.testing.masking import mask_experts
        from raymoe.testing.tiny import SAMPLE_TEXT

        import transformers

        ensure_registered()  # the mixed-count variants load with AutoModelForCausalLM
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        families = FAMILIES if args.families == "all" else tuple(args.families.split(","))
        unknown = set(families) - set(FAMILIES)
        if unknown:
            raise RaymoeError(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
        shutil.rmtree(args.out, ignore_errors=True)
        ids = build_tokenizer()(SAMPLE_TEXT, return_tensors="pt").input_ids[:, :96]
        print(f"{'variant':<26} {'experts/layer':<16} {'max |dlogit|':>12}  loads")
        worst = 0.0
        for fam in families:
            src = build_tiny_model(fam, args.out / fam / "source")
            spec = MoeModelSpec.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src).eval()
            counts = _routing_counts(model, spec, ids)
            layers = spec.moe_layers
            budgets = {"half": {l: 4 for l in layers},
                       "mixed": {l: max([6, 4, 2, 8][i % 4], spec.min_kept) for i, l in enumerate(layers)}}
            for name, keep_n in budgets.items():
                plan = _frequency_plan(spec, src, counts, keep_n)
                out = apply_plan(src, plan, args.out / fam / name, progress=False)
                pruned = AutoModelForCausalLM.from_pretrained(out).eval()
                ref = AutoModelForCausalLM.from_pretrained(src).eval()
                mask_experts(ref, spec, {lp.layer: lp.keep for lp in plan.layers})
                with torch.no_grad():
                    diff = float((pruned(ids).logits - ref(ids).logits).abs().max())
                worst = max(worst, diff)
                shape = ",".join(str(n) for n in plan.counts().values())
                print(f"{fam + '/' + name:<26} {shape:<16} {diff:>12.2e}  ok")
        status = "PASS" if worst < 1e-4 else "FAIL"
        print(f"{status}: {len(families) * 2} pruned checkpoints written under {args.out}, "
              f"worst logit difference vs masked original {worst:.2e}")
        return 0 if status == "PASS" else 1
