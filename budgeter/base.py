"""The budgeter stage: how many thinking tokens this turn may use.

A budget policy is one subclass of :class:`Budgeter` with one abstract method, :meth:`Budgeter.decide`;
the concrete :meth:`Budgeter.assign` checks the answer and caps it by what is left of the session's
total budget. ``None`` means "no budget": the request goes to the backend as the client sent it. The
gateway only calls the stage for reasoning backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    def remaining(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class BudgetRequest:
    """What a budget policy may look at for one turn."""

    model: str
    body: Mapping[str, Any]
    # None when the session store was unreachable: the policy decides without history.
    session: SessionView | None = None


class Budgeter(ABC):
    """Base class of thinking-budget policies."""

    name: ClassVar[str]

    def status(self) -> dict[str, Any]:
        """What the admin endpoint shows about the policy (the kit's Reloadable protocol)."""
        return {}

    async def reload(self) -> dict[str, Any]:
        """Read the policy's artifact again (policies backed by one); the new status."""
        raise NothingToReload(f"budgeter '{self.name}' has no artifact to reload")

    async def assign(self, request: BudgetRequest) -> int | None:
        """The policy's budget, never more than what is left of the session's total budget."""
        budget = await self.decide(request)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budgeter '{self.name}' returned {budget!r}; budgets are ints >= 0 or None")
        remaining = request.session.remaining if request.session is not None else None
        if remaining is not None:
            budget = remaining if budget is None else min(budget, remaining)
        return budget

    @abstractmethod
    async def decide(self, request: BudgetRequest) -> int | None:
        """The thinking-token budget for this turn, or None for no limit."""
