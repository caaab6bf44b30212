"""Budget policies that need no training: none and static."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from thrifty.budgeter.base import Budgeter, BudgetRequest


class NoBudgeter(Budgeter):
    """Never limits thinking."""

    name = "none"

    async def decide(self, request: BudgetRequest) -> int | None:
        return None


class StaticBudgeter(Budgeter):
    """The same budget for every turn."""

    name = "static"

    def __init__(self, budget: Annotated[int, Field(ge=0)]) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError("the static budgeter needs 'budget', an integer >= 0")
        self.budget = budget

    def status(self) -> dict[str, Any]:
        return {"budget": self.budget}

    async def decide(self, request: BudgetRequest) -> int | None:
        return self.budget
