"""Healing the MoEfied testbed by distillation from the dense model it came from.

Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a
Neural Network") at temperature 1 on next-token distributions: for calibration
windows x, teacher p = softmax(z_dense(x)), student q = softmax(z_moe(x)), minimise

    L = (1/T) sum_t KL(p_t || q_t) = (1/T) sum_t sum_v p_tv (log p_tv - log q_tv)

with AdamW over the student's MLP parameters only (routers, routed experts, shared
expert: `train=mlp`) or its routers only (`train=router`); attention, norms and
embeddings stay the dense model's. The teacher's distributions are computed online
(one no-grad dense forward per batch), so the full-vocabulary KL costs no cache.
The student is the stock transformers MoE itself (top-k routing unchanged, gates
differentiable through the softmax), so what is trained is exactly what is saved.
One pass over `tokens` calibration tokens in windows of `seq_len`, shuffled (seeded),
`batch` windows per step; learning rate: linear warm-up over `warmup` of the steps,
then cosine decay to 10% of the peak; gradient norm clipped at 1.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raymoe.testbed.config import HealConfig

__all__ = ["trainable_parameters", "distill", "kl_loss", "held_out_fidelity"]


def trainable_parameters(model, train: str) -> list[torch.nn.Parameter]:
    """Set requires_grad: `.mlp.` parameters (train=mlp) or the routers `.mlp.gate.` (train=router); the rest frozen."""
    keep = ".mlp.gate." if train == "router" else ".mlp."
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(keep in name)
        if keep in name:
            params.append(p)
    if not params:
        raise RuntimeError(f"no parameter of the student matches {keep!r}")
    return params


def kl_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(p || q).  logits [..., V] -> scalar."""
    v = teacher_logits.shape[-1]
    logp = F.log_softmax(teacher_logits.reshape(-1, v).float(), dim=-1)  # [T, V]
    logq = F.log_softmax(student_logits.reshape(-1, v).float(), dim=-1)  # [T, V]
    return F.kl_div(logq, logp, log_target=True, reduction="batchmean")


def _lr_factor(step: int, steps: int, warmup: float) -> float:
    w = max(1, round(warmup * steps)) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, steps - w)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def distill(student, teacher, windows: torch.Tensor, cfg: HealConfig, *, seed: int = 0, progress: bool = True,
            on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train `student` in place on windows [N, S] (N * S >= cfg.tokens); returns the loss history and timings.

    `on_step(done, steps)` runs after each step (benchmarks evaluate the curve there; its time is not counted).
    """
    steps = max(1, math.ceil(cfg.tokens / (cfg.batch * cfg.seq_len)))
    if windows.shape[1] != cfg.seq_len or windows.shape[0] < steps * cfg.batch:
        raise ValueError(f"distill needs {steps * cfg.batch} windows of {cfg.seq_len}, got {tuple(windows.shape)}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(windows.shape[0], generator=gen)[: steps * cfg.batch]  # [steps * B]
    params = trainable_parameters(student, cfg.train)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    teacher.eval()
    student.eval()  # no dropout in these models; eval only fixes module flags, grads still flow
    history: list[float] = []
    t0, paused = time.monotonic(), 0.0
    bar = tqdm(range(steps), desc="heal", disable=not progress)
    try:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(step, steps, cfg.warmup)
            batch = windows[order[step * cfg.batch:(step + 1) * cfg.batch]]  # [B, S]
            with torch.no_grad():
                t_logits = teacher(input_ids=batch).logits  # [B, S, V]
            with torch.enable_grad():
                loss = kl_loss(t_logits, student(input_ids=batch).logits)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append(float(loss.detach()))
            bar.set_postfix(kl=f"{history[-1]:.3f}")
            if on_step is not None:
                t1 = time.monotonic()
                with torch.no_grad():
                    on_step(step + 1, steps)
                for p in params:
                    p.requires_grad_(True)
                paused += time.monotonic() - t1
    finally:
        bar.close()
        for p in student.parameters():
            p.requires_grad_(False)
    seconds = time.monotonic() - t0 - paused
    return {"steps": steps, "tokens": steps * cfg.batch * cfg.seq_len, "seconds": round(seconds, 1),
            "tokens_per_s": round(steps * cfg.batch * cfg.seq_len / seconds, 1),
            "train_kl": [round(x, 4) for x in history]}


def _router_indices(output) -> torch.Tensor | None:
    """The top-k expert indices a router module returns ((logits, weights, indices) in transformers 5.x)."""
    if isinstance(output, tuple):
        ints = [o for o in output if torch.is_tensor(o) and not o.is_floating_point()]
        return ints[-1] if ints else None
    return None


@torch.no_grad()
def held_out_fidelity(student, teacher, seqs: torch.Tensor, *, batch_size: int = 4) -> dict[str, float]:
    """Token perplexity, mean KL(teacher || student) and expert load max/mean (mean over MoE layers) on seqs [N, S]."""
    counts: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(student.model.layers):
        gate = getattr(block.mlp, "gate", None)
        if gate is None:
            continue

        def hook(module, args, output, i=i):
            idx = _router_indices(output)
            if idx is not None:
                n = module.weight.shape[0]
                counts[i] = counts.get(i, torch.zeros(n)) + torch.bincount(idx.flatten(), minlength=n).float()
        hooks.append(gate.register_forward_hook(hook))
    nll, kl, n = 0.0, 0.0, 0
    try:
        for s in range(0, len(seqs), batch_size):
            batch = seqs[s:s + batch_size]  # [B, S]
            logits = student(input_ids=batch).logits  # [B, S, V]
            t_logits = teacher(input_ids=batch).logits  # [B, S, V]
            tokens = batch.numel()
            kl += float(kl_loss(t_logits, logits)) * tokens
            nll += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                         batch[:, 1:].reshape(-1), reduction="sum"))
            n += tokens
    finally:
        for h in hooks:
            h.remove()
    predicted = n - len(seqs)  # every window predicts S - 1 tokens
    loads = [float(c.max() / c.mean()) for c in counts.values()]
    return {"ppl": math.exp(nll / predicted), "kl": kl / n,
            "load_max_over_mean": sum(loads) / len(loads) if loads else float("nan")}
