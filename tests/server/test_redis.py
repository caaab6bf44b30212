"""Sessions and rate limits on a real redis-server: atomic ledgers, sharing, restarts, outages."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis as SyncRedis

from tests.helpers import (
    CHAT,
    RedisServer,
    config_for,
    free_port,
    fresh_minute,
    gateway,
    sample,
    serve_process,
    standins,
    state_of,
    stop_process,
    wait_ready,
)
from thrifty.server.access import hash_key
from thrifty.server.redis_link import RedisLink
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


def _store(url: str, max_turns: int = 1000, timeout_s: float = 5.0) -> RedisSessionStore:
    return RedisSessionStore(RedisLink(url, timeout_s), ttl_s=60, history=4, max_turns=max_turns)


async def test_concurrent_records_are_atomic(redis: RedisServer) -> None:
    store = _store(redis.url)
    try:
        assert await store.open("o", "s") is None  # opening never creates
        await asyncio.gather(*(store.record("o", "s", _turn(i), 500, quota=10) for i in range(50)))
        session = await store.get("o", "s")
        assert session is not None
        assert session.turn_count == 50 and session.spent == sum(range(50)) and session.budget == 500
        assert sorted(t.completion_tokens for t in session.turns) == list(range(50))
        opened = await store.open("o", "s")
        assert opened is not None and len(opened.turns) == 4  # the budgeter's recent history
        assert await store.delete("o", "s") and await store.get("o", "s") is None
    finally:
        await store.link.close()


async def test_a_session_keeps_the_first_plan_it_is_given(redis: RedisServer) -> None:
    store = _store(redis.url)
    try:
        await store.record("o", "s", _turn(1), 500, quota=10)  # no plan yet
        await store.record("o", "s", _turn(2), 500, quota=10, plan=("x1 = 2+3", "x2 = x1*4"))
        await store.record("o", "s", _turn(3), 500, quota=10, plan=("something else",))
        opened, read = await store.open("o", "s"), await store.get("o", "s")
        assert opened is not None and read is not None
        assert opened.plan == read.plan == ("x1 = 2+3", "x2 = x1*4")
        assert read.to_json()["plan"] == ["x1 = 2+3", "x2 = x1*4"]
    finally:
        await store.link.close()


async def test_each_owner_keeps_its_quota_and_requests_without_a_session_cost_nothing(redis: RedisServer) -> None:
    store = _store(redis.url)
    direct = SyncRedis.from_url(redis.url)
    try:
        await store.record("b", "live", _turn(1), None, quota=3)
        for i in range(5):  # a's quota is 3: its own two oldest go, keys and index entries alike
            await store.record("a", f"s{i}", _turn(i), None, quota=3)
        assert [await store.get("a", f"s{i}") is None for i in range(5)] == [True, True, False, False, False]
        assert await store.get("b", "live") is not None
        assert direct.zcard("thrifty:si:{a}") == 3
        keys = direct.dbsize()
        assert keys == 2 * 4 + 2  # head and turns per session, one index per owner
    finally:
        await store.link.close()
    with standins(StandinState(model="m"), StandinState(model="bad", fail_status=500)) as (b, bad):
        backends = [{"name": "b", "model": "m", "url": b.url}, {"name": "x", "model": "bad", "url": bad.url}]
        async with gateway(config_for(backends, redis_url=redis.url)) as (http, _):
            for _ in range(200):
                assert (await http.post("/v1/chat/completions", json={"model": "m", **CHAT})).status_code == 200
            failed = await http.post(
                "/v1/chat/completions", json={"model": "bad", **CHAT}, headers={"X-Session-ID": "f"}
            )
            assert failed.status_code == 502
    # Two hundred requests that named no session, and one that failed, left nothing in Redis.
    assert direct.dbsize() == keys
    direct.close()


async def test_fifty_concurrent_turns_through_the_gateway(redis: RedisServer) -> None:
    with standins(StandinState(model="m", delay_s=0.01)) as (b,):
        # A generous Redis timeout: fifty requests at once on a busy machine are slow, not lost.
        config = config_for([{"name": "b", "model": "m", "url": b.url}], redis_url=redis.url, redis_timeout_s=30)
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
        # A Redis that is gone refuses at once; the generous timeout only keeps a busy machine's slow
        # replies from looking like an outage.
        config = config_for([{"name": "b", "model": "m", "url": b.url}], redis_url=redis.url, redis_timeout_s=10)
        async with gateway(config) as (http, app):
            headers = {"X-Session-ID": "through-outage"}
            body = {"model": "m", **CHAT}
            assert (await http.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200

            redis.stop()
            for _ in range(3):
                response = await http.post("/v1/chat/completions", json=body, headers=headers)
                assert response.status_code == 200
                assert response.headers["x-thrifty-session-state"] == "unavailable"
                assert response.headers["x-thrifty-session"] == "through-outage"
            metrics = state_of(app).metrics.registry
            assert metrics.get_sample_value("thrifty_requests_without_session_total") == 3
            assert metrics.get_sample_value("thrifty_session_store_up") == 0
            unavailable = await http.get("/v1/sessions/through-outage")
            assert unavailable.status_code == 503
            assert unavailable.json()["error"]["code"] == "session_store_unavailable"

            redis.start()  # same port, same append-only file
            await _until_redis_is_back(app)
            response = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert "x-thrifty-session-state" not in response.headers, "the gateway did not reconnect to Redis"
            assert metrics.get_sample_value("thrifty_session_store_up") == 1
            session = (await http.get("/v1/sessions/through-outage")).json()
    # The turn before the outage survived Redis's restart; turns during it were served, not recorded.
    assert session["turn_count"] == 2 and session["spent"] == 12


async def _until_redis_is_back(app: object, timeout: float = 60) -> None:
    registry = state_of(app).metrics.registry  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while registry.get_sample_value("thrifty_session_store_up") != 1:
        assert time.monotonic() < deadline, "the gateway's probe never saw Redis again"
        await asyncio.sleep(0.05)


async def test_a_hung_redis_costs_one_wait_then_nothing_until_it_answers(redis: RedisServer) -> None:
    keys = [{"name": "team", "sha256": hash_key(KEY), "rpm": 1000}]  # rate limits use Redis too
    with standins(StandinState(model="m")) as (b,):
        config = config_for(
            [{"name": "b", "model": "m", "url": b.url}], redis_url=redis.url, redis_timeout_s=2, auth={"keys": keys}
        )
        async with gateway(config) as (http, app):
            headers = {"Authorization": f"Bearer {KEY}", "X-Session-ID": "frozen"}
            body = {"model": "m", **CHAT}
            assert (await http.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
            direct = SyncRedis.from_url(redis.url)
            direct.config_resetstat()
            redis.freeze()
            try:
                for _ in range(5):
                    response = await http.post("/v1/chat/completions", json=body, headers=headers)
                    assert response.status_code == 200
                    assert response.headers["x-thrifty-session-state"] == "unavailable"
            finally:
                redis.thaw()
            # Five requests would have sent Redis five rate-limit checks, five session opens, five turns
            # and five token charges; only the first waited (and timed out), the rest did not even try.
            stats = direct.info("commandstats")
            sent = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_incrby"))
            assert sent <= 1, stats
            await _until_redis_is_back(app)
            response = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert "x-thrifty-session-state" not in response.headers
            direct.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_turn_lost_after_the_session_was_opened_is_flagged(redis: RedisServer, stream: bool) -> None:
    gate = threading.Event()
    state = StandinState(model="m", record=True, gate=gate)
    with standins(state) as (b,):
        config = config_for([{"name": "b", "model": "m", "url": b.url}], redis_url=redis.url, redis_timeout_s=10)
        async with gateway(config) as (http, app):
            body = {"model": "m", **CHAT, "stream": stream}
            call = asyncio.create_task(http.post("/v1/chat/completions", json=body, headers={"X-Session-ID": "lost"}))
            while not state.received:  # the session is open and the backend has the request
                await asyncio.sleep(0.01)
            redis.stop()
            gate.set()
            response = await call
            assert response.status_code == 200
            assert sample(app, "thrifty_session_turns_lost_total") == 1
            if not stream:  # a stream's headers left before the turn could be recorded
                assert response.headers["x-thrifty-session-state"] == "unrecorded"


async def test_a_store_that_was_never_reachable_fails_fast() -> None:
    store = _store(f"redis://127.0.0.1:{free_port()}/0", max_turns=10)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.open("o", "s")
        # Known to be away: the next operation does not even try.
        with pytest.raises(StoreUnavailable, match="probing in the background"):
            await store.record("o", "s", _turn(1), None, quota=1)
    finally:
        await store.link.close()


def test_two_gateways_share_sessions_and_limits_and_restarts_lose_nothing(redis: RedisServer, tmp_path: Path) -> None:
    with standins(StandinState(model="m")) as (b,):
        config = tmp_path / "c.yaml"
        config.write_text(
            f"redis_url: {redis.url}\nredis_timeout_s: 10\n"
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

    from thrifty.server.errors import RateLimited
    from thrifty.server.ratelimit import Quota, RedisRateLimiter

    links = [RedisLink(redis.url, timeout_s=5.0) for _ in range(2)]
    first, second = (RedisRateLimiter(link) for link in links)  # as two gateway processes
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
        for link in links:
            await link.close()
