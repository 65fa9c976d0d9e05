"""One typed, lazy registry of names -> "module:attr" entries (methods, subcommands, backends).

Like lm-evaluation-harness's `lm_eval/api/registry.py`: an entry is a string
naming where the object lives, imported the first time the name is asked for and
cached, so a registry can list every name without importing any heavy module.
Every lookup of an unknown name raises the registry's error with one message:

    unknown method 'magic' (known: c-gnn-prune, c-prune, ...)

    METHODS = Registry("method", {"reap": "raymoe.methods.baselines:ReapPrune"}, error=UnknownMethodError)
    cls = METHODS.get("reap")        # imports raymoe.methods.baselines once
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from raymoe.errors import RaymoeError, UnknownNameError

__all__ = ["Registry", "UnknownNameError", "load_target"]

T = TypeVar("T")


def load_target(target: str):
    """The object a "module:attr" string names, importing the module (Python caches the import)."""
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """name -> "module:attr" (or the object itself), resolved lazily and cached; iterates over its names."""

    def __init__(self, kind: str, entries: Mapping[str, str | T] | None = None, *,
                 error: type[RaymoeError] = UnknownNameError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, str | T] = {}
        self._loaded: dict[str, T] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str | T) -> None:
        """Add `name`; a string target must be "module:attr". Registering a name twice is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already ({self._entries[name]!r})")
        if isinstance(target, str) and target.count(":") != 1:
            raise ValueError(f"{self.kind} {name!r}: target {target!r} is not 'module:attr'")
        self._entries[name] = target
        if not isinstance(target, str):
            self._loaded[name] = target

    def get(self, name: str) -> T:
        """The object registered as `name`, imported on first use (the registry's error if unknown)."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r} (known: {', '.join(self._entries)})")
        obj = load_target(str(self._entries[name]))
        self._loaded[name] = obj
        return obj

    def target(self, name: str) -> str:
        """Where `name` lives ("module:attr"), without importing it."""
        if name not in self._entries:
            self.get(name)  # raises the registry's error
        t = self._entries[name]
        return t if isinstance(t, str) else f"{type(t).__module__}:{type(t).__qualname__}"

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
