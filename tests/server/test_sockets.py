"""The gateway on a real socket: client disconnects, and no client input ever yields a 500."""

from __future__ import annotations

import http.client
import time

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import CHAT, config_for, running_gateway, sample, standins
from thrifty.server.standin import StandinState


def test_a_client_leaving_mid_stream_releases_the_backend_stream() -> None:
    state = StandinState(model="m", stream_chunks=200, chunk_delay_s=0.02)
    with (
        standins(state) as (b,),
        running_gateway(config_for([{"name": "b", "model": "m", "url": b.url}])) as (url, app),
    ):
        with httpx.Client(base_url=url, timeout=10) as http:
            body = {"model": "m", **CHAT, "stream": True}
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
        deadline = time.monotonic() + 10
        while (
            state.disconnects == 0 or sample(app, "thrifty_requests_in_flight") != 0
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.disconnects == 1, "the backend kept streaming to a client that had gone"
        assert sample(app, "thrifty_requests_in_flight") == 0
        # Counted as abandoned (nginx's 499), not as a stream answered in full.
        assert sample(app, "thrifty_requests_total", model="m", backend="b", status="499") == 1
        assert sample(app, "thrifty_requests_total", model="m", backend="b", status="200") == 0


def test_the_connection_stays_usable_after_a_refused_request_and_after_a_gateway_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        standins(StandinState(model="m")) as (b,),
        running_gateway(config_for([{"name": "b", "model": "m", "url": b.url}])) as (url, app),
    ):
        connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        headers = {"Content-Type": "application/json"}
        ok = orjson.dumps({"model": "m", **CHAT})

        def post(body: bytes) -> tuple[int, dict[str, object], str | None]:
            connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, orjson.loads(response.read()), response.getheader("connection")

        try:
            assert post(ok)[0] == 200
            sock = connection.sock
            deep = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": %s}' % (
                b"[" * 300 + b"]" * 300
            )
            status, body, _ = post(deep)
            assert status == 400 and body["error"]["code"] == "json_too_deep"  # type: ignore[index]

            async def broken(*args: object, **kwargs: object) -> None:
                raise RuntimeError("a bug")

            monkeypatch.setattr(app.state.gateway.chat.pipeline, "run", broken)
            status, body, _ = post(ok)
            assert status == 500 and body["error"]["code"] == "internal_error"  # type: ignore[index]
            assert "a bug" not in str(body)
            monkeypatch.undo()
            assert post(ok)[0] == 200
            assert connection.sock is sock, "the gateway closed the kept-alive connection"
        finally:
            connection.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["m", "auto", "", "x"]) | _json,
        "messages": st.lists(
            st.fixed_dictionaries(
                {}, optional={"role": st.sampled_from(["user", "system", "x"]) | _json, "content": _json}
            ),
            max_size=3,
        )
        | _json,
        "prompt": _json,
        "stream": st.booleans() | _json,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | _json}) | _json,
        "max_tokens": st.integers(-5, 2**63 - 1) | _json,
        "max_completion_tokens": st.integers(-5, 10) | _json,
        "thinking_token_budget": st.integers(-5, 2**63 - 1) | _json,
        "n": st.integers(-1, 200) | _json,
        "extra": _json,
    },
)


def test_no_client_input_gives_a_500() -> None:
    with standins(StandinState(model="m")) as (b,):
        config = config_for(
            [{"name": "b", "model": "m", "url": b.url, "reasoning": True}], budgeter={"static": {"budget": 16}}
        )
        with running_gateway(config) as (url, _), httpx.Client(base_url=url, timeout=10) as http:

            @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
            @given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), body=_fields | _json)
            def check(path: str, body: object) -> None:
                response = http.post(path, json=body)
                assert response.status_code in (200, 400, 404), (body, response.text)
                if response.status_code != 200:
                    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

            check()

            @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
            @given(raw=st.binary(max_size=200), content_type=st.sampled_from(["application/json", "text/plain", ""]))
            def check_bytes(raw: bytes, content_type: str) -> None:
                response = http.post("/v1/chat/completions", content=raw, headers={"content-type": content_type})
                # Random bytes are almost never a valid request; whatever they are, the answer is a 4xx.
                assert response.status_code in (400, 404), response.text
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

            check_bytes()
