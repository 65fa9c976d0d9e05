"""The fidelity reference: fixed windows, the reference's top-K distribution cached once, variants scored on it.

Windows: each of the corpus's first `docs` documents is tokenized with the
reference's tokenizer (no special tokens added) and cut into its first
`windows_per_doc` windows of `window` tokens (fewer for short documents; a
window needs >= 2 tokens). Position t of a window predicts token t + 1.

Cache: one safetensors file per (reference checkpoint, corpus, window settings, K),
written atomically, never pickled. The checkpoint is identified by its layout hash
(config.json, tensor names, dtypes, shapes, byte ranges) and by each shard file's
size and modification time (`weights_stamp`): two checkpoints of one layout but other
weights (e.g. the unhealed and the healed testbed) never share a cache file, and a
rebuilt checkpoint misses the cache instead of hashing all its bytes. Layout:
  tokens [N, W] int32 (zero-padded), lengths [N], docs [N]     the windows
  top_logp [P, K] float32, top_ids [P, K] int32                the reference's top-K log-probabilities
  rest_logp [P] float32                                        log of the mass outside the top K
  tail_ids [P, S] int32, tail_logp [P, S] float32              S tokens drawn from p restricted to the tail
                                                               (seeded), with the reference's log p there
  targets [P] int32                                            the next tokens
with P = sum over windows of (length - 1), positions in window order. The
metadata records the tokenizer's vocabulary hash, so a variant with another
vocabulary is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from raymoe.eval.fidelity import FidelityError, corpus_documents, token_scores

__all__ = ["WindowSpec", "CACHE_VERSION", "default_cache_dir", "reference_file", "weights_stamp", "tokenizer_sha", "build_reference", "load_reference",
           "score_windows", "check_reference"]

CACHE_VERSION = 2
_PER_POSITION = ("top_logp", "top_ids", "rest_logp", "targets", "tail_ids", "tail_logp")


@dataclass(frozen=True)
class WindowSpec:
    """Which windows a fidelity task scores, and how much of the reference is kept."""

    corpus: str
    docs: int = 40  # first documents of the corpus (the task's limit)
    window: int = 256  # tokens per window (capped by the model's positions)
    windows_per_doc: int = 2
    top_k: int = 32  # reference log-probabilities kept per position
    tail_samples: int = 64  # tokens sampled from the reference's tail per position (unbiased tail KL)
    seed: int = 0  # tail sampling
    batch: int = 4  # windows per forward pass

    def key(self) -> dict:
        d = asdict(self)
        d.pop("batch")
        return d


def default_cache_dir() -> Path:
    """Where reference distributions are cached when no directory is given: $RAYMOE_CACHE/kld or
    ~/.cache/raymoe/kld."""
    return Path(os.environ.get("RAYMOE_CACHE", Path.home() / ".cache" / "raymoe")) / "kld"


def weights_stamp(ckpt) -> list[list]:
    """[file name, size, mtime_ns] of every shard: the weights' identity without reading them."""
    files = sorted({info.file for info in ckpt.infos.values()}, key=lambda f: f.name)
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def reference_file(reference: str | Path, spec: WindowSpec, cache_dir: str | Path) -> Path:
    from raymoe.moe.safetensors_files import SafetensorsCheckpoint, model_hash

    ckpt = SafetensorsCheckpoint(reference)
    layout = model_hash(reference, ckpt)
    key = json.dumps({"model": layout, "weights": weights_stamp(ckpt), **spec.key(), "v": CACHE_VERSION},
                     sort_keys=True)
    return Path(cache_dir) / f"kld-{spec.corpus}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"


def tokenizer_sha(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def _windows(tokenizer, spec: WindowSpec, positions: int) -> list[tuple[int, list[int]]]:
    width = min(spec.window, positions)
    out = []
    for d, text in enumerate(corpus_documents(spec.corpus)[: spec.docs]):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for w in range(spec.windows_per_doc):
            chunk = ids[w * width:(w + 1) * width]
            if len(chunk) < 2:
                break
            out.append((d, chunk))
    if not out:
        raise FidelityError(f"kld:{spec.corpus}: no window of >= 2 tokens in its first {spec.docs} documents")
    return out


def _batches(lengths: np.ndarray, size: int) -> list[list[int]]:
    """Window indices grouped by equal length (no padding), `size` at a time, in window order."""
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lengths.tolist()):
        by_len.setdefault(n, []).append(i)
    return [ids[j:j + size] for ids in by_len.values() for j in range(0, len(ids), size)]


def _log_probs(model, tokens) -> "torch.Tensor":  # noqa: F821
    import torch

    with torch.inference_mode():
        logits = model(input_ids=tokens).logits[:, :-1].float()  # [B, W-1, V]
    return torch.log_softmax(logits, -1)


