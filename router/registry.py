"""Routing policies by name. Entries are import paths, so heavy policies import only when chosen."""

from __future__ import annotations

from typing import Any

from thrifty.router.base import Router
from thrifty.server.kit.registry import Registry

ROUTERS: Registry[Router] = Registry(
    "router",
    Router,
    {
        "pinned": "thrifty.router.builtin:PinnedRouter",
        "cheapest": "thrifty.router.builtin:CheapestRouter",
        "round_robin": "thrifty.router.builtin:RoundRobinRouter",
        "learned": "thrifty.router.learned:LearnedRouter",
    },
)


def build_router(name: str, options: dict[str, Any]) -> Router:
    """Instantiate a policy; a ValueError names the problem (unknown policy, bad options)."""
    return ROUTERS.build(name, options)
