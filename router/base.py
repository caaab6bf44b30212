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

from thrifty.server.kit.reload import NothingToReload

AUTO = "auto"  # the virtual model that asks the router


class NoRoute(Exception):
    """No candidate model can serve this request under this policy (the gateway answers 503)."""


class InvalidRouting(ValueError):
    """The client asked for routing in a way this router cannot honour (the gateway answers 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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

    @property
    def virtual_models(self) -> tuple[str, ...]:
        """Model names clients may ask for to be routed by this policy (``auto`` and any presets)."""
        return (AUTO,)

    def status(self) -> dict[str, Any]:
        """What the admin endpoint shows about the policy (the kit's Reloadable protocol)."""
        return {"virtual_models": list(self.virtual_models)}

    async def reload(self) -> dict[str, Any]:
        """Read the policy's artifact again (learned routers); the new status."""
        raise NothingToReload(f"router '{self.name}' has no artifact to reload")

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
