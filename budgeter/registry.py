"""Budget policies by name. Entries are import paths, so heavy policies import only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

from thrifty.budgeter.base import Budgeter

BUDGETERS: dict[str, str] = {
    "none": "thrifty.budgeter.builtin:NoBudgeter",
    "static": "thrifty.budgeter.builtin:StaticBudgeter",
}


def build_budgeter(name: str, options: dict[str, Any]) -> Budgeter:
    """Instantiate a policy; a ValueError names the problem (unknown policy, bad options)."""
    if name not in BUDGETERS:
        raise ValueError(f"unknown budgeter '{name}'; choose one of: {', '.join(sorted(BUDGETERS))}")
    module, _, attr = BUDGETERS[name].partition(":")
    cls: type[Budgeter] = getattr(importlib.import_module(module), attr)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"budgeter '{name}': invalid options {sorted(options)}: {exc}") from None
