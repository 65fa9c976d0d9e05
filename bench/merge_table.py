"""The merge-methods quality table from a sweep's results: merge methods beside the best pruning methods.

    .venv/bin/python bench/merge_table.py results/merge_quality/results.parquet

Per (ratio, variant): kld_mean and top-1 agreement on `kld:wiki_heldout`, token perplexity on its windows, word perplexity on
`wiki_heldout_ppl` (word perplexity) and any accuracy task present, each as value ± the 95% half-width from the
row's standard error. Then what alignment changes for each merge method run both ways: the paired difference
(aligned - `align=none`) on the same documents (raymoe.eval.uncertainty.paired_difference), with
a 95% interval; a difference whose interval contains 0 is a tie.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HEAD = {"kld_mean": "kld_mean", "top1_agree": "top-1 agree", "token_perplexity": "token ppl (KLD windows)",
        "word_perplexity": "wiki held-out word ppl"}


def main() -> int:
    import polars as pl

    from raymoe.eval.uncertainty import Z95, ItemScores, paired_difference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    args = ap.parse_args()
    df = pl.read_parquet(args.results)
    rows = {(r["variant"], r["task"], r["metric"]): r for r in df.iter_rows(named=True)}
    acc = sorted({(t, m) for _, t, m in rows if m == "acc"})
    cols = [("kld:wiki_heldout", "kld_mean"), ("kld:wiki_heldout", "top1_agree"),
            ("kld:wiki_heldout", "token_perplexity"), ("wiki_heldout_ppl", "word_perplexity"), *acc]
    cols = [c for c in cols if any((v, *c) in rows for v, _, _ in rows)]
    print("| removed | variant | " + " | ".join(HEAD.get(m, f"{t} {m}") for t, m in cols) + " |")
    print("|---|---|" + "---|" * len(cols))

    def ratio(v: str) -> float:
        m = re.search(r"@([0-9.]+)", v)
        return float(m.group(1)) if m else 0.0

    variants = sorted({v for v, _, _ in rows}, key=lambda v: (ratio(v), v))
    for v in variants:
        cells = []
        for t, m in cols:
            r = rows.get((v, t, m))
            digits = 1 if m.endswith("perplexity") else (4 if m == "kld_mean" else 3)
            cells.append("" if r is None else f"{r['value']:.{digits}f} ± {Z95 * (r['stderr'] or 0):.{digits}f}")
        print(f"| {ratio(v):.0%} | {v} | " + " | ".join(cells) + " |")
    print()
    print("| removed | method | metric | aligned - align=none (95%) | verdict |")
    print("|---|---|---|---|---|")
    for v in variants:
        base = next((u for u in variants if u.startswith(v + "[") and "align=none" in u), None)
        if "[" in v or base is None:
            continue
        for t, m in cols:
            a, b = rows.get((v, t, m)), rows.get((base, t, m)) if base else None
            if a is None or b is None or a["items"] is None:
                continue
            sc = [ItemScores.of(x["items"], x["item_num"], x["item_den"], x["transform"]) for x in (a, b)]
            d, se, _ = paired_difference(*sc)
            lo, hi = d - Z95 * se, d + Z95 * se
            print(f"| {ratio(v):.0%} | {v.split('@')[0]} | {m} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                  f"{'tie' if lo <= 0 <= hi else ('lower' if hi < 0 else 'higher')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
