"""Reference implementations for the methods' tests (imported by conftest and tests)."""

from __future__ import annotations

import numpy as np
import torch


class HfLayer:
    """One MoE block of a checkpoint, as transformers builds it (router, experts, shared experts)."""

    def __init__(self, path, layer: int):
        from raymoe.moe import MoeModelSpec, SafetensorsCheckpoint, build_decoder_layer, load_layer_state

        self.spec = MoeModelSpec.from_pretrained(path)
        self.layer = layer
        self.state = load_layer_state(SafetensorsCheckpoint(path), self.spec, layer)
        module = build_decoder_layer(self.spec, layer, device="cpu")
        module.load_state_dict(self.state, strict=True)
        self.mlp = module.mlp.eval()

    def route(self, x: torch.Tensor):
        """transformers' own router: (logits [T, E], weights [T, k], indices [T, k])."""
        with torch.no_grad():
            return self.mlp.gate(x)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """f_e(x) from the fused tensors: down_e (silu(gate_e x) * up_e x) -> [T, H]."""
        gu = self.state["mlp.experts.gate_up_proj"][e]  # [2I, H]
        gate, up = gu.chunk(2, dim=0)
        down = self.state["mlp.experts.down_proj"][e]  # [H, I]
        return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T

    def block(self, x: torch.Tensor, keep: list[int] | None = None) -> torch.Tensor:
        """The block's output [T, H]; with `keep`, a block built with only those experts (rows sliced)."""
        if keep is None:
            with torch.no_grad():
                return self.mlp(x[None])[0]
        from raymoe.moe.layer_weights import layer_config

        cfg = layer_config(self.spec, self.layer)
        for key in self.spec.arch.count_keys:
            if hasattr(cfg, key):
                setattr(cfg, key, len(keep))
        sub = type(self.mlp)(cfg)
        idx = torch.tensor(keep)
        state = {}
        for name, t in self.mlp.state_dict().items():
            sliced = name.startswith(("gate.", "experts.")) and t.shape[:1] == (self.spec.experts[self.layer],)
            state[name] = t[idx] if sliced else t
        sub.load_state_dict(state, strict=True)
        with torch.no_grad():
            return sub.eval()(x[None])[0]


def brute_scores(x, hf: HfLayer, family: str) -> dict[str, np.ndarray]:
    """Per-token re-computation of the baselines' formulas for one layer (docs/METHODS.md)."""
    logits, w, idx = hf.route(x)
    E = logits.shape[1]
    p = torch.sigmoid(logits) if family == "deepseek_v3" else torch.softmax(logits.float(), dim=-1)  # [T, E]
    freq, mass, ean, reap_sum = np.zeros(E), p.sum(0).double().numpy(), np.zeros(E), np.zeros(E)
    for e in range(E):
        norm = hf.expert(e, x).norm(dim=-1)  # [T]
        for t in range(len(x)):
            hit = (idx[t] == e).nonzero()
            if len(hit):
                freq[e] += 1
                ean[e] += float(norm[t])
                reap_sum[e] += float(w[t, hit[0, 0]]) * float(norm[t])
    reap = np.divide(reap_sum, freq, out=np.zeros(E), where=freq > 0)
    return {"frequency": freq, "soft-count": mass, "ean": ean, "reap": reap}
