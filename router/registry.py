"""Routing policies by name. Entries are import paths, so heavy policies import only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

from thrifty.router.base import Router

ROUTERS: dict[str, str] = {
    "pinned": "thrifty.router.builtin:PinnedRouter",
    "cheapest": "thrifty.router.builtin:CheapestRouter",
    "round_robin": "thrifty.router.builtin:RoundRobinRouter",
    "learned": "thrifty.router.learned:LearnedRouter",
}


def build_router(name: str, options: dict[str, Any]) -> Router:
    """Instantiate a policy; a ValueError names the problem (unknown policy, bad options)."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router '{name}'; choose one of: {', '.join(sorted(ROUTERS))}")
    module, _, attr = ROUTERS[name].partition(":")
    cls: type[Router] = getattr(importlib.import_module(module), attr)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"router '{name}': invalid options {sorted(options)}: {exc}") from None
