"""Sessions on the in-memory store: ledger, history for the budgeter, the sessions API."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import CHAT, config_for, gateway, standins
from thrifty.server.sessions.memory import MemorySessionStore
from thrifty.server.sessions.model import Turn
from thrifty.server.standin import StandinState


def _config(url: str, **extra: object) -> object:
    return config_for([{"name": "b", "model": "m", "url": url, "reasoning": True}], **extra)


async def test_turns_are_recorded_and_returned() -> None:
    state = StandinState(model="m", record=True)
    with standins(state) as (b,):
        async with gateway(_config(b.url, budgeter={"static": {"budget": 100}})) as (http, _):
            body = {"model": "m", **CHAT, "thrifty": {"budget": 1000}}
            first = await http.post("/v1/chat/completions", json=body, headers={"X-Session-ID": "conv-1"})
            assert first.status_code == 200 and first.headers["x-thrifty-session"] == "conv-1"
            assert "thrifty" not in state.received[-1]  # the gateway's own field is not forwarded
            stream = {"model": "m", **CHAT, "stream": True, "metadata": {"session_id": "conv-1"}}
            second = await http.post("/v1/chat/completions", json=stream)
            assert second.headers["x-thrifty-session"] == "conv-1"
            assert state.received[-1]["metadata"] == {"session_id": "conv-1"}  # forwarded untouched

            session = (await http.get("/v1/sessions/conv-1")).json()
            assert session["id"] == "conv-1" and session["object"] == "thrifty.session"
            assert session["turn_count"] == 2 and session["budget"] == 1000
            assert session["spent"] == 6 + 4 and session["remaining"] == 990
            one, two = session["turns"]
            assert one["model"] == "m" and one["thinking_budget"] == 100
            assert (one["prompt_tokens"], one["completion_tokens"], one["reasoning_tokens"]) == (12, 6, 0)
            assert one["finish_reason"] == "stop" and one["latency_s"] > 0
            assert (two["completion_tokens"], two["reasoning_tokens"], two["finish_reason"]) == (4, 1, "stop")

            deleted = await http.delete("/v1/sessions/conv-1")
            assert deleted.json() == {"id": "conv-1", "object": "thrifty.session.deleted", "deleted": True}
            missing = await http.get("/v1/sessions/conv-1")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
            assert (await http.delete("/v1/sessions/conv-1")).status_code == 404


async def test_a_request_without_a_session_starts_one() -> None:
    with standins(StandinState(model="m")) as (b,):
        async with gateway(_config(b.url)) as (http, _):
            response = await http.post("/v1/chat/completions", json={"model": "m", **CHAT})
            session_id = response.headers["x-thrifty-session"]
            assert len(session_id) == 32
            again = await http.post(
                "/v1/chat/completions", json={"model": "m", **CHAT}, headers={"X-Session-ID": session_id}
            )
            assert again.headers["x-thrifty-session"] == session_id
            assert (await http.get(f"/v1/sessions/{session_id}")).json()["turn_count"] == 2


async def test_the_budgeter_sees_the_session_and_never_overspends_it() -> None:
    state = StandinState(model="m", record=True)
    with standins(state) as (b,):
        config = _config(b.url, budgeter={"static": {"budget": 8}}, sessions={"default_budget": 20})
        async with gateway(config) as (http, _):
            budgets = []
            for _ in range(5):
                response = await http.post(
                    "/v1/chat/completions", json={"model": "m", **CHAT}, headers={"X-Session-ID": "s"}
                )
                budgets.append(int(response.headers["x-thrifty-thinking-budget"]))
            # B = 20; each turn spends 6 completion tokens: 20, 14, 8, 2, 0 remain before each turn.
            assert budgets == [8, 8, 8, 2, 0]
            assert [r["thinking_token_budget"] for r in state.received] == budgets
            session = (await http.get("/v1/sessions/s")).json()
            assert session["spent"] == 30 and session["remaining"] == 0


async def test_fifty_concurrent_turns_leave_the_ledger_exact() -> None:
    with standins(StandinState(model="m", delay_s=0.01)) as (b,):
        async with gateway(_config(b.url)) as (http, _):
            responses = await asyncio.gather(
                *(
                    http.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers={"X-Session-ID": "busy"})
                    for _ in range(50)
                )
            )
            assert all(r.status_code == 200 for r in responses)
            session = (await http.get("/v1/sessions/busy")).json()
            assert session["turn_count"] == 50 and session["spent"] == 300 and len(session["turns"]) == 50


@pytest.mark.parametrize(
    ("headers", "body", "param"),
    [
        ({"X-Session-ID": "has space"}, {}, "X-Session-ID"),
        ({"X-Session-ID": "x" * 129}, {}, "X-Session-ID"),
        ({}, {"metadata": {"session_id": 7}}, "metadata.session_id"),
        ({}, {"thrifty": {"budjet": 5}}, "thrifty.budjet"),
        ({}, {"thrifty": {"budget": -1}}, "thrifty.budget"),
        ({}, {"thrifty": "big"}, "thrifty"),
    ],
)
async def test_bad_session_fields(headers: dict, body: dict, param: str) -> None:
    with standins(StandinState(model="m")) as (b,):
        async with gateway(_config(b.url)) as (http, _):
            response = await http.post("/v1/chat/completions", json={"model": "m", **CHAT, **body}, headers=headers)
            assert response.status_code == 400 and response.json()["error"]["param"] == param
            assert (await http.get("/v1/sessions/bad%20id")).status_code == 400


def _turn(tokens: int) -> Turn:
    return Turn("m", None, 1, tokens, 0, 0.1, "stop", 0.0)


async def test_memory_store_is_bounded_and_expires() -> None:
    now = [0.0]
    store = MemorySessionStore(ttl_s=10, history=2, max_turns=3, max_sessions=2, clock=lambda: now[0])
    await store.open("a", 100)
    await store.open("b", None)
    await store.open("a", None)  # touching a makes b the least recently used
    await store.open("c", None)
    assert await store.get("b") is None
    for i in range(5):
        await store.record("a", _turn(i), None)
    now[0] = 5.0
    opened = await store.open("a", None)
    assert opened.turn_count == 5 and opened.spent == 10 and opened.budget == 100
    assert [t.completion_tokens for t in opened.turns] == [3, 4]  # the budgeter's history
    stored = await store.get("a")
    assert stored is not None and [t.completion_tokens for t in stored.turns] == [2, 3, 4]
    now[0] = 100.0
    assert await store.get("a") is None  # expired
    assert (await store.open("a", 7)).budget == 7
