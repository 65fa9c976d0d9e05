"""Shared fixtures: tiny checkpoints of every family, built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family, **overrides) -> path of a saved random tiny checkpoint (cached per session)."""
    from raymoe.testing import build_tiny_model

    cache: dict = {}

    def make(family: str, **kwargs):
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = family + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
            cache[key] = build_tiny_model(family, tmp_path_factory.mktemp("tiny") / name, **kwargs)
        return cache[key]

    return make


@pytest.fixture(autouse=True, scope="module")
def _ray_shutdown_after_module():
    """Each test module gets a Ray-free start: a module that initialised Ray shuts it down after."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
