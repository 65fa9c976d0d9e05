"""One pipeline stage: a contiguous range of decoder layers, and the statistics they produce.

The stage builds its decoder layers on the meta device
(`raymoe.moe.build_decoder_layer`) and assigns the tensors read by
`load_layer_state` for its own layers only; the embeddings live in stage 0
and the final norm in the last stage (no lm_head). Every tensor name read is
recorded (`loaded`). The forward reproduces the transformers 5.x model loop
for a layer range: position ids 0..L-1, rotary embeddings computed once from
the config (`<Family>RotaryEmbedding`, as `<Family>Model.forward` does), the
causal mask (sliding-window where the config says so) from
`transformers.masking_utils`, then `layer(h, attention_mask, position_ids,
position_embeddings)`. The plain class runs in-process (the reference path)
and inside `raymoe.calib.actor.StageActor`.

Replay: the cluster pre-pass runs the same micro-batches through the same
layers as the statistics pass (only the clusters differ, and they enter the
statistics alone), so a stage keeps what its pre-pass forward captured (router
outputs, MoE inputs, its output; at most `REPLAY_BYTES`) and answers the
statistics pass from it instead of computing the forward again. The statistics
are the same bit for bit. A batch is replayed only if its input equals the
pre-pass one (token ids, or the previous stage's hidden states), and once:
a redone or uncached batch is computed as before.
"""

from __future__ import annotations

import importlib
import os
import resource
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from raymoe.calib.batches import BatchDone, MicroBatch, Pooled
from raymoe.calib.capture import attach
from raymoe.calib.shard import EMBED_NAME, NORM_NAME, CalibrationError, StageRange
from raymoe.calib.stats import StatsAccumulator
from raymoe.moe.layer_weights import build_decoder_layer, load_layer_state
from raymoe.moe.safetensors_files import SafetensorsCheckpoint
from raymoe.moe.model_spec import MoeModelSpec

__all__ = ["Stage", "RecordingCheckpoint", "REPLAY_BYTES"]

#: most bytes of pre-pass captures a stage keeps for replay (beyond it, batches are computed again)
REPLAY_BYTES = 1 << 30
_CAP_FIELDS = ("x", "logits", "weights", "index", "norms")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RecordingCheckpoint:
    """A checkpoint view that records the name of every tensor read through it."""

    def __init__(self, ckpt: SafetensorsCheckpoint):
        self.ckpt = ckpt
        self.loaded: list[str] = []

    @property
    def names(self) -> list[str]:
        return self.ckpt.names

    def __contains__(self, name: str) -> bool:
        return name in self.ckpt

    def get(self, name: str) -> torch.Tensor:
        self.loaded.append(name)
        return self.ckpt.get(name)


def _mask_kind(cfg, layer: int) -> str:
    types = getattr(cfg, "layer_types", None)
    if types:
        return types[layer]
    return "sliding_attention" if getattr(cfg, "sliding_window", None) is not None else "full_attention"


