"""Build (or find cached) the testbed checkpoint: SmolLM2-135M MoEfied into a stock MoE.

Steps: load the dense model from the GGUF, take `calib_tokens` of wiki calibration
text, run it through the dense model once with every MLP replaced by a
`MoefyMLP` (each layer fits its groups, router and scales on the inputs it
receives: dense inputs, or those of the already-MoEfied earlier layers), export
the fitted layers into a stock transformers model, measure held-out perplexity
(dense and MoE), optionally heal the MoE by distillation from the dense model
(`cfg.heal`, `raymoe.testbed.heal`: held-out perplexity, KL to the dense model and
expert load recorded before and after), and write `save_pretrained` + tokenizer +
`testbed.json` atomically.

Cache: `testbed.json` records the options and their hash; a call whose hash
matches returns at once; a testbed of other options in `out` is rebuilt and
replaced (only after the new one is complete); any other existing directory
is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raymoe.errors import CheckpointError
from raymoe.atomic import atomic_dir, atomic_write_json
from raymoe.testbed.config import BUILDER_VERSION, UNHEALED_BUILDER_VERSION, TestbedConfig, TestbedConfigError

__all__ = ["MANIFEST", "TestbedResult", "build_testbed", "read_manifest", "moefy_model"]

MANIFEST = "testbed.json"
_KIND = "raymoe-testbed"


@dataclass(frozen=True)
class TestbedResult:
    __test__ = False
    path: Path
    cached: bool
    manifest: dict[str, Any]


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The testbed manifest in `out`, or None if `out` holds no complete testbed."""
    f = Path(out) / MANIFEST
    try:
        manifest = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("kind") != _KIND or not (Path(out) / "config.json").is_file():
        return None
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def moefy_model(dense, calib, cfg: TestbedConfig, *, progress: bool = True) -> list:
    """Fit one `MoeLayer` per decoder layer on calibration windows calib [N, S]; dense is left unchanged."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from raymoe.testbed.moefy import MoefyMLP, fit_layer_output

    rng = np.random.default_rng(cfg.seed)
    blocks = dense.model.layers
    bar = tqdm(total=len(blocks), desc="moefy layers", disable=not progress)

    def fit(mlp, x):
        layer, out = fit_layer_output(mlp, x, cfg, rng)
        bar.update(1)
        return layer, out

    wrappers = [MoefyMLP(b.mlp, fit, emit_moe=cfg.fit_inputs == "moe") for b in blocks]
    for b, w in zip(blocks, wrappers):
        b.mlp = w
    try:
        with torch.no_grad():
            dense.model(input_ids=calib)
    finally:
        for b, w in zip(blocks, wrappers):
            b.mlp = w.mlp
        bar.close()
    return [w.layer for w in wrappers]


def build_testbed(cfg: TestbedConfig, out: str | Path, *, eval_tokens: int = 4096,
                  progress: bool = True) -> TestbedResult:
    """Build the testbed for `cfg` into `out`, or return the cached one; see the module docstring."""
    out = Path(out)
    found = read_manifest(out)
    if found is not None and found.get("hash") == cfg.digest():
        return TestbedResult(out, True, found)
    if found is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} exists and is not a testbed; refusing to overwrite it")
    if eval_tokens and eval_tokens < cfg.seq_len:
        raise TestbedConfigError(f"--eval-tokens {eval_tokens} is below one window of --seq-len {cfg.seq_len}")

    import torch

    from raymoe.data import named_corpus_path
    from raymoe.testbed.export import build_moe_model
    from raymoe.testbed.perplexity import perplexity
    from raymoe.testbed.source import gguf_file, load_dense, load_tokenizer, wiki_sequences

    gguf, wiki = gguf_file(), named_corpus_path("wiki")  # data packages present? (clear error if not)
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    dense = load_dense(cfg.layers)
    if cfg.layers is not None and cfg.layers > dense.config.num_hidden_layers:
        raise TestbedConfigError(f"--layers {cfg.layers} exceeds the model's {dense.config.num_hidden_layers} layers")
    tokenizer = load_tokenizer()
    calib = wiki_sequences(tokenizer, "calib", cfg.calib_tokens, cfg.seq_len)
    heal_windows = None
    if cfg.heal is not None:  # taken before the fit, so too many tokens fail at once
        h = cfg.heal
        steps = -(-h.tokens // (h.batch * h.seq_len))
        heal_windows = wiki_sequences(tokenizer, "calib", steps * h.batch * h.seq_len, h.seq_len)
    held = wiki_sequences(tokenizer, "heldout", eval_tokens, cfg.seq_len) if eval_tokens else None
    layers = moefy_model(dense, calib, cfg, progress=progress)
    moe = build_moe_model(dense, layers, cfg)
    fit_seconds = time.monotonic() - start
    metrics: dict[str, Any] = {}
    heal: dict[str, Any] | None = None
    if held is not None:
        metrics = {"heldout_tokens": int(held.numel()),
                   "dense_ppl": perplexity(dense, held, progress=progress, desc="dense ppl")}
    if cfg.heal is not None:
        from raymoe.testbed.heal import distill, held_out_fidelity

        before = held_out_fidelity(moe, dense, held) if held is not None else {}
        heal = distill(moe, dense, heal_windows, cfg.heal, seed=cfg.seed, progress=progress)
        after = held_out_fidelity(moe, dense, held) if held is not None else {}
        heal |= {f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()}
        if held is not None:
            metrics["moe_ppl"] = after["ppl"]
    elif held is not None:
        metrics["moe_ppl"] = perplexity(moe, held, progress=progress, desc="moe ppl")
    keys = sorted(layers[0].metrics)
    manifest = {
        "kind": _KIND,
        "hash": cfg.digest(),
        "builder_version": BUILDER_VERSION if cfg.heal is not None else UNHEALED_BUILDER_VERSION,
        "options": cfg.model_dump(),
        "architecture": type(moe).__name__,
        "source": {"gguf": gguf.name, "gguf_sha256": _sha256(gguf), "wiki_sha256": _sha256(wiki)},
        "metrics": metrics,
        "layer_means": {k: sum(lay.metrics[k] for lay in layers) / len(layers) for k in keys},
        "layers": [{**lay.metrics, "load": lay.load} for lay in layers],
        **({"heal": heal} if heal is not None else {}),
        "build_seconds": round(time.monotonic() - start, 1),
        "fit_seconds": round(fit_seconds, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_dir(out, overwrite=found is not None or out.exists()) as tmp:
        moe.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
    return TestbedResult(out, False, manifest)
