"""Chat and text completions through the gateway against stand-in backends."""

from __future__ import annotations

import orjson

from tests.helpers import CHAT, config_for, gateway, sample, standins
from thrifty.server.standin import StandinState


def _backend(name: str, model: str, url: str, **extra: object) -> dict[str, object]:
    return {"name": name, "model": model, "url": url, **extra}


async def test_chat_is_forwarded_with_headers_and_usage_metrics() -> None:
    state = StandinState(model="m1", record=True)
    with standins(state) as (b,):
        async with gateway(config_for([_backend("b1", "m1", b.url)])) as (http, app):
            response = await http.post("/v1/chat/completions", json={"model": "m1", **CHAT})
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"] == "Hello from the stand-in."
            assert response.headers["x-thrifty-model"] == "m1"
            assert response.headers["x-thrifty-backend"] == "b1"
            assert float(response.headers["x-thrifty-overhead-ms"]) > 0
            assert "x-thrifty-thinking-budget" not in response.headers
            assert sample(app, "thrifty_requests_total", model="m1", backend="b1", status="200") == 1
            assert sample(app, "thrifty_tokens_total", model="m1", kind="prompt") == 12
            assert sample(app, "thrifty_tokens_total", model="m1", kind="completion") == 6
            assert sample(app, "thrifty_requests_in_flight") == 0


async def test_unused_fields_are_forwarded_untouched() -> None:
    state = StandinState(model="m1", record=True)
    body = {
        "model": "m1",
        **CHAT,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "seed": 7,
        "temperature": 0.3,
        "vendor_extension": {"nested": [1, 2, 3]},
    }
    with standins(state) as (b,):
        async with gateway(config_for([_backend("b1", "m1", b.url)])) as (http, _):
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
    assert state.received == [body]


async def test_text_completions() -> None:
    state = StandinState(model="m1", record=True)
    with standins(state) as (b,):
        async with gateway(config_for([_backend("b1", "m1", b.url)])) as (http, _):
            response = await http.post("/v1/completions", json={"model": "auto", "prompt": "Once", "echo": False})
            assert response.status_code == 200
            assert response.json()["choices"][0]["text"] == " stand-in text"
            assert state.received[0]["prompt"] == "Once" and state.received[0]["echo"] is False
            response = await http.post("/v1/completions", json={"model": "m1", "prompt": [[1, 2], [3]]})
            assert response.status_code == 200


async def test_models_lists_backends_and_auto() -> None:
    with standins(StandinState(model="m1"), StandinState(model="m2")) as (a, b):
        config = config_for([_backend("a", "m1", a.url), _backend("b", "m2", b.url), _backend("c", "m2", b.url)])
        async with gateway(config) as (http, _):
            data = (await http.get("/v1/models")).json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["m1", "m2", "auto"]


async def test_budget_applies_to_reasoning_backends_only() -> None:
    thinker = StandinState(model="thinker", record=True)
    plain = StandinState(model="plain", record=True)
    with standins(thinker, plain) as (t, p):
        config = config_for(
            [_backend("t", "thinker", t.url, reasoning=True), _backend("p", "plain", p.url)],
            budgeter={"static": {"budget": 300}},
            limits={"answer_tokens": 100},
        )
        async with gateway(config) as (http, app):
            response = await http.post("/v1/chat/completions", json={"model": "thinker", **CHAT})
            assert response.headers["x-thrifty-thinking-budget"] == "300"
            sent = thinker.received[-1]
            assert sent["thinking_token_budget"] == 300 and sent["max_tokens"] == 400

            # The client's max_completion_tokens is the answer allowance, added to the budget.
            await http.post("/v1/chat/completions", json={"model": "thinker", **CHAT, "max_completion_tokens": 50})
            sent = thinker.received[-1]
            assert sent["max_completion_tokens"] == 350 and "max_tokens" not in sent

            # A budget the client chose itself wins over the policy.
            await http.post("/v1/chat/completions", json={"model": "thinker", **CHAT, "thinking_token_budget": 5})
            assert thinker.received[-1]["thinking_token_budget"] == 5

            response = await http.post("/v1/chat/completions", json={"model": "plain", **CHAT})
            assert "x-thrifty-thinking-budget" not in response.headers
            assert "thinking_token_budget" not in plain.received[-1] and "max_tokens" not in plain.received[-1]
            assert sample(app, "thrifty_thinking_budget_tokens_count", policy="static", model="thinker") == 2
            assert sample(app, "thrifty_thinking_budget_tokens_count", policy="client", model="thinker") == 1


async def test_auto_routes_with_the_configured_policy() -> None:
    with standins(StandinState(model="cheap"), StandinState(model="dear")) as (c, d):
        backends = [
            _backend("c", "cheap", c.url, price={"input": 0.1, "output": 0.2}),
            _backend("d", "dear", d.url, price={"input": 3, "output": 15}),
        ]
        async with gateway(config_for(backends)) as (http, app):
            response = await http.post("/v1/chat/completions", json={"model": "auto", **CHAT})
            assert response.headers["x-thrifty-model"] == "cheap"
            assert response.headers["x-thrifty-routing-policy"] == "cheapest"
            assert sample(app, "thrifty_routing_decisions_total", policy="cheapest", model="cheap") == 1
        async with gateway(config_for(backends, router={"round_robin": {}})) as (http, _):
            models = [
                (await http.post("/v1/chat/completions", json={"model": "auto", **CHAT})).headers["x-thrifty-model"]
                for _ in range(4)
            ]
            assert sorted(models) == ["cheap", "cheap", "dear", "dear"]
        async with gateway(config_for(backends, router={"pinned": {"model": "dear"}})) as (http, _):
            response = await http.post("/v1/chat/completions", json={"model": "auto", **CHAT})
            assert response.headers["x-thrifty-model"] == "dear"


def _events(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e]


async def test_streaming_passes_reasoning_deltas_and_honours_include_usage() -> None:
    state = StandinState(model="m1", record=True)
    with standins(state) as (b,):
        async with gateway(config_for([_backend("b1", "m1", b.url)])) as (http, app):
            response = await http.post("/v1/chat/completions", json={"model": "m1", **CHAT, "stream": True})
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _events(response.content)
            assert events[-1] == b"data: [DONE]"
            first = orjson.loads(events[0].removeprefix(b"data: "))
            assert first["choices"][0]["delta"]["reasoning_content"] == "think"
            # The gateway asked for usage to count tokens, but the client did not: it must not see it.
            assert not any(b'"usage"' in e for e in events)
            assert state.received[-1]["stream_options"] == {"include_usage": True}
            assert sample(app, "thrifty_tokens_total", model="m1", kind="completion") == 4

            body = {"model": "m1", **CHAT, "stream": True, "stream_options": {"include_usage": True}}
            events = _events((await http.post("/v1/chat/completions", json=body)).content)
            usage = orjson.loads(events[-2].removeprefix(b"data: "))
            assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
            assert sample(app, "thrifty_tokens_total", model="m1", kind="reasoning") == 2
            assert sample(app, "thrifty_time_to_first_token_seconds_count", model="m1", backend="b1") == 2


async def test_streaming_text_completions() -> None:
    with standins(StandinState(model="m1")) as (b,):
        async with gateway(config_for([_backend("b1", "m1", b.url)])) as (http, _):
            response = await http.post("/v1/completions", json={"model": "m1", "prompt": "x", "stream": True})
            events = _events(response.content)
            assert events[-1] == b"data: [DONE]" and len(events) == 5
