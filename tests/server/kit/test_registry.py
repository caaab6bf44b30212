"""One registry helper for every stage: lazy import paths, clear errors."""

from __future__ import annotations

import pytest

from thrifty.budgeter import BUDGETERS, Budgeter
from thrifty.router import ROUTERS, Router
from thrifty.server.kit.registry import Registry


def test_routers_and_budgeters_share_it() -> None:
    assert isinstance(ROUTERS, Registry) and isinstance(BUDGETERS, Registry)
    assert issubclass(ROUTERS.load("cheapest"), Router) and issubclass(BUDGETERS.load("table"), Budgeter)
    assert BUDGETERS.build("static", {"budget": 5}).status() == {"budget": 5}
    with pytest.raises(ValueError, match="unknown budgeter 'nope'; choose one of: none, static, tab, table"):
        BUDGETERS.load("nope")
    with pytest.raises(ValueError, match="budgeter 'static': invalid options"):
        BUDGETERS.build("static", {"budgett": 5})


def test_an_entry_that_is_not_the_stage_is_refused() -> None:
    odd = Registry("budgeter", Budgeter, {"router": "thrifty.router.builtin:CheapestRouter"})
    with pytest.raises(TypeError, match="is not a Budgeter"):
        odd.load("router")
