"""Testbed figures: the dense SmolLM2-135M vs its MoEfied testbed(s), with the eval fleet's own harness.

    python bench/testbed.py --testbed results/testbed [--testbed OTHER ...] --items 200 --ppl-docs 40

Each model is scored in this process by lm-eval's transformers backend on raymoe's
offline tasks, exactly as `raymoe eval --backend hf` scores a variant:
`wiki_heldout_ppl` (word perplexity on the first N held-out wiki articles, which
neither the builder nor `wiki_calib` calibration ever sees), ARC-Easy and PIQA
(`acc` and `acc_norm` on the first N validation items). The dense model is the
GGUF dequantised to float32 and saved as a plain Llama checkpoint. The builder's
own token-level held-out perplexity (testbed.json) and build time are listed beside.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from raymoe.eval.hf_worker import load_hf
from raymoe.eval.options import EngineOptions
from raymoe.eval.runner import EngineHost
from raymoe.eval.tasks import TaskRequest

COLUMNS = [("wiki_heldout_ppl", "word_perplexity"), ("arc_easy", "acc"), ("arc_easy", "acc_norm"),
           ("piqa", "acc"), ("piqa", "acc_norm")]


def score(name: str, path: Path, args) -> dict:
    """One model on the three tasks: {model, <task>/<metric>: value, ..., seconds}."""
    host = EngineHost(name, "hf", lambda p: load_hf(p, EngineOptions()))
    t0 = time.perf_counter()
    row: dict = {"model": name}
    for task, limit in (("wiki_heldout_ppl", args.ppl_docs), ("arc_easy", args.items), ("piqa", args.items)):
        for r in host.evaluate(str(path), TaskRequest(task, limit))["rows"]:
            row[f"{task}/{r['metric']}"] = r["value"]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(row), flush=True)
    return row


def save_dense(out: Path) -> Path:
    from raymoe.testbed.source import load_dense, load_tokenizer

    dense = load_dense()  # dequantised float32; drop the GGUF quantizer marker so it saves as plain Llama
    dense.hf_quantizer = None
    if hasattr(dense.config, "quantization_config"):
        del dense.config.quantization_config
    dense.save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", type=Path, action="append", default=[], help="a built testbed directory (repeatable)")
    ap.add_argument("--items", type=int, default=200, help="ARC-Easy and PIQA items")
    ap.add_argument("--ppl-docs", type=int, default=40, help="held-out wiki articles")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="raymoe-dense-") as tmp:
        rows.append(score("dense SmolLM2-135M", save_dense(Path(tmp)), args))
    for path in args.testbed:
        m = json.loads((path / "testbed.json").read_text())
        o = m["options"]
        name = f"{o['layout']} E={o['experts']} K={o['top_k']}" + (f" shared={o['shared']}" if o["shared"] else "")
        row = score(name, path, args)
        row |= {"builder ppl (moe / dense)": f"{m['metrics']['moe_ppl']:.2f} / {m['metrics']['dense_ppl']:.2f}",
                "build_s": m["build_seconds"]}
        rows.append(row)
    head = ["model", *(f"{t}/{k}" for t, k in COLUMNS), "builder ppl (moe / dense)", "build_s"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in head) + " |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
