"""Name checks for sweep specs: methods (and options), tasks, models, calibration data; each returns a problem or None."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raymoe.errors import RaymoeError

__all__ = ["check_method", "check_task", "check_model", "check_data"]


def check_method(name: str, options: dict[str, Any]) -> str | None:
    from raymoe.methods import load_method, parse_options

    try:
        parse_options(load_method(name), {k: v for k, v in options.items()})
    except RaymoeError as err:
        return str(err)
    return None


def check_task(name: str) -> str | None:
    from raymoe.eval.tasks import check_task_name

    try:
        check_task_name(name)
    except RaymoeError as err:
        return str(err)
    return None


def check_model(model: str, base: Path) -> str | None:
    if model == "testbed":
        return None
    from raymoe.moe import MoeModelSpec

    try:
        MoeModelSpec.from_pretrained(model)
    except RaymoeError as err:
        return str(err)
    return None


def check_data(data: str) -> str | None:
    """A calibration source must be a corpus name or an existing file (read later, on the stage actors)."""
    from raymoe.data.packages import NAMED_CORPORA
    from raymoe.data.splits import SPLIT_CORPORA

    if data in NAMED_CORPORA or data in SPLIT_CORPORA or Path(data).is_file():
        return None
    return f"{data!r} is neither a corpus name ({', '.join([*NAMED_CORPORA, *SPLIT_CORPORA])}) nor an existing file"
