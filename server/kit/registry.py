"""Stage implementations by name: ``{"static": "thrifty.budgeter.builtin:StaticBudgeter", …}``.

Entries are import paths, so an implementation's heavy imports (torch, an embedder) happen only when a
configuration chooses it. Configured as ``{name: {options}}``; the options are the class's keyword
arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

Stage = TypeVar("Stage")


class Registry(Generic[Stage]):
    """The implementations of one stage (routers, budgeters, …), each a subclass of ``base``."""

    # ``base`` is a plain ``type``: stage bases are abstract classes, which ``type[Stage]`` would refuse.
    def __init__(self, kind: str, base: type, entries: Mapping[str, str]) -> None:
        self.kind = kind
        self.base = base
        self.entries = dict(entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def unknown(self, name: str) -> str:
        return f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self.entries))}"

    def load(self, name: str) -> type[Stage]:
        """The class registered as ``name``; a ValueError for a name nobody registered."""
        if name not in self.entries:
            raise ValueError(self.unknown(name))
        module, _, attr = self.entries[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.entries[name]} is not a {self.base.__name__}")
        return cast(type[Stage], cls)

    def build(self, name: str, options: Mapping[str, Any]) -> Stage:
        """An instance; a ValueError names the problem (unknown name, options the class refuses)."""
        cls = self.load(name)
        try:
            return cls(**options)
        except TypeError as exc:
            raise ValueError(f"{self.kind} '{name}': invalid options {sorted(options)}: {exc}") from None
