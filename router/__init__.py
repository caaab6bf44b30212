"""Which model answers: the router stage's interface, its built-in policies and their registry."""

from thrifty.router.base import ModelCandidate, NoRoute, Router, RoutingDecision, RoutingRequest
from thrifty.router.registry import ROUTERS, build_router

__all__ = [
    "ROUTERS",
    "ModelCandidate",
    "NoRoute",
    "Router",
    "RoutingDecision",
    "RoutingRequest",
    "build_router",
]
