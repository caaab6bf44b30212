"""Budget policies by name. Entries are import paths, so heavy policies import only when chosen."""

from __future__ import annotations

from typing import Any

from thrifty.budgeter.base import Budgeter
from thrifty.server.kit.registry import Registry

BUDGETERS: Registry[Budgeter] = Registry(
    "budgeter",
    Budgeter,
    {
        "none": "thrifty.budgeter.builtin:NoBudgeter",
        "static": "thrifty.budgeter.builtin:StaticBudgeter",
        "table": "thrifty.budgeter.table:TableBudgeter",
        "tab": "thrifty.budgeter.tab.serving:TabBudgeter",
    },
)


def build_budgeter(name: str, options: dict[str, Any]) -> Budgeter:
    """Instantiate a policy; a ValueError names the problem (unknown policy, bad options)."""
    return BUDGETERS.build(name, options)
