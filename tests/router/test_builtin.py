from __future__ import annotations

import pytest

from thrifty.router import ModelCandidate, NoRoute, RoutingRequest, build_router

REQUEST = RoutingRequest("chat", "auto", {"model": "auto"})
A = ModelCandidate("a", 1.0, 2.0, False, 4096)
B = ModelCandidate("b", 0.1, 0.2, False, 4096)
C = ModelCandidate("c", 0.1, 0.2, True, 4096)


async def test_cheapest_picks_lowest_total_price_ties_by_name() -> None:
    router = build_router("cheapest", {})
    assert (await router.route(REQUEST, [A, B])).model == "b"
    assert (await router.route(REQUEST, [C, A, B])).model == "b"


async def test_round_robin_cycles_in_name_order() -> None:
    router = build_router("round_robin", {})
    assert [(await router.route(REQUEST, [B, A])).model for _ in range(4)] == ["a", "b", "a", "b"]


async def test_pinned_refuses_rather_than_falling_back() -> None:
    router = build_router("pinned", {"model": "a"})
    assert (await router.route(REQUEST, [A, B])).model == "a"
    with pytest.raises(NoRoute, match="pinned model 'a' has no healthy backend"):
        await router.route(REQUEST, [B])


async def test_no_candidates() -> None:
    with pytest.raises(NoRoute):
        await build_router("cheapest", {}).route(REQUEST, [])
