"""Backend faults: retries before the first byte, breakers, health, timeouts, streams that die."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import httpx
import openai
import orjson
import pytest

from tests.helpers import CHAT, config_for, free_port, gateway, running_gateway, sample, standins, state_of
from thrifty.server.backends.circuit import BreakerState, CircuitBreaker
from thrifty.server.backends.pool import BackendPool
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.standin import StandinState

BODY = {"model": "m", **CHAT}


def _two(a_url: str, b_url: str, **extra: object) -> object:
    return config_for([{"name": "a", "model": "m", "url": a_url}, {"name": "b", "model": "m", "url": b_url}], **extra)


async def test_503_before_first_byte_is_retried_on_another_backend() -> None:
    failing = StandinState(model="m", fail_status=503, record=True)
    healthy = StandinState(model="m", record=True)
    with standins(failing, healthy) as (a, b):
        async with gateway(_two(a.url, b.url)) as (http, app):
            for _ in range(4):
                response = await http.post("/v1/chat/completions", json=BODY)
                assert response.status_code == 200
                assert response.headers["x-thrifty-backend"] == "b"
            assert len(healthy.received) == 4
            assert sample(app, "thrifty_backend_retries_total", backend="a") >= 1


async def test_refused_connection_is_retried_and_streams_too() -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"
    with standins(StandinState(model="m")) as (b,):
        async with gateway(_two(dead_url, b.url)) as (http, app):
            # The start-up health check already took 'a' out; put it back to exercise the retry path
            # (a backend that dies between two health checks looks exactly like this).
            state_of(app).pool.backends[0].healthy = True
            response = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
            assert response.status_code == 200 and response.headers["x-thrifty-backend"] == "b"
            assert response.content.endswith(b"data: [DONE]\n\n")


async def test_all_backends_failing_gives_503_then_the_breaker_opens() -> None:
    state = StandinState(model="m", fail_status=503)
    with standins(state) as (a,):
        config = config_for(
            [{"name": "a", "model": "m", "url": a.url}],
            circuit_breaker={"failure_threshold": 2, "reset_after_s": 0.3},
        )
        async with gateway(config) as (http, app):
            response = await http.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 503
            assert response.json()["error"]["type"] == "backend_error"
            backend = state_of(app).pool.backends[0]
            assert backend.breaker.state is BreakerState.OPEN
            response = await http.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 503
            assert "no healthy backend" in response.json()["error"]["message"]
            assert (await http.get("/ready")).status_code == 503
            # After the reset time one probe goes through; the backend has recovered, so it closes.
            state.fail_status = None
            await asyncio.sleep(0.35)
            assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 200
            assert backend.breaker.state is BreakerState.CLOSED


async def test_backend_server_error_becomes_502_and_client_errors_pass_through() -> None:
    state = StandinState(model="m", fail_status=500)
    with standins(state) as (a,):
        async with gateway(config_for([{"name": "a", "model": "m", "url": a.url}])) as (http, _):
            response = await http.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 502 and response.json()["error"]["code"] == "bad_gateway"
            state.fail_status = 400
            response = await http.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 400 and response.json()["error"]["message"] == "stand-in failure"
            assert response.headers["x-thrifty-backend"] == "a"


async def test_timeouts() -> None:
    state = StandinState(model="m", delay_s=1.0)
    with standins(state) as (a,):
        config = config_for([{"name": "a", "model": "m", "url": a.url}], timeouts={"total": 0.3, "first_token": 0.2})
        async with gateway(config) as (http, app):
            response = await http.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 504 and response.json()["error"]["code"] == "backend_timeout"
            response = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
            assert response.status_code == 504 and "first token" in response.json()["error"]["message"]
            assert sample(app, "thrifty_requests_total", model="m", backend="a", status="504") == 2


async def test_backend_dying_mid_stream_ends_with_an_sse_error_event() -> None:
    state = StandinState(model="m", die_after_chunks=2, stream_chunks=6)
    with standins(state) as (a,):
        async with gateway(config_for([{"name": "a", "model": "m", "url": a.url}])) as (http, app):
            response = await asyncio.wait_for(
                http.post("/v1/chat/completions", json={**BODY, "stream": True}), timeout=10
            )
            assert response.status_code == 200
            events = [e for e in response.content.split(b"\n\n") if e]
            assert len(events) == 3  # two chunks, then the error
            error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
            assert error["type"] == "backend_error" and "before finishing" in error["message"]
            assert sample(app, "thrifty_requests_total", model="m", backend="a", status="502") == 1
            assert sample(app, "thrifty_requests_in_flight") == 0


async def test_health_checks_take_a_backend_out_and_back() -> None:
    with standins(StandinState(model="m")) as (a,):
        port = free_port()
        config = config_for(
            [
                {"name": "a", "model": "m", "url": a.url},
                {"name": "gone", "model": "m2", "url": f"http://127.0.0.1:{port}"},
            ],
            health={"interval_s": 0.05, "timeout_s": 0.5},
        )
        async with gateway(config) as (http, app):
            pool = state_of(app).pool
            assert [b.healthy for b in pool.backends] == [True, False]
            assert sample(app, "thrifty_backend_up", backend="gone") == 0
            assert sample(app, "thrifty_backend_up", backend="a") == 1
            response = await http.post("/v1/chat/completions", json={"model": "m2", **CHAT})
            assert response.status_code == 503
            assert (await http.get("/ready")).json()["backends"] == ["a"]
            a.stop()
            for _ in range(600):  # two checks in a row must miss (a bound, not a timing: 30 s)
                if not pool.backends[0].healthy:
                    break
                await asyncio.sleep(0.05)
            assert (await http.get("/ready")).status_code == 503
            assert (await http.get("/health")).status_code == 200


class _ScriptedHealth:
    """Stands in for the gateway's HTTP session: each /health check answers from a script (True: 200,
    False: a time-out)."""

    def __init__(self, script: list[bool]) -> None:
        self.script = script

    def get(self, url: str, timeout: object) -> _Answer:
        return _Answer(self.script.pop(0))


class _Answer:
    def __init__(self, up: bool) -> None:
        self.up = up

    async def __aenter__(self) -> SimpleNamespace:
        if not self.up:
            raise TimeoutError
        return SimpleNamespace(status=200)

    async def __aexit__(self, *exc: object) -> None:
        return None


async def test_a_backend_that_was_up_goes_out_only_after_missed_checks_in_a_row() -> None:
    config = config_for([{"name": "a", "model": "m", "url": "http://a"}], health={"unhealthy_after": 3})
    pool = BackendPool(config, GatewayMetrics())
    (backend,) = pool.backends
    script = [True, False, False, True, False, False, False, True]
    seen = []
    for _ in range(len(script)):
        await pool.check_health(_ScriptedHealth(script))  # type: ignore[arg-type]
        seen.append(backend.healthy)
    # Two misses are a busy moment; the third in a row takes it out; one answer brings it back.
    assert seen == [True, True, True, True, True, True, False, True]
    never_up = BackendPool(config_for([{"name": "b", "model": "m", "url": "http://b"}]), GatewayMetrics())
    await never_up.check_health(_ScriptedHealth([False]))  # type: ignore[arg-type]
    assert not never_up.backends[0].healthy  # down at start: out at the first check


def test_breaker_half_open_allows_a_single_probe() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=lambda: now[0])
    for _ in range(2):
        breaker.on_failure()
    assert breaker.allows()
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    now[0] = 10.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.on_attempt()
    assert not breaker.allows()  # one probe at a time
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN
    now[0] = 20.0
    breaker.on_attempt()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()


async def test_a_large_first_event_is_relayed_and_one_over_the_limit_is_a_502() -> None:
    # vLLM sends events this large (a streamed completion with echo on a long prompt, say).
    state = StandinState(model="m", first_event_padding=1 << 20)
    with standins(state) as (a,):
        async with gateway(config_for([{"name": "a", "model": "m", "url": a.url}])) as (http, _):
            response = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
            assert response.status_code == 200
            events = [e for e in response.content.split(b"\n\n") if e]
            first = orjson.loads(events[0].removeprefix(b"data: "))
            assert len(first["choices"][0]["delta"]["padding"]) == 1 << 20
            assert events[-1] == b"data: [DONE]"
        limited = config_for([{"name": "a", "model": "m", "url": a.url}], limits={"max_sse_event_bytes": 65536})
        async with gateway(limited) as (http, app):
            response = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
            assert response.status_code == 502 and response.json()["error"]["code"] == "event_too_large"
            assert "max_sse_event_bytes" in response.json()["error"]["message"]
            assert sample(app, "thrifty_requests_total", model="m", backend="a", status="502") == 1


async def test_an_event_over_the_limit_after_the_stream_began_ends_it_with_an_sse_error() -> None:
    gate = threading.Event()  # holds the large event back until the client has the first two
    state = StandinState(model="m", first_event_padding=1 << 20, padded_event=2, gate=gate, gate_event=2)
    with standins(state) as (a,):
        config = config_for([{"name": "a", "model": "m", "url": a.url}], limits={"max_sse_event_bytes": 65536})
        with running_gateway(config) as (url, app):
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                events = []
                async with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line:
                            events.append(line)
                        if len(events) == 2:
                            gate.set()
            assert len(events) == 3, events  # two events, then the error
            assert orjson.loads(events[-1].removeprefix("data: "))["error"]["code"] == "event_too_large"
            assert sample(app, "thrifty_requests_total", model="m", backend="a", status="502") == 1


async def test_a_backend_that_freezes_mid_stream_is_cut_after_the_idle_timeout() -> None:
    state = StandinState(model="m", stream_chunks=4, hang_after_chunks=2)
    with standins(state) as (a,):
        config = config_for([{"name": "a", "model": "m", "url": a.url}], timeouts={"idle": 0.5, "total": 600})
        async with gateway(config) as (http, app):
            response = await asyncio.wait_for(http.post("/v1/chat/completions", json={**BODY, "stream": True}), 60)
            events = [e for e in response.content.split(b"\n\n") if e]
            # What came before the freeze (all of it, unless a busy machine kept the second chunk back for
            # longer than the idle timeout), then the error event; never the rest of the stream.
            assert 2 <= len(events) <= 3 and b"[DONE]" not in response.content
            assert all(b'"chat.completion.chunk"' in e for e in events[:-1])
            error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
            assert error["code"] == "backend_idle" and "timeouts.idle" in error["message"]
            assert sample(app, "thrifty_requests_total", model="m", backend="a", status="504") == 1
            assert state_of(app).pool.backends[0].breaker._failures == 1  # counts against the backend


@pytest.mark.parametrize("line_ending", [b"\r\n", b"\r"], ids=["crlf", "cr"])
async def test_streams_framed_with_crlf_or_cr_reach_the_sdk(line_ending: bytes) -> None:
    # sse-starlette (behind several OpenAI-compatible servers) ends lines with CRLF.
    state = StandinState(model="m", stream_chunks=3, line_ending=line_ending)
    with standins(state) as (a,):
        async with gateway(config_for([{"name": "a", "model": "m", "url": a.url}])) as (_, app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport) as http:
                client = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="unused", http_client=http)
                stream = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            assert text == "tok1 tok2 "
            assert sample(app, "thrifty_requests_total", model="m", backend="a", status="200") == 1
            assert sample(app, "thrifty_tokens_total", model="m", kind="completion") == 3  # its usage was read
