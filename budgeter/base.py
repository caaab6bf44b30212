"""The budgeter stage: how many thinking tokens this turn may use.

A budget policy is one subclass of :class:`Budgeter` with one abstract method, :meth:`Budgeter.decide`;
the concrete :meth:`Budgeter.assign` checks the answer. ``None`` means "no budget": the request goes to
the backend as the client sent it. The gateway only calls the stage for reasoning backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class BudgetRequest:
    """What a budget policy may look at for one turn."""

    model: str
    body: Mapping[str, Any]
    # The multi-turn session (history, remaining budget) arrives with the session store; None until then.
    session: Any = None


class Budgeter(ABC):
    """Base class of thinking-budget policies."""

    name: ClassVar[str]

    async def assign(self, request: BudgetRequest) -> int | None:
        budget = await self.decide(request)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budgeter '{self.name}' returned {budget!r}; budgets are ints >= 0 or None")
        return budget

    @abstractmethod
    async def decide(self, request: BudgetRequest) -> int | None:
        """The thinking-token budget for this turn, or None for no limit."""
