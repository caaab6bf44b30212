"""Sessions on the in-memory store: ledger, history for the budgeter, the sessions API."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import CHAT, config_for, gateway, standins, state_of
from thrifty.server.access import hash_key
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


async def test_a_request_that_names_no_session_is_served_on_its_own() -> None:
    state = StandinState(model="m", record=True)
    with standins(state) as (b,):
        config = _config(b.url, budgeter={"static": {"budget": 8}}, sessions={"default_budget": 5})
        async with gateway(config) as (http, app):
            for _ in range(3):
                response = await http.post("/v1/chat/completions", json={"model": "m", **CHAT})
                assert response.status_code == 200 and "x-thrifty-session" not in response.headers
                # Still one problem with its budget B: the turn's thinking is capped by it.
                assert response.headers["x-thrifty-thinking-budget"] == "5"
            assert state_of(app).sessions.store.count() == 0  # type: ignore[attr-defined]
            # Asking for a session: the gateway picks the id, and the client continues with it.
            body = {"model": "m", **CHAT, "thrifty": {"new_session": True}}
            response = await http.post("/v1/chat/completions", json=body)
            session_id = response.headers["x-thrifty-session"]
            assert len(session_id) == 32
            again = await http.post(
                "/v1/chat/completions", json={"model": "m", **CHAT}, headers={"X-Session-ID": session_id}
            )
            assert again.headers["x-thrifty-session"] == session_id
            assert (await http.get(f"/v1/sessions/{session_id}")).json()["turn_count"] == 2


async def test_one_key_cannot_push_out_another_keys_sessions() -> None:
    keys = [{"name": "a", "sha256": hash_key("key-a")}, {"name": "b", "sha256": hash_key("key-b"), "max_sessions": 5}]
    with standins(StandinState(model="m")) as (b,):
        config = _config(b.url, auth={"keys": keys}, sessions={"max_per_key": 3})
        async with gateway(config) as (http, app):
            as_a, as_b = ({"Authorization": f"Bearer key-{k}"} for k in "ab")
            body = {"model": "m", **CHAT}
            assert (
                await http.post("/v1/chat/completions", json=body, headers={**as_b, "X-Session-ID": "live"})
            ).is_success
            for i in range(5):  # a's quota is 3: its own oldest two go
                await http.post("/v1/chat/completions", json=body, headers={**as_a, "X-Session-ID": f"a-{i}"})
            for _ in range(101):  # requests that name no session store nothing, for anyone
                await http.post("/v1/chat/completions", json=body, headers=as_a)
            store = state_of(app).sessions.store
            assert store.count("a") == 3 and store.count("b") == 1  # type: ignore[attr-defined]
            assert (await http.get("/v1/sessions/a-0", headers=as_a)).status_code == 404
            assert (await http.get("/v1/sessions/a-4", headers=as_a)).json()["turn_count"] == 1
            assert (await http.get("/v1/sessions/live", headers=as_b)).json()["turn_count"] == 1
            assert (await http.get("/v1/sessions/live", headers=as_a)).status_code == 404  # private to b


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


async def test_budget_decisions_are_recorded_with_their_policy_and_the_plan_is_kept() -> None:
    state = StandinState(model="m", record=True)
    with standins(state) as (b,):
        async with gateway(_config(b.url, budgeter={"static": {"budget": 100}})) as (http, _):
            plan = ["x1 = 2+3", "x2 = x1*4"]
            body = {"model": "m", **CHAT, "thrifty": {"budget": 1000, "plan": plan}}
            first = await http.post("/v1/chat/completions", json=body, headers={"X-Session-ID": "p"})
            assert first.headers["x-thrifty-budget-policy"] == "static"
            assert "thrifty" not in state.received[-1]  # the plan is the gateway's, never the backend's
            effort = {"model": "m", **CHAT, "reasoning_effort": "high"}
            second = await http.post("/v1/chat/completions", json=effort, headers={"X-Session-ID": "p"})
            assert second.headers["x-thrifty-budget-policy"] == "reasoning_effort"
            # high is the top of the default levels (2048), within what is left of B: 1000 - 6
            assert second.headers["x-thrifty-thinking-budget"] == "994"
            assert "reasoning_effort" not in state.received[-1]  # it became thinking_token_budget
            assert state.received[-1]["thinking_token_budget"] == 994
            own = {"model": "m", **CHAT, "thinking_token_budget": 7, "reasoning_effort": "low"}
            third = await http.post("/v1/chat/completions", json=own, headers={"X-Session-ID": "p"})
            assert third.headers["x-thrifty-budget-policy"] == "client"  # the client's own budget wins
            assert third.headers["x-thrifty-thinking-budget"] == "7"
            session = (await http.get("/v1/sessions/p")).json()
            assert session["plan"] == plan
            decisions = [turn["budgeting"] for turn in session["turns"]]
            assert decisions == [
                {"policy": "static", "budget": 100},
                {"policy": "reasoning_effort", "budget": 994, "effort": "high"},
                {"policy": "client", "budget": 7},
            ]
            for bad, param in (({"plan": []}, "thrifty.plan"), ({"plan": [""]}, "thrifty.plan[0]")):
                refused = await http.post("/v1/chat/completions", json={"model": "m", **CHAT, "thrifty": bad})
                assert refused.status_code == 400 and refused.json()["error"]["param"] == param
            wrong = await http.post("/v1/chat/completions", json={"model": "m", **CHAT, "reasoning_effort": "max"})
            assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "reasoning_effort"


async def test_memory_store_is_bounded_per_owner_and_expires() -> None:
    now = [0.0]
    store = MemorySessionStore(ttl_s=10, history=2, max_turns=3, clock=lambda: now[0])
    assert await store.open("o", "a") is None  # opening never creates
    await store.record("o", "a", _turn(0), 100, quota=2)
    await store.record("o", "b", _turn(0), None, quota=2)
    await store.record("other", "x", _turn(0), None, quota=1)
    assert await store.open("o", "a") is not None  # touching a makes b the least recently used
    await store.record("o", "c", _turn(0), None, quota=2)
    assert await store.get("o", "b") is None and store.count("o") == 2
    assert await store.get("other", "x") is not None  # another owner's session is never pushed out
    for i in range(1, 5):
        await store.record("o", "a", _turn(i), None, quota=2)
    now[0] = 5.0
    opened = await store.open("o", "a")
    assert opened is not None and opened.turn_count == 5 and opened.spent == 10 and opened.budget == 100
    assert [t.completion_tokens for t in opened.turns] == [3, 4]  # the budgeter's history
    stored = await store.get("o", "a")
    assert stored is not None and [t.completion_tokens for t in stored.turns] == [2, 3, 4]
    now[0] = 100.0
    assert await store.get("o", "a") is None  # expired
    await store.record("o", "a", _turn(1), 7, quota=2)
    fresh = await store.get("o", "a")
    assert fresh is not None and fresh.budget == 7 and fresh.turn_count == 1
    assert await store.delete("o", "a") and not await store.delete("o", "a")
