"""Evaluation: a Ray fleet of engine actors (vLLM or transformers) scoring variants x lm-eval tasks.

- `tasks`: offline task YAMLs from packaged data; `parse_tasks("arc_easy:200,wiki_ppl")`
- `variants`: validated checkpoints with provenance
- `fleet`: `EvalFleet(FleetOptions(...)).run(variants, tasks, run_id=...)` -> rows
- `results`: the Parquet schema and atomic writer

Heavy modules (ray, lm-eval, polars) load when their submodule is imported.
"""

__all__ = ["tasks", "variants", "fleet", "results", "options", "backends"]
