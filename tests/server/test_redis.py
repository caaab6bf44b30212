"""Sessions and rate limits on a real redis-server: atomic ledgers, sharing, restarts, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    CHAT,
    RedisServer,
    config_for,
    free_port,
    fresh_minute,
    gateway,
    serve_process,
    standins,
    state_of,
    stop_process,
    wait_ready,
)
from thrifty.server.access import hash_key
from thrifty.server.sessions.model import Turn
from thrifty.server.sessions.redis_store import RedisSessionStore
from thrifty.server.sessions.store import StoreUnavailable
from thrifty.server.standin import StandinState

KEY = "thr-redis-test-key"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def _turn(tokens: int) -> Turn:
    return Turn("m", 8, 3, tokens, 1, 0.01, "stop", time.time())


async def test_concurrent_records_are_atomic(redis: RedisServer) -> None:
    store = RedisSessionStore(redis.url, ttl_s=60, history=4, max_turns=1000)
    try:
        await store.open("s", 500)
        await asyncio.gather(*(store.record("s", _turn(i), 500) for i in range(50)))
        session = await store.get("s")
        assert session is not None
        assert session.turn_count == 50 and session.spent == sum(range(50)) and session.budget == 500
        assert sorted(t.completion_tokens for t in session.turns) == list(range(50))
        assert len((await store.open("s", None)).turns) == 4  # the budgeter's recent history
        assert await store.delete("s") and await store.get("s") is None
    finally:
        await store.close()


async def test_fifty_concurrent_turns_through_the_gateway(redis: RedisServer) -> None:
    with standins(StandinState(model="m", delay_s=0.01)) as (b,):
        config = config_for([{"name": "b", "model": "m", "url": b.url}], redis_url=redis.url)
        async with gateway(config) as (http, _):
            responses = await asyncio.gather(
                *(
                    http.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers={"X-Session-ID": "hot"})
                    for _ in range(50)
                )
            )
            assert {r.status_code for r in responses} == {200}
            session = (await http.get("/v1/sessions/hot")).json()
    assert session["turn_count"] == 50 and session["spent"] == 300 and len(session["turns"]) == 50


async def test_redis_outage_degrades_then_recovers(redis: RedisServer) -> None:
    with standins(StandinState(model="m")) as (b,):
        config = config_for([{"name": "b", "model": "m", "url": b.url}], redis_url=redis.url)
        async with gateway(config) as (http, app):
            headers = {"X-Session-ID": "through-outage"}
            body = {"model": "m", **CHAT}
            assert (await http.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200

            redis.stop()
            for _ in range(3):
                started = time.monotonic()
                response = await http.post("/v1/chat/completions", json=body, headers=headers)
                assert response.status_code == 200
                assert response.headers["x-thrifty-session-state"] == "unavailable"
                assert response.headers["x-thrifty-session"] == "through-outage"
                assert time.monotonic() - started < 2.0
            metrics = state_of(app).metrics.registry
            assert metrics.get_sample_value("thrifty_requests_without_session_total") == 3
            assert metrics.get_sample_value("thrifty_session_store_up") == 0
            unavailable = await http.get("/v1/sessions/through-outage")
            assert unavailable.status_code == 503
            assert unavailable.json()["error"]["code"] == "session_store_unavailable"

            redis.start()  # same port, same append-only file
            deadline = time.monotonic() + 10
            while True:
                response = await http.post("/v1/chat/completions", json=body, headers=headers)
                if "x-thrifty-session-state" not in response.headers or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert "x-thrifty-session-state" not in response.headers, "the gateway did not reconnect to Redis"
            assert metrics.get_sample_value("thrifty_session_store_up") == 1
            session = (await http.get("/v1/sessions/through-outage")).json()
    # The turn before the outage survived Redis's restart; turns during it were served, not recorded.
    assert session["turn_count"] == 2 and session["spent"] == 12


async def test_a_store_that_was_never_reachable_fails_fast() -> None:
    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, history=4, max_turns=10)
    try:
        with pytest.raises(StoreUnavailable):
            await store.open("s", None)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="retrying shortly"):
            await store.record("s", _turn(1), None)
        assert time.monotonic() - started < 0.05
    finally:
        await store.close()


def test_two_gateways_share_sessions_and_limits_and_restarts_lose_nothing(redis: RedisServer, tmp_path: Path) -> None:
    with standins(StandinState(model="m")) as (b,):
        config = tmp_path / "c.yaml"
        config.write_text(
            f"redis_url: {redis.url}\n"
            f"backends: [{{name: b, model: m, url: '{b.url}'}}]\n"
            f"auth: {{keys: [{{name: team, sha256: {hash_key(KEY)}, rpm: 5}}]}}\n"
        )
        ports = [free_port(), free_port()]
        processes = [serve_process(["--config", str(config), "--port", str(p)], tmp_path / f"g{p}.log") for p in ports]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        headers = {"Authorization": f"Bearer {KEY}", "X-Session-ID": "shared"}
        body = {"model": "m", **CHAT}
        try:
            for url, process, port in zip(urls, processes, ports, strict=True):
                wait_ready(url, process, tmp_path / f"g{port}.log")
            fresh_minute()
            codes = [
                httpx.post(f"{urls[i % 2]}/v1/chat/completions", json=body, headers=headers).status_code
                for i in range(4)
            ]
            assert codes == [200, 200, 200, 200]
            for url in urls:
                session = httpx.get(f"{url}/v1/sessions/shared", headers=headers).json()
                assert session["turn_count"] == 4 and session["spent"] == 24

            # The limit of 5 a minute is one budget for both processes.
            codes = [httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code for url in urls]
            assert sorted(codes) == [200, 429]

            # Restart one gateway: the session is still there.
            stop_process(processes[0])
            processes[0] = serve_process(
                ["--config", str(config), "--port", str(ports[0])], tmp_path / "g-restarted.log"
            )
            wait_ready(urls[0], processes[0], tmp_path / "g-restarted.log")
            session = httpx.get(f"{urls[0]}/v1/sessions/shared", headers=headers).json()
            assert session["turn_count"] == 5
        finally:
            for process in processes:
                stop_process(process)


async def test_redis_rate_limits_are_shared_and_survive_an_outage(redis: RedisServer) -> None:
    from redis.asyncio import Redis

    from thrifty.server.errors import RateLimited
    from thrifty.server.ratelimit import Quota, RedisRateLimiter

    clients = [Redis.from_url(redis.url, socket_connect_timeout=0.25, socket_timeout=0.5) for _ in range(2)]
    first, second = (RedisRateLimiter(c) for c in clients)  # as two gateway processes
    quota = Quota("team", rpm=None, tpm=100)
    now = 600.0  # the start of a minute
    try:
        await first.admit(quota, now)
        await first.spend(quota, 60, now)
        await second.admit(quota, now)
        await second.spend(quota, 50, now)  # 110 tokens in this minute, counted across both
        with pytest.raises(RateLimited) as refused:
            await first.admit(quota, now + 1)
        assert refused.value.retry_after_s == 59 and "100 tokens per minute" in refused.value.message
        await second.admit(quota, now + 60)  # the next minute starts afresh

        redis.stop()
        strict = Quota("strict", rpm=1, tpm=None)
        await first.admit(strict, now + 61)  # Redis is away: counted in this process instead
        with pytest.raises(RateLimited):
            await first.admit(strict, now + 62)
    finally:
        for c in clients:
            await c.aclose()
