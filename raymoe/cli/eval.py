"""`raymoe eval VARIANT... [--plan PLAN.json ... --source SOURCE] --tasks T1,T2 --backend BACKEND --workers N --out RESULTS`.

A `--plan` is a virtual variant (raymoe.eval.variants): the source model with the plan's removed experts
masked out of routing; workers load the source once for all plans of it."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from raymoe.errors import RaymoeError

__all__ = ["Eval"]


class Eval:
    help = "score checkpoints on lm-eval tasks with a Ray fleet of vLLM or transformers workers"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("variants", nargs="*", metavar="VARIANT", help="checkpoint directory, or NAME=DIR")
        p.add_argument("--plan", action="append", default=[], metavar="[NAME=]PLAN",
                       help="score a pruning plan (plan.json) virtually: on its source model with the removed "
                            "experts masked out of routing, no checkpoint written (repeatable)")
        p.add_argument("--source", type=Path, default=None,
                       help="the source checkpoint of --plan (default: the model the plan names)")
        p.add_argument("--tasks", required=True,
                       help="comma-separated tasks, each NAME or NAME:LIMIT (offline: arc_easy, arc_challenge, piqa, "
                            "hellaswag, winogrande, boolq, mmlu, mmlu_<subject>, gsm8k, wiki_ppl, wiki_heldout_ppl, c4_ppl; "
                            "fidelity against --reference: kld:wiki_heldout, kld:wiki_calib, kld:wiki, kld:c4)")
        p.add_argument("--reference", type=Path, default=None,
                       help="the reference model of fidelity tasks kld:<corpus> (e.g. the unpruned checkpoint)")
        p.add_argument("--kld-cache", type=Path, default=None,
                       help="where the reference's cached distributions live (default $RAYMOE_CACHE/kld or "
                            "~/.cache/raymoe/kld)")
        p.add_argument("--limit", type=int, default=None, help="documents per task where NAME:LIMIT is not given")
        from raymoe.eval.backends import BACKENDS, scorer_names

        p.add_argument("--backend", choices=scorer_names(), default="hf",
                       help="; ".join(f"{n}: {BACKENDS.get(n).summary}" for n in scorer_names()))
        p.add_argument("--workers", type=int, default=1, help="engine actors in the pool")
        p.add_argument("--out", type=Path, help="run directory: writes OUT/results.parquet (read by `raymoe report`)")
        p.add_argument("--run", default=None, help="run name in the rows (default: the name of OUT)")
        p.add_argument("--overwrite", action="store_true", help="replace OUT/results.parquet if it exists")
        p.add_argument("--write-tasks", type=Path, default=None, metavar="DIR",
                       help="only write the offline task YAMLs to DIR (for `lm_eval --include_path DIR`)")
        e = p.add_argument_group("engine")
        e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
        e.add_argument("--max-length", type=int, default=None, help="tokens per scored window")
        e.add_argument("--batch-size", type=int, default=8, help="transformers backend batch size")
        e.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallel size")
        e.add_argument("--gpus", action="store_true", help="vLLM workers reserve tensor-parallel-size GPUs each")
        e.add_argument("--compile", action="store_true",
                       help="vLLM: allow torch.compile / CUDA graphs (GPU clusters; the CPU build needs eager)")
        e.add_argument("--vllm-python", type=Path, default=None,
                       help="interpreter of the vLLM environment (default .venv-vllm/bin/python)")
        e.add_argument("--max-attempts", type=int, default=3, help="runs of a pair before giving up on worker deaths")
        e.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start a local one)")
        e.add_argument("--no-progress", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from raymoe.eval.options import EngineOptions, FleetOptions
        from raymoe.eval.tasks import check_task, parse_tasks, write_task_yaml

        tasks = parse_tasks(args.tasks, limit=args.limit)
        kinds = {t.name: check_task(t.name) for t in tasks}  # unknown task / missing data: error, nothing run
        if args.write_tasks is not None:
            for t in tasks:
                if kinds[t.name] == "offline":
                    print(write_task_yaml(t.name, args.write_tasks))
            return 0
        if args.out is None:
            raise RaymoeError("--out RESULTS is required")
        if args.limit is not None and args.limit < 1:
            raise RaymoeError("--limit must be a positive integer")
        try:
            engine = EngineOptions(dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size,
                                   tensor_parallel_size=args.tensor_parallel_size, gpus=args.gpus,
                                   enforce_eager=not args.compile, vllm_python=args.vllm_python)
            opts = FleetOptions(backend=args.backend, workers=args.workers, max_attempts=args.max_attempts,
                                engine=engine)
        except ValidationError as err:
            first = err.errors()[0]
            raise RaymoeError(f"invalid option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return self._run(args, tasks, kinds, opts)

    def _run(self, args, tasks, kinds, opts) -> int:
        import polars as pl

        from raymoe.eval.backends import BACKENDS
        from raymoe.eval.fleet import EvalFleet
        from raymoe.eval.reference import check_reference, default_cache_dir
        from raymoe.eval.results import write_results
        from raymoe.eval.variants import parse_variants
        from raymoe.ray_cluster import RayResources, ensure_ray

        variants = parse_variants(args.variants, args.plan, args.source)
        BACKENDS.get(opts.backend).check(opts.engine, [v.path for v in variants])
        if any(kinds[t.name] == "fidelity" for t in tasks):
            if args.reference is None:
                raise RaymoeError("fidelity tasks (kld:<corpus>) need --reference MODEL (e.g. the unpruned checkpoint)")
            check_reference(args.reference, [v.path for v in variants])  # exists, same vocabulary
            cache = (args.kld_cache or default_cache_dir()).resolve()
            tasks = [replace(t, reference=str(args.reference.resolve()), cache_dir=str(cache))
                     if kinds[t.name] == "fidelity" else t for t in tasks]
        run_id = args.run or args.out.resolve().name
        out = args.out / "results.parquet"
        if out.exists() and not args.overwrite:
            raise RaymoeError(f"results file {out} already exists (choose another --out, or --overwrite)")
        ensure_ray(RayResources(address=args.ray_address, min_cpus=opts.workers * opts.num_cpus + 1))
        with EvalFleet(opts) as fleet:
            rows = fleet.run(variants, tasks, run_id=run_id, progress=not args.no_progress)
        write_results(out, rows, overwrite=args.overwrite)
        df = pl.read_parquet(out).select("variant", "task", "metric", "value", "stderr", "n")
        with pl.Config(tbl_rows=len(df), tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
            print(df)
        print(f"wrote {len(rows)} rows to {out}" + (f" ({fleet.deaths} worker deaths absorbed)" if fleet.deaths
                                                     else ""))
        return 0
