"""Benchmark a calibration pass: overhead over a bare forward, stage memory, throughput (one model, one run).

    .venv/bin/python bench/calibrate.py [--layers 24 --hidden 1024 --intermediate 1792 --experts 16
                                         --samples 8 --seq-len 512 --stages 4]

Writes a random Mixtral checkpoint tensor by tensor (one safetensors shard per
decoder layer, never the whole model in memory; routers N(0, 0.5), other
matrices N(0, 0.02), norms 1; the defaults give 8.2 GiB of float32 weights, so
that the weights dominate a stage actor's fixed ~0.5 GiB of Python, torch,
transformers and Ray; the run needs ~13 GiB of RAM and ~15 min on 2 cores),
then on the same N x L random token ids:
(a) the bare forward: the stock transformers model (`AutoModelForCausalLM`) in
    this process, micro-batch by micro-batch; then the calibration pass with
    default sampling (in-process, S=1, same micro-batches and threads);
    prints pass time / bare forward time (target <= 1.25);
(b) a Ray calibration with S=4 stage actors: the largest actor's peak RSS
    (ru_maxrss, read after the pass) / the checkpoint's weight bytes
    (target <= 0.35), and the actors' RSS before they load anything;
(c) tokens/s of both calibration passes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_random_mixtral(out: Path, *, layers: int, hidden: int, intermediate: int, experts: int, vocab: int,
                         heads: int, kv_heads: int, seed: int = 0) -> Path:
    """A random Mixtral checkpoint written one decoder layer at a time (on-disk names from MoeModelSpec)."""
    import torch
    from safetensors.torch import save_file

    from raymoe.moe import MoeModelSpec
    from raymoe.testing.tiny import build_tokenizer, tiny_config

    cfg = tiny_config("mixtral", layers=layers, hidden=hidden, experts=experts, vocab_size=vocab,
                      intermediate_size=intermediate, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=4096)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    spec = MoeModelSpec.from_pretrained(out)
    gen = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    weight_map: dict[str, str] = {}

    def shard(name: str, tensors: dict) -> None:
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    shard("model-embed.safetensors", {"model.embed_tokens.weight": rnd(vocab, hidden),
                                      "model.norm.weight": torch.ones(hidden),
                                      "lm_head.weight": rnd(vocab, hidden)})
    for l in range(layers):
        p = f"model.layers.{l}."
        t = {p + "input_layernorm.weight": torch.ones(hidden),
             p + "post_attention_layernorm.weight": torch.ones(hidden),
             p + "self_attn.q_proj.weight": rnd(heads * head_dim, hidden),
             p + "self_attn.k_proj.weight": rnd(kv_heads * head_dim, hidden),
             p + "self_attn.v_proj.weight": rnd(kv_heads * head_dim, hidden),
             p + "self_attn.o_proj.weight": rnd(hidden, heads * head_dim),
             spec.router_name(l): rnd(experts, hidden, std=0.5)}
        for e in range(experts):
            t[spec.expert_name(l, e, "gate")] = rnd(intermediate, hidden)
            t[spec.expert_name(l, e, "up")] = rnd(intermediate, hidden)
            t[spec.expert_name(l, e, "down")] = rnd(hidden, intermediate)
        shard(f"model-layer{l:03d}.safetensors", t)
        del t
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    build_tokenizer().save_pretrained(out)
    return out


def bare_forward_seconds(path: Path, ids: np.ndarray, micro_batch: int, reps: int) -> list[tuple[float, float]]:
    """The stock transformers model over the same micro-batches (after a warm-up): `reps` x (wall s, CPU s)."""
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    times = []
    with torch.inference_mode():
        model.model(torch.from_numpy(ids[:1, :32]))  # warm-up
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            for a in range(0, len(ids), micro_batch):
                model.model(torch.from_numpy(ids[a:a + micro_batch]))
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    del model
    gc.collect()
    return times


def calibration_pass_seconds(path: Path, ids: np.ndarray, cfg, probe: int, reps: int) -> list[tuple[float, float]]:
    """The in-process calibration pass (S=1, `LocalExecutor`) over the same micro-batches: `reps` x (wall, CPU)."""
    from raymoe.calib.batches import make_batches
    from raymoe.calib.executors import LocalExecutor
    from raymoe.calib.reduce import Totals
    from raymoe.calib.shard import plan_stages
    from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint

    spec = MoeModelSpec.from_pretrained(path)
    ex = LocalExecutor()
    ex.setup(str(path), plan_stages(spec, SafetensorsCheckpoint(path), 1), cfg.clusters, "auto")
    clusters = np.arange(len(ids)) % cfg.clusters
    warm = make_batches(ids[:1, :32], clusters[:1], 1, probe, cfg.seed)
    ex.run(warm, Totals(), progress=False)  # warm-up
    batches = make_batches(ids, clusters, cfg.micro_batch, probe, cfg.seed)
    times = []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        ex.run(batches, Totals(), progress=False)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    ex.close()
    gc.collect()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=1792)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--reps", type=int, default=1, help="timed repetitions of (a); the minimum counts")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the in-process passes of (a)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None, help="reuse a checkpoint written by an earlier run")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoint (default: delete it)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    import ray
    import torch

    from raymoe.calib import CalibConfig
    from raymoe.calib.pool import StagePool
    from raymoe.calib.calibration import Prepared, calibrate
    from raymoe.data.text import CalibData
    from raymoe.moe import SafetensorsCheckpoint

    work = Path(args.workdir or tempfile.mkdtemp(prefix="raymoe-bench-calib-"))
    t0 = time.perf_counter()
    if args.model is None:
        path = write_random_mixtral(work / "model", layers=args.layers, hidden=args.hidden,
                                    intermediate=args.intermediate, experts=args.experts, vocab=args.vocab,
                                    heads=8, kv_heads=2)
    else:
        path = args.model
        cfg = json.loads((path / "config.json").read_text())
        args.layers, args.hidden = cfg["num_hidden_layers"], cfg["hidden_size"]
        args.intermediate = cfg["intermediate_size"]
        args.experts, args.vocab = cfg["num_local_experts"], cfg["vocab_size"]
    weight_bytes = SafetensorsCheckpoint(path).total_bytes
    print(f"model: random Mixtral, {args.layers} layers, H={args.hidden}, I={args.intermediate}, E={args.experts}, "
          f"{weight_bytes / 2**30:.2f} GiB float32 (ready in {time.perf_counter() - t0:.0f} s)")
    ids = np.random.default_rng(0).integers(0, args.vocab, size=(args.samples, args.seq_len))
    data = CalibData(ids=ids, hash="bench", info={"source": "random ids", "samples": args.samples,
                                                   "seq_len": args.seq_len})
    tokens = ids.size
    cfg = CalibConfig(samples=args.samples, seq_len=args.seq_len, local=True)  # default sampling and micro-batch
    probe = cfg.probe_count(2, args.experts)
    torch.set_num_threads(args.threads)
    print(f"tokens: {args.samples} x {args.seq_len} = {tokens}; micro-batch {cfg.micro_batch}, "
          f"probe tokens {probe} per micro-batch (default), torch threads {torch.get_num_threads()} "
          f"(stage actors: 1)")

    bare = bare_forward_seconds(path, ids, cfg.micro_batch, args.reps)
    cal = calibration_pass_seconds(path, ids, cfg, probe, args.reps)
    t_bare, t_local = min(t for t, _ in bare), min(t for t, _ in cal)
    c_bare, c_local = min(c for _, c in bare), min(c for _, c in cal)
    print(f"(a) bare transformers forward {[round(t, 1) for t, _ in bare]} s wall / {[round(c, 1) for _, c in bare]} s "
          f"CPU; calibration pass (S=1, in-process) {[round(t, 1) for t, _ in cal]} s wall / "
          f"{[round(c, 1) for _, c in cal]} s CPU: ratio {t_local / t_bare:.3f} wall, {c_local / c_bare:.3f} CPU "
          f"(target <= 1.25; single-threaded, so CPU time is robust to other load on the machine)")

    dist_cfg = cfg.model_copy(update=dict(local=False, stages=args.stages, num_cpus=0.5))
    ray.init(num_cpus=max(2, args.stages), include_dashboard=False, log_to_driver=False)
    pool = StagePool(1, args.stages, num_cpus=0.5)
    idle = [p["peak_rss"] for p in ray.get([a.ping.remote() for a in pool.all_actors()])]
    dist = calibrate(Prepared(path, dist_cfg, data), pool=pool, progress=False)
    after = ray.get([a.info.remote() for a in pool.all_actors()])
    pool.shutdown()
    ray.shutdown()
    peaks = [i["peak_rss"] for i in after]
    s = int(np.argmax(peaks))
    stage_bytes = after[s]["stage"]["nbytes"]
    print(f"(b) S={args.stages}: stage actors' peak RSS {[round(p / 2**20) for p in peaks]} MiB; largest "
          f"{peaks[s] / 2**20:.0f} MiB (stage {s}: {stage_bytes / 2**20:.0f} MiB of weights) / model "
          f"{weight_bytes / 2**20:.0f} MiB = {peaks[s] / weight_bytes:.3f} (target <= 0.35); "
          f"an actor before loading: {max(idle) / 2**20:.0f} MiB, so weights-attributable "
          f"{(peaks[s] - max(idle)) / weight_bytes:.3f}")
    t_dist = dist.manifest.run["pass_seconds"]
    print(f"(c) tokens/s: in-process S=1 {tokens / t_local:.0f}, Ray S={args.stages} {tokens / t_dist:.0f} "
          f"({t_dist:.1f} s), bare forward {tokens / t_bare:.0f}")
    if args.model is None and not args.keep:
        shutil.rmtree(work if args.workdir is None else path)


if __name__ == "__main__":
    main()
