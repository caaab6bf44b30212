"""Routing policies that need no training: a pinned model, the cheapest model, round-robin."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from thrifty.router.base import ModelCandidate, NoRoute, Router, RoutingDecision, RoutingRequest


class PinnedRouter(Router):
    """Always the configured model; 503 while it has no healthy backend (no silent fallback)."""

    name = "pinned"

    def __init__(self, model: Annotated[str, Field(min_length=1)]) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError("the pinned router needs 'model', the name of a configured model")
        self.model = model

    async def choose(self, request: RoutingRequest, candidates: Sequence[ModelCandidate]) -> RoutingDecision:
        if all(c.name != self.model for c in candidates):
            raise NoRoute(f"pinned model '{self.model}' has no healthy backend")
        return RoutingDecision(self.model, self.name)


class CheapestRouter(Router):
    """The healthy model with the lowest price (input + output per million tokens); ties by name."""

    name = "cheapest"

    async def choose(self, request: RoutingRequest, candidates: Sequence[ModelCandidate]) -> RoutingDecision:
        best = min(candidates, key=lambda c: (c.input_price + c.output_price, c.name))
        return RoutingDecision(best.name, self.name, {"price": best.input_price + best.output_price})


class RoundRobinRouter(Router):
    """Cycles through the healthy models in name order."""

    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    async def choose(self, request: RoutingRequest, candidates: Sequence[ModelCandidate]) -> RoutingDecision:
        ordered = sorted(candidates, key=lambda c: c.name)
        return RoutingDecision(ordered[next(self._counter) % len(ordered)].name, self.name)
