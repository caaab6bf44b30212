"""The router stage: given a request for the virtual model ``auto``, choose which model answers.

A routing family is one subclass of :class:`Router` with one abstract method, :meth:`Router.choose`;
the concrete :meth:`Router.route` checks the choice. The gateway passes only models that have at least
one healthy backend, so a router never picks a model nobody can serve.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


class NoRoute(Exception):
    """No candidate model can serve this request under this policy (the gateway answers 503)."""


@dataclass(frozen=True, slots=True)
class ModelCandidate:
    """A model the gateway can send a request to right now."""

    name: str
    input_price: float  # USD per million prompt tokens
    output_price: float  # USD per million completion tokens
    reasoning: bool
    context_length: int


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What a router may look at: the client's request body and headers (lower-cased names)."""

    endpoint: Literal["chat", "completions"]
    requested_model: str
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    model: str
    policy: str
    # Predictions behind the choice (e.g. expected accuracy and cost), for headers, sessions and logs.
    details: Mapping[str, float] = field(default_factory=dict)


class Router(ABC):
    """Base class of routing policies."""

    name: ClassVar[str]

    async def route(self, request: RoutingRequest, candidates: Sequence[ModelCandidate]) -> RoutingDecision:
        if not candidates:
            raise NoRoute("no model has a healthy backend")
        decision = await self.choose(request, candidates)
        if decision.model not in {c.name for c in candidates}:
            raise NoRoute(f"router '{self.name}' chose '{decision.model}', which has no healthy backend")
        return decision

    @abstractmethod
    async def choose(self, request: RoutingRequest, candidates: Sequence[ModelCandidate]) -> RoutingDecision:
        """Pick one of ``candidates`` (never empty)."""