def build_reference(model, tokenizer, spec: WindowSpec, out: Path, *, progress: bool = False) -> Path:
    """Run the reference on the windows and write the cache file (temp file, then rename)."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    positions = int(getattr(model.config, "max_position_embeddings", spec.window))
    windows = _windows(tokenizer, spec, positions)
    lengths = np.array([len(w) for _, w in windows])
    tokens = torch.zeros((len(windows), int(lengths.max())), dtype=torch.int32)  # [N, W]
    for i, (_, ids) in enumerate(windows):
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
    parts: dict[int, tuple] = {}
    gen = torch.Generator().manual_seed(spec.seed)
    for batch in tqdm(_batches(lengths, spec.batch), desc=f"reference kld:{spec.corpus}", disable=not progress):
        logp = _log_probs(model, tokens[batch, : lengths[batch[0]]].long())  # [B, T, V]
        top = logp.topk(spec.top_k, dim=-1)  # [B, T, K]
        tail = logp.scatter(-1, top.indices, float("-inf"))  # [B, T, V] log p outside the top K
        rest = torch.logsumexp(tail, -1)  # [B, T]
        for j, i in enumerate(batch):
            draw = _tail_draws(tail[j], rest[j], spec.tail_samples, gen)  # [T, S]
            parts[i] = (top.values[j], top.indices[j].int(), rest[j], tokens[i, 1: lengths[i]], draw.int(),
                        tail[j].gather(-1, draw))
    order = range(len(windows))
    tensors = {"tokens": tokens, "lengths": torch.tensor(lengths, dtype=torch.int64),
               "docs": torch.tensor([d for d, _ in windows], dtype=torch.int64),
               "top_logp": torch.cat([parts[i][0] for i in order]).contiguous(),
               "top_ids": torch.cat([parts[i][1] for i in order]).contiguous(),
               "rest_logp": torch.cat([parts[i][2] for i in order]).contiguous(),
               "targets": torch.cat([parts[i][3] for i in order]).contiguous(),
               "tail_ids": torch.cat([parts[i][4] for i in order]).contiguous(),
               "tail_logp": torch.cat([parts[i][5] for i in order]).contiguous()}
    meta = {"spec": json.dumps(spec.key()), "tokenizer_sha": tokenizer_sha(tokenizer),
            "vocab": str(int(model.config.vocab_size)), "version": str(CACHE_VERSION)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def _tail_draws(tail_logp, rest_logp, samples: int, gen) -> "torch.Tensor":  # noqa: F821
    """S tokens per position drawn from p restricted to the tail (p / p_R outside the top K) [T, S].

    A position whose tail has no mass (K = V) draws token 0 with log p = -inf: token_scores ignores it."""
    import torch

    if samples == 0:
        return torch.zeros((tail_logp.shape[0], 0), dtype=torch.long)
    probs = (tail_logp - rest_logp[:, None]).exp()  # [T, V]
    empty = ~torch.isfinite(rest_logp)  # [T]
    probs[empty] = 1.0
    draw = torch.multinomial(probs, samples, replacement=True, generator=gen)  # [T, S]
    draw[empty] = 0
    return draw


def load_reference(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def score_windows(model, tokenizer, ref: dict, meta: dict, *, batch: int = 4, name: str = "variant") -> dict[int, dict]:
    """Score a variant on the cached windows: {doc: {kld, agree, ll: per-position arrays}}."""
    if tokenizer_sha(tokenizer) != meta["tokenizer_sha"] or int(model.config.vocab_size) != int(meta["vocab"]):
        raise FidelityError(f"{name}: its tokenizer or vocabulary differs from the reference's; "
                            "a KL divergence needs the same vocabulary")
    lengths = ref["lengths"].numpy()
    starts = np.concatenate([[0], np.cumsum(lengths - 1)])  # window i's positions: starts[i]:starts[i+1]
    per_doc: dict[int, dict[str, list]] = {}
    scores: dict[int, dict] = {}
    for b in _batches(lengths, batch):
        logq = _log_probs(model, ref["tokens"][b, : lengths[b[0]]].long())  # [B, T, V]
        for j, i in enumerate(b):
            sl = slice(int(starts[i]), int(starts[i + 1]))
            scores[i] = token_scores(logq[j], {k: ref[k][sl] for k in _PER_POSITION})
    for i in range(len(lengths)):  # window order, so a document's positions stay in order
        d = per_doc.setdefault(int(ref["docs"][i]), {"kld": [], "agree": [], "ll": []})
        for key in d:
            d[key].append(scores[i][key])
    return {d: {k: np.concatenate(v) for k, v in s.items()} for d, s in per_doc.items()}


def check_reference(reference: str | Path, variants: list[str]) -> None:
    """Fail before any work: the reference must be a checkpoint whose vocabulary every variant shares."""
    from transformers import AutoTokenizer

    ref = Path(reference)
    if not (ref / "config.json").is_file():
        raise FidelityError(f"KL reference {ref} is not a model directory (no config.json)")
    try:
        ref_tok = AutoTokenizer.from_pretrained(str(ref))
    except (OSError, ValueError) as err:
        raise FidelityError(f"KL reference {ref}: no usable tokenizer ({str(err).splitlines()[0]})") from None
    ref_vocab = json.loads((ref / "config.json").read_text()).get("vocab_size")
    want = tokenizer_sha(ref_tok)
    for path in variants:
        vocab = json.loads((Path(path) / "config.json").read_text()).get("vocab_size")
        if vocab != ref_vocab or tokenizer_sha(AutoTokenizer.from_pretrained(str(path))) != want:
            raise FidelityError(f"{path}: its tokenizer or vocabulary differs from the KL reference {ref}; "
                                "a KL divergence needs the same vocabulary")
