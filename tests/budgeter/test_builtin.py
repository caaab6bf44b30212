from __future__ import annotations

import pytest

from thrifty.budgeter import Budgeter, BudgetRequest, build_budgeter

REQUEST = BudgetRequest("m", {"messages": []})


async def test_none_and_static() -> None:
    assert await build_budgeter("none", {}).assign(REQUEST) is None
    assert await build_budgeter("static", {"budget": 64}).assign(REQUEST) == 64


async def test_a_policy_returning_nonsense_is_caught() -> None:
    class Broken(Budgeter):
        name = "broken"

        async def decide(self, request: BudgetRequest) -> int | None:
            return -3

    with pytest.raises(ValueError, match="budgets are ints >= 0 or None"):
        await Broken().assign(REQUEST)


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown budgeter 'nope'; choose one of: none, static, tab, table"):
        build_budgeter("nope", {})
