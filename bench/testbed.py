"""Testbed figures: the dense SmolLM2-135M vs its MoEfied testbed(s), with the eval fleet's own harness.

    python bench/testbed.py --testbed results/testbed [--testbed OTHER ...] [--items N] --ppl-docs 40
    python bench/testbed.py --no-dense --testbed HEALED --out rows.json     # one model per call

Each model is scored in this process by lm-eval's transformers backend on raymoe's
offline tasks, exactly as `raymoe eval --backend hf` scores a variant:
`wiki_heldout_ppl` (word perplexity on the first N held-out wiki articles, which
neither the builder nor `wiki_calib` calibration ever sees), ARC-Easy and PIQA
(`acc` and `acc_norm`; whole validation splits, 570 and 1838 items, unless
`--items` limits them). Each value is printed with its 95% half-width
(1.96 x lm-eval's standard error; perplexity: bootstrap over articles).
Above-chance retention: (acc - chance) / (acc_dense - chance), chance 0.25 and 0.5.
The dense model is the GGUF dequantised to float32 and saved as a plain Llama
checkpoint. The builder's own token perplexity, build time and expert load
(mean over layers of max/mean, from testbed.json) are listed beside.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from raymoe.eval.hf_worker import load_hf
from raymoe.eval.options import EngineOptions
from raymoe.eval.engine_host import EngineHost
from raymoe.eval.tasks import TaskRequest

COLUMNS = [("wiki_heldout_ppl", "word_perplexity"), ("arc_easy", "acc"), ("arc_easy", "acc_norm"),
           ("piqa", "acc"), ("piqa", "acc_norm")]
CHANCE = {"arc_easy": 0.25, "piqa": 0.5}
Z95 = 1.96


def score(name: str, path: Path, args) -> dict:
    """One model on the three tasks: {model, <task>/<metric>: value, <task>/<metric>/hw: 95% half-width, ...}."""
    host = EngineHost(name, "hf", lambda p: load_hf(p, EngineOptions()))
    t0 = time.perf_counter()
    row: dict = {"model": name}
    for task, limit in (("wiki_heldout_ppl", args.ppl_docs), ("arc_easy", args.items), ("piqa", args.items)):
        for r in host.evaluate(str(path), TaskRequest(task, limit))["rows"]:
            row[f"{task}/{r['metric']}"] = r["value"]
            row[f"{task}/{r['metric']}/hw"] = None if r.get("stderr") is None else Z95 * r["stderr"]
            row[f"{task}/n"] = r.get("n")
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


def testbed_row(path: Path, args) -> dict:
    m = json.loads((path / "testbed.json").read_text())
    o = m["options"]
    name = f"{o['layout']} E={o['experts']} K={o['top_k']}" + (f" shared={o['shared']}" if o["shared"] else "")
    if o.get("heal"):
        name += f" healed {o['heal']['tokens']} tok"
    heal = m.get("heal") or {}
    row = score(name, path, args)
    load = heal.get("load_max_over_mean_after") or m["layer_means"]["load_max_over_mean"]
    return row | {"builder ppl (moe / dense)": f"{m['metrics']['moe_ppl']:.2f} / {m['metrics']['dense_ppl']:.2f}",
                  "build_s": m["build_seconds"], "load max/mean": round(float(load), 2)}


def markdown(rows: list[dict]) -> str:
    dense = next((r for r in rows if r["model"].startswith("dense")), None)
    head = ["model", *(f"{t}/{k}" for t, k in COLUMNS), "above-chance kept (ARC / PIQA acc)",
            "builder ppl (moe / dense)", "build_s", "load max/mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"]]
        for t, k in COLUMNS:
            v, hw = r.get(f"{t}/{k}"), r.get(f"{t}/{k}/hw")
            cells.append("" if v is None else f"{v:.3f}" + (f" ± {hw:.3f}" if hw else ""))
        if dense is not None and r is not dense:
            kept = [(r[f"{t}/acc"] - c) / (dense[f"{t}/acc"] - c) for t, c in CHANCE.items()]
            cells.append(" / ".join(f"{x:.0%}" for x in kept))
        else:
            cells.append("")
        cells += [str(r.get(c, "")) for c in head[-3:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", type=Path, action="append", default=[], help="a built testbed directory (repeatable)")
    ap.add_argument("--items", type=int, default=None, help="ARC-Easy and PIQA items (default: whole validation split)")
    ap.add_argument("--ppl-docs", type=int, default=40, help="held-out wiki articles")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense model")
    ap.add_argument("--rows", type=Path, action="append", default=[], help="earlier --out JSON to include in the table")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    if (args.items is not None and args.items < 1) or args.ppl_docs < 1:
        raise SystemExit("error: --items and --ppl-docs must be positive")

    new = []
    if not args.no_dense:
        with tempfile.TemporaryDirectory(prefix="raymoe-dense-") as tmp:
            new.append(score("dense SmolLM2-135M", save_dense(Path(tmp)), args))
    new += [testbed_row(path, args) for path in args.testbed]
    if args.out:  # only the rows scored by this call
        args.out.write_text(json.dumps(new, indent=2) + "\n")
    print("\n" + markdown([r for f in args.rows for r in json.loads(f.read_text())] + new))


if __name__ == "__main__":
    main()
