"""The budgeter stage: how many thinking tokens this turn may use.

A budget policy is one subclass of :class:`Budgeter` with one abstract method, :meth:`Budgeter.decide`;
the concrete :meth:`Budgeter.assign` checks the answer and caps it by what is left of the session's
total budget. ``None`` means "no budget": the request goes to the backend as the client sent it. The
gateway only calls the stage for reasoning backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from thrifty.server.kit.reload import NothingToReload


class TurnRecord(Protocol):
    """A finished turn of the session, as the gateway records it."""

    @property
    def model(self) -> str: ...
    @property
    def thinking_budget(self) -> int | None: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> str | None: ...


class SessionView(Protocol):
    """The conversation so far: its recent turns and what is left of the problem's budget."""

    @property
    def turn_count(self) -> int: ...
    @property
    def turns(self) -> Sequence[TurnRecord]: ...
    @property
    def budget(self) -> int | None: ...
    @property
    def spent(self) -> int: ...
    @property
    def remaining(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class BudgetRequest:
    """What a budget policy may look at for one turn."""

    model: str
    body: Mapping[str, Any]
    # None when the session store was unreachable: the policy decides without history.
    session: SessionView | None = None
    # Every sub-question of the problem (``thrifty.plan``: this request's, else the session's), if known.
    plan: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """A budget and how it was reached: the policy that decided, and what it wants recorded of it
    (a learned policy's distribution over its levels, say), kept with the session's turn."""

    budget: int | None
    policy: str
    detail: Mapping[str, Any] = field(default_factory=dict)


# OpenAI's reasoning_effort, as a share of the way up a budgeter's levels (none: no thinking at all).
EFFORT_POSITION = {"none": None, "minimal": 0.0, "low": 0.25, "medium": 0.5, "high": 1.0}
DEFAULT_LEVELS = (64, 128, 256, 512, 1024, 2048)


class Budgeter(ABC):
    """Base class of thinking-budget policies."""

    name: ClassVar[str]

    def status(self) -> dict[str, Any]:
        """What the admin endpoint shows about the policy (the kit's Reloadable protocol)."""
        return {}

    async def reload(self) -> dict[str, Any]:
        """Read the policy's artifact again (policies backed by one); the new status."""
        raise NothingToReload(f"budgeter '{self.name}' has no artifact to reload")

    def levels(self) -> tuple[int, ...]:
        """The budgets this policy chooses among; ``reasoning_effort`` maps onto them."""
        return DEFAULT_LEVELS

    def effort_budget(self, effort: str) -> int:
        """The budget a request's ``reasoning_effort`` asks for: a level part of the way up (none: 0)."""
        position = EFFORT_POSITION[effort]
        if position is None:
            return 0
        levels = self.levels()
        return levels[int(position * (len(levels) - 1) + 0.5)]  # halves round up: medium of 6 is the 4th

    async def explain(self, request: BudgetRequest) -> BudgetDecision:
        """The decision with what is worth recording about it; by default just :meth:`decide`'s budget."""
        return BudgetDecision(await self.decide(request), self.name)

    async def assign_decision(self, request: BudgetRequest) -> BudgetDecision:
        """:meth:`explain`, checked and never more than what is left of the session's total budget."""
        decision = await self.explain(request)
        budget = decision.budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budgeter '{self.name}' returned {budget!r}; budgets are ints >= 0 or None")
        remaining = request.session.remaining if request.session is not None else None
        if remaining is not None:
            capped = remaining if budget is None else min(budget, remaining)
            if capped != budget:
                decision = BudgetDecision(capped, decision.policy, {**decision.detail, "capped_from": budget})
        return decision

    async def assign(self, request: BudgetRequest) -> int | None:
        """The policy's budget, never more than what is left of the session's total budget."""
        return (await self.assign_decision(request)).budget

    @abstractmethod
    async def decide(self, request: BudgetRequest) -> int | None:
        """The thinking-token budget for this turn, or None for no limit."""
