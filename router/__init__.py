"""Which model answers: the router stage's interface, its built-in policies and their registry."""

from thrifty.router.base import (
    AUTO,
    InvalidRouting,
    ModelCandidate,
    NoRoute,
    Router,
    RoutingDecision,
    RoutingRequest,
)
from thrifty.router.registry import ROUTERS, build_router
from thrifty.server.kit.reload import NothingToReload

__all__ = [
    "AUTO",
    "ROUTERS",
    "InvalidRouting",
    "NothingToReload",
    "ModelCandidate",
    "NoRoute",
    "Router",
    "RoutingDecision",
    "RoutingRequest",
    "build_router",
]
