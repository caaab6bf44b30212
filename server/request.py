"""One request on its way through the stages: what it asked for, what each stage decided, what came back.

Each stage reads what earlier stages decided and writes its own decision (the route, the session, the
budget, the backend and its usage); response headers and metrics are derived from the whole record
once, at the end (:mod:`thrifty.server.outcome`), not written piecemeal by the stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from thrifty.router import RoutingDecision
from thrifty.server.access import Principal
from thrifty.server.drain import InFlight
from thrifty.server.metrics import NO_BACKEND, NO_MODEL
from thrifty.server.sessions.manager import SessionContext
from thrifty.server.sessions.model import Session


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A completion endpoint: its backend path, and whether its requests carry a thinking budget
    (vLLM's ``thinking_token_budget`` belongs to chat requests)."""

    name: Literal["chat", "completions"]
    path: str
    thinking: bool


CHAT = Endpoint("chat", "/v1/chat/completions", thinking=True)
COMPLETIONS = Endpoint("completions", "/v1/completions", thinking=False)


@dataclass(slots=True)
class Usage:
    """What the backend said it used, from the OpenAI ``usage`` object (and the first choice's finish)."""

    prompt: int = 0
    completion: int = 0
    reasoning: int | None = None  # None: the backend did not say
    finish_reason: str | None = None
    reported: bool = False

    def read(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt, self.reported = prompt, True
        if isinstance(completion, int):
            self.completion, self.reported = completion, True
        details = usage.get("completion_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
            self.reasoning = details["reasoning_tokens"]


@dataclass(slots=True)
class RequestContext:
    endpoint: Endpoint
    started: float  # perf_counter at arrival
    handle: InFlight  # what the shutdown drain knows of it
    headers: Mapping[str, str] = field(default_factory=dict)  # the client's
    principal: Principal | None = None
    body: dict[str, Any] = field(default_factory=dict)  # what goes to the backend; stages rewrite it
    extension: Mapping[str, Any] = field(default_factory=dict)  # the request's own ``thrifty`` field
    session: SessionContext | None = None  # None: the request named no session
    problem: Session | None = None  # what the budgeter sees: the session so far, or a problem of one turn
    route: RoutingDecision | None = None
    budget: int | None = None  # the thinking budget that applied
    budget_policy: str | None = None  # who set it: the budgeter's policy, "client", "reasoning_effort"
    budget_detail: Mapping[str, Any] | None = None  # what the policy wants recorded with the turn
    backend: str = NO_BACKEND
    usage: Usage = field(default_factory=Usage)
    overhead: float = 0.0  # the gateway's own seconds (for streams, up to the first event)
    first_token_at: float | None = None
    unrecorded: bool = False  # answered, but the turn could not be recorded in its session
    finished: bool = False

    @property
    def model(self) -> str:
        return self.route.model if self.route is not None else NO_MODEL
