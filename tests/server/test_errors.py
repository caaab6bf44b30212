"""Bad input: OpenAI-style error bodies with the right status, never a 500."""

from __future__ import annotations

import pytest

from tests.helpers import CHAT, config_for, gateway, sample, standins
from thrifty.server.standin import StandinState


def _assert_error(response: object, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT}, "model"),
        ({"model": "m1"}, "messages"),
        ({"model": "m1", "messages": []}, "messages"),
        ({"model": "m1", "messages": "hi"}, "messages"),
        ({"model": "m1", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m1", "messages": [{"role": "user"}, {"role": "robot", "content": "x"}]}, "messages[1].role"),
        ({"model": "m1", **CHAT, "stream": "yes"}, "stream"),
        ({"model": "m1", **CHAT, "max_tokens": 0}, "max_tokens"),
        ({"model": "m1", **CHAT, "max_tokens": "10"}, "max_tokens"),
        ({"model": "m1", **CHAT, "max_tokens": 2**62}, "max_tokens"),
        ({"model": "m1", **CHAT, "max_completion_tokens": 2**40}, "max_completion_tokens"),
        ({"model": "m1", **CHAT, "thinking_token_budget": -1}, "thinking_token_budget"),
        ({"model": "m1", **CHAT, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"model": 42, **CHAT}, "model"),
    ],
)
async def test_invalid_chat_fields_are_named(body: dict, param: str) -> None:
    state = StandinState(model="m1", record=True)
    with standins(state) as (b,):
        async with gateway(config_for([{"name": "b", "model": "m1", "url": b.url}])) as (http, app):
            error = _assert_error(await http.post("/v1/chat/completions", json=body), 400, param=param)
            assert error["type"] == "invalid_request_error"
            assert "pydantic" not in error["message"] and "input_value" not in error["message"]
            assert sample(app, "thrifty_requests_total", model="none", backend="none", status="400") == 1
    assert state.received == []  # nothing reached the backend


async def test_malformed_bodies() -> None:
    with standins(StandinState(model="m1")) as (b,):
        async with gateway(config_for([{"name": "b", "model": "m1", "url": b.url}])) as (http, _):
            for content in (b"", b"{", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"model": "m1", "messages": [}'):
                response = await http.post("/v1/chat/completions", content=content)
                _assert_error(response, 400, code="invalid_json")
            _assert_error(await http.post("/v1/completions", json={"model": "m1"}), 400, param="prompt")
            _assert_error(await http.post("/v1/completions", json={"model": "m1", "prompt": {"a": 1}}), 400)


async def test_unknown_model_route_and_method() -> None:
    with standins(StandinState(model="m1")) as (b,):
        async with gateway(config_for([{"name": "b", "model": "m1", "url": b.url}])) as (http, _):
            _assert_error(
                await http.post("/v1/chat/completions", json={"model": "gpt-9", **CHAT}),
                404,
                param="model",
                code="model_not_found",
            )
            _assert_error(await http.get("/v1/nothing"), 404, code="not_found")
            _assert_error(await http.get("/v1/chat/completions"), 405, code="method_not_allowed")


async def test_body_over_the_limit_is_refused_with_413() -> None:
    state = StandinState(model="m1", record=True)
    with standins(state) as (b,):
        config = config_for([{"name": "b", "model": "m1", "url": b.url}], limits={"max_body_bytes": 2048})
        async with gateway(config) as (http, _):
            big = {"model": "m1", "messages": [{"role": "user", "content": "x" * 4096}]}
            _assert_error(await http.post("/v1/chat/completions", json=big), 413, code="request_too_large")

            async def chunks():  # no Content-Length: the limit holds while reading
                for _ in range(10):
                    yield b"x" * 1024

            _assert_error(await http.post("/v1/chat/completions", content=chunks()), 413)
    assert state.received == []


async def test_json_nested_past_the_limit_is_a_400_and_up_to_it_is_forwarded() -> None:
    state = StandinState(model="m1", record=True)
    with standins(state) as (b,):
        async with gateway(config_for([{"name": "b", "model": "m1", "url": b.url}])) as (http, app):
            # The nesting sits in a field the gateway does not act on and forwards as it is.
            deep = b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}], "x": %s}'
            too_deep = deep % (b"[" * 300 + b"]" * 300)
            error = _assert_error(await http.post("/v1/chat/completions", content=too_deep), 400, code="json_too_deep")
            assert "128 levels" in error["message"]
            assert state.received == []
            at_limit = deep % (b"[" * 127 + b"]" * 127)  # with the body object: 128 levels
            assert (await http.post("/v1/chat/completions", content=at_limit)).status_code == 200
            assert sample(app, "thrifty_requests_total", model="none", backend="none", status="500") == 0


async def test_integers_are_forwarded_exactly_or_refused() -> None:
    state = StandinState(model="m1", record=True)
    with standins(state) as (b,):
        async with gateway(config_for([{"name": "b", "model": "m1", "url": b.url}])) as (http, _):
            body = b'{"model": "m1", "messages": [{"role": "user", "content": "%s"}], "seed": %s}'
            widest = b"18446744073709551615"  # 2**64 - 1: still exact
            response = await http.post("/v1/chat/completions", content=body % (b"12345678901234567890123", widest))
            assert response.status_code == 200
            assert b'"seed":' + widest in state.received_raw[-1]
            for wide in (b"18446744073709551616", b"-9223372036854775809", b"1" * 40):
                response = await http.post("/v1/chat/completions", content=body % (b"hi", wide))
                error = _assert_error(response, 400, param="seed", code="integer_too_large")
                assert "64 bits" in error["message"]
            assert len(state.received) == 1


async def test_an_unknown_model_lists_the_models_there_are() -> None:
    with standins(StandinState(model="m1")) as (b,):
        async with gateway(config_for([{"name": "b", "model": "m1", "url": b.url}])) as (http, _):
            response = await http.post("/v1/chat/completions", json={"model": "gpt-4o", **CHAT})
            error = _assert_error(response, 404, param="model", code="model_not_found")
            assert "'gpt-4o' does not exist" in error["message"] and "auto, m1" in error["message"]
            assert "/v1/models" in error["message"]
