"""`raymoe calibrate MODEL --data wiki|FILE --samples N --seq-len L --stages S [--replicas R] --out STATS`."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["Calibrate"]


class Calibrate:
    help = "stream calibration text through Ray stage actors and write a stats directory"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="checkpoint directory (safetensors + config.json)")
        p.add_argument("--data", default="wiki", help="corpus name (wiki, c4, code, tiny, ...; wiki_calib / wiki_heldout: the article split) or a .txt/.jsonl file")
        p.add_argument("--samples", type=int, default=128, help="calibration sequences N")
        p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence L")
        p.add_argument("--stages", type=int, default=None,
                       help="pipeline stages S (default: 1, or from --stage-memory)")
        p.add_argument("--stage-memory", type=float, default=None, metavar="GB",
                       help="per-stage weight budget in GiB (S derived from it)")
        p.add_argument("--replicas", type=int, default=1, help="data-parallel pipeline replicas R")
        p.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch")
        p.add_argument("--probe-tokens", type=int, default=None,
                       help="tokens per micro-batch on which all experts run (default: about 5%% of the expert cost)")
        p.add_argument("--clusters", type=int, default=10, help="calibration clusters K (Pathfinder)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--in-flight", type=int, default=4, help="micro-batches in flight per replica")
        p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per stage actor")
        p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per stage actor")
        p.add_argument("--placement", choices=["pack", "spread", "strict_spread"], default="pack")
        p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
        p.add_argument("--local", action="store_true", help="run all stages in this process, without Ray")
        p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
        p.add_argument("--out", required=True, help="stats directory to write (must not exist)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        p.add_argument("--no-progress", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from raymoe.calib.config import CalibConfig
        from raymoe.calib.shard import CalibrationError
        from raymoe.store.stats_store import StatsStoreError

        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise StatsStoreError(f"{out} already exists (choose another --out, or --overwrite)")
        try:
            cfg = CalibConfig(samples=args.samples, seq_len=args.seq_len, seed=args.seed, micro_batch=args.micro_batch,
                              probe_tokens=args.probe_tokens, clusters=args.clusters, stages=args.stages,
                              stage_memory_gb=args.stage_memory, replicas=args.replicas, in_flight=args.in_flight,
                              num_cpus=args.num_cpus, num_gpus=args.num_gpus, placement=args.placement,
                              dtype=args.dtype, local=args.local)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "config"
            raise CalibrationError(f"invalid calibration option {where}: {first['msg']}") from None
        from raymoe.calib.calibration import Prepared, calibrate
        from raymoe.store.stats_store import save_stats

        prep = Prepared(args.model, cfg, args.data)  # every input check happens here, before Ray starts
        stats = calibrate(prep, progress=not args.no_progress, ray_address=args.address)
        save_stats(stats, out, overwrite=args.overwrite)
        run = stats.manifest.run
        print(f"wrote {out}: {len(stats.layers)} MoE layers, {run['tokens']} tokens, "
              f"{run['tokens_per_second']:.0f} tokens/s, {len(prep.stages)} stages x {cfg.replicas} replicas")
        return 0