class Stage:
    """Decoder layers [first, last) of one model, with a statistics accumulator."""

    def __init__(self, model_path: str, stage: StageRange, *, num_clusters: int, dtype: str = "auto",
                 device: str = "cpu"):
        self.model_path, self.range, self.device = str(model_path), stage, torch.device(device)
        self.spec = spec = MoeModelSpec.from_pretrained(model_path)
        cast = _DTYPES.get(dtype)
        ckpt = RecordingCheckpoint(SafetensorsCheckpoint(model_path))
        self.layers: dict[int, torch.nn.Module] = {}
        self.captures = {}
        for l in stage.layers:
            layer = build_decoder_layer(spec, l)
            state = load_layer_state(ckpt, spec, l)
            if cast is not None:
                state = {k: v.to(cast) if v.is_floating_point() else v for k, v in state.items()}
            layer.load_state_dict(state, strict=True, assign=True)
            del state
            if any(t.is_meta for t in list(layer.parameters()) + list(layer.buffers())):
                raise CalibrationError(f"layer {l}: some weights were not found in the checkpoint")
            layer.self_attn.config._attn_implementation = "sdpa"
            self.layers[l] = layer.to(self.device).eval()
            if l in spec.experts:
                self.captures[l] = attach(layer)
        self.config = next(iter(self.layers.values())).self_attn.config
        prefix = spec.arch.decoder_layer.removesuffix("DecoderLayer")
        module = importlib.import_module(spec.arch.modeling_module)
        self.rotary = getattr(module, prefix + "RotaryEmbedding")(config=self.config).to(self.device)
        self.embed = self.norm = None
        if stage.embed:
            self.embed = ckpt.get(EMBED_NAME)
            self.embed = (self.embed.to(cast) if cast is not None else self.embed).to(self.device)  # [V, H]
        if stage.norm:
            self.norm = getattr(module, prefix + "RMSNorm")(spec.hidden_size, eps=self.config.rms_norm_eps)
            self.norm.weight.data = ckpt.get(NORM_NAME).to(self.norm.weight.dtype if cast is None else cast)
            self.norm = self.norm.to(self.device).eval()
        self.loaded = list(ckpt.loaded)
        self.stats = StatsAccumulator(spec, num_clusters)
        self.replay: dict[int, dict] = {}  # batch id -> what its pre-pass forward produced (see module doc)
        self.replay_bytes = 0

    # ---- pieces of the transformers model loop ------------------------------------------------
    def _mask(self, kind: str, h: torch.Tensor, pos: torch.Tensor):
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        fn = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
        return fn(config=self.config, inputs_embeds=h, attention_mask=None, past_key_values=None, position_ids=pos)

    def _bias(self, layer: int) -> torch.Tensor | None:
        name = self.spec.arch.correction_bias
        return None if name is None else getattr(self.layers[layer].mlp.gate, name).detach().float().cpu()

    @torch.inference_mode()
    def forward(self, mb: MicroBatch) -> MicroBatch | BatchDone | Pooled:
        entry = None if mb.prepass else self._take_replay(mb)
        if entry is not None:
            return self._replayed(mb, entry)
        inp = torch.from_numpy(mb.ids) if self.embed is not None else mb.hidden
        if self.embed is not None:
            h = F.embedding(inp.to(self.device), self.embed)  # [B, L, H]
        else:
            h = inp.to(self.device)  # [B, L, H]
        B, L, _ = h.shape
        pos = torch.arange(L, device=self.device).unsqueeze(0)  # [1, L]
        pe = self.rotary(h, pos)
        masks: dict[str, object] = {}
        cluster = torch.from_numpy(mb.clusters).repeat_interleave(L)  # [T]
        probe = torch.from_numpy(mb.probe)  # [P]
        prev = None if mb.prev is None else (mb.prev[0], torch.from_numpy(mb.prev[1]), torch.from_numpy(mb.prev[2]))
        keep = {} if mb.prepass else None  # captures kept for replay
        for l, layer in self.layers.items():
            kind = _mask_kind(self.config, l)
            if kind not in masks:
                masks[kind] = self._mask(kind, h, pos)
            out = layer(h, attention_mask=masks[kind], position_ids=pos, position_embeddings=pe)
            h = out[0] if isinstance(out, tuple) else out
            cap = self.captures.get(l)
            if cap is not None:
                if not mb.prepass:
                    prev = self.stats.update(l, cap, cluster, probe, mb.batch_id, layer.mlp.experts, self._bias(l),
                                             prev, mb.seq_ids)
                else:
                    keep[l] = tuple(getattr(cap, f) for f in _CAP_FIELDS)
                cap.clear()
        if self.norm is not None:
            result = self.norm(h).double().mean(1).cpu()  # [B, H] pooled final hidden states
        else:
            result = h.cpu()  # [B, L, H] to the next stage
        if mb.prepass:
            self._keep_replay(mb, inp, keep, result)
            if self.norm is not None:
                return Pooled(mb.batch_id, mb.seq_ids, result.numpy())
            return replace(mb, ids=None, hidden=result, prev=None)
        return self._finish(mb, result, prev, B * L)

    def _finish(self, mb: MicroBatch, result: torch.Tensor, prev, tokens: int) -> MicroBatch | BatchDone:
        if self.norm is not None:
            self.stats.add_pooled(mb.seq_ids.tolist(), result)  # [B, H]
            return BatchDone(mb.batch_id, tokens)
        if prev is not None and self.spec.next_moe_layer(prev[0]) is None:
            prev = None
        wire = None if prev is None else (prev[0], prev[1].cpu().numpy(), prev[2].cpu().numpy())
        return replace(mb, ids=None, hidden=result, prev=wire)

    # ---- replay of the pre-pass (see the module docstring) -------------------------------------
    def _keep_replay(self, mb: MicroBatch, inp: torch.Tensor, keep: dict, result: torch.Tensor) -> None:
        old = self.replay.pop(mb.batch_id, None)  # a pre-pass batch submitted again
        self.replay_bytes -= old["nbytes"] if old is not None else 0
        tensors = [inp, result] + [t for caps in keep.values() for t in caps if t is not None]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        if self.replay_bytes + nbytes > REPLAY_BYTES:
            return
        self.replay[mb.batch_id] = {"seq_ids": mb.seq_ids.copy(), "input": inp, "caps": keep, "result": result,
                                    "nbytes": nbytes}
        self.replay_bytes += nbytes

    def _take_replay(self, mb: MicroBatch) -> dict | None:
        entry = self.replay.pop(mb.batch_id, None)
        if entry is None:
            return None
        self.replay_bytes -= entry["nbytes"]
        inp = torch.from_numpy(mb.ids) if self.embed is not None else mb.hidden
        same = (inp is not None and np.array_equal(entry["seq_ids"], mb.seq_ids)
                and inp.shape == entry["input"].shape and inp.dtype == entry["input"].dtype
                and torch.equal(inp, entry["input"]))
        return entry if same else None

    def _replayed(self, mb: MicroBatch, entry: dict) -> MicroBatch | BatchDone:
        """The statistics pass for one batch from its pre-pass captures (same update calls, same order)."""
        B, L = entry["input"].shape[:2]
        cluster = torch.from_numpy(mb.clusters).repeat_interleave(L)  # [T]
        probe = torch.from_numpy(mb.probe)  # [P]
        prev = None if mb.prev is None else (mb.prev[0], torch.from_numpy(mb.prev[1]), torch.from_numpy(mb.prev[2]))
        for l, fields in entry["caps"].items():
            cap = self.captures[l]
            for f, t in zip(_CAP_FIELDS, fields):
                setattr(cap, f, t)
            prev = self.stats.update(l, cap, cluster, probe, mb.batch_id, self.layers[l].mlp.experts, self._bias(l),
                                     prev, mb.seq_ids)
            cap.clear()
        return self._finish(mb, entry["result"], prev, B * L)

    # ---- bookkeeping --------------------------------------------------------------------------
    def take_stats(self) -> dict:
        return self.stats.take()

    def rollback(self) -> None:
        """Discard statistics gathered since the last `take_stats` (a window being redone)."""
        self.stats.reset()

    def info(self) -> dict:
        return {"stage": self.range.to_dict(), "pid": os.getpid(), "loaded": list(self.loaded),
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "model_path": self.model_path}
