"""One registry per vocabulary: stages, tasks, LLM backends, losses, model aliases.

Each registry maps a name to an object (usually a class) and fails loudly: registering a name twice, or asking
for a name that is not there, raises with the valid names (and the nearest one, for typos). Registration is by
import: a module that defines a stage registers it at import time with `@stages.register`, and `load_all()`
imports every module listed in `MODULES`; a module listed there that does not exist is an error, never skipped.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from compass.errors import CompassError

T = TypeVar("T")


class Registry(Generic[T]):
    """`autoload=False` for a vocabulary whose entries all register in one module (losses, tasks): a lookup then
    imports no stage module."""

    def __init__(self, kind: str, autoload: bool = True):
        self.kind = kind
        self.autoload = autoload
        self._items: dict[str, T] = {}

    def _load(self) -> None:
        if self.autoload:
            load_all()

    def register(self, obj: T | None = None, *, name: str | None = None) -> Any:
        """`@registry.register` (uses `obj.name`) or `registry.register(obj, name="x")`."""
        def add(o: T) -> T:
            key = name or getattr(o, "name", None)
            if not key or not isinstance(key, str):
                raise TypeError(f"{self.kind} registry: {o!r} has no name")
            if key in self._items and self._items[key] is not o:
                raise ValueError(f"{self.kind} {key!r} is registered twice ({self._items[key]!r} and {o!r})")
            self._items[key] = o
            return o
        return add(obj) if obj is not None else add

    def get(self, key: str) -> T:
        self._load()
        try:
            return self._items[key]
        except KeyError:
            raise CompassError(self.unknown(key)) from None

    def unknown(self, key: str) -> str:
        near = difflib.get_close_matches(key, list(self._items), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"unknown {self.kind} {key!r}{hint}: use one of {', '.join(sorted(self._items)) or '(none)'}"

    def __contains__(self, key: str) -> bool:
        self._load()
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())


stages: Registry[type] = Registry("stage")
# Training losses: name -> factory(model, cfg, task_ids, gather) (they register in compass.train.trainer).
losses: Registry[Callable] = Registry("loss", autoload=False)

# Modules that register stages (and other vocabularies) at import time. A missing module is a bug: it raises.
MODULES: list[str] = [
    "compass.datagen.structured",
    "compass.datagen.llm_run",
    "compass.filters.langid",
    "compass.filters.quality",
    "compass.filters.dedup_signatures",
    "compass.filters.dedup",
    "compass.filters.leakage",
    "compass.filters.mine",  # the encode and mine stages
    "compass.train.splits",
]
_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in MODULES:
        importlib.import_module(mod)


def register_module(name: str) -> Callable[[], None]:
    """Add a module to MODULES (for plugins); it is imported on the next lookup."""
    global _loaded
    if name not in MODULES:
        MODULES.append(name)
        _loaded = False
    return load_all
