"""Sessions in Redis: shared by every gateway process, kept across restarts, expiring after a TTL.

Layout per session (the braces are a Redis Cluster hash tag, keeping both keys on one shard):
``thrifty:s:{<id>}`` a hash (created_at, budget, spent, turns) and ``thrifty:s:{<id>}:turns`` a list of
turn JSON, trimmed to the most recent ``max_turns``. Opening and recording are Lua scripts, so each is
one atomic step on the server: concurrent turns never lose an update.

When Redis cannot be reached the store raises :class:`StoreUnavailable` at once and, for a second
after a failure, does not even try (so a dead Redis costs requests nothing); then it tries again and
redis-py reconnects by itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from thrifty.server.sessions.model import Session, Turn
from thrifty.server.sessions.store import SessionStore, StoreUnavailable

logger = logging.getLogger(__name__)

_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'budget', ARGV[2], 'spent', 0, 'turns', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local head = redis.call('HMGET', KEYS[1], 'created_at', 'budget', 'spent', 'turns')
local n = tonumber(ARGV[4])
local turns = {}
if n > 0 then turns = redis.call('LRANGE', KEYS[2], -n, -1) end
return {head, turns}
"""

_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'budget', ARGV[2], 'spent', 0, 'turns', 0)
end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'turns', 1)
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

_FAIL_FAST_S = 1.0


def _keys(session_id: str) -> list[str]:
    head = f"thrifty:s:{{{session_id}}}"
    return [head, head + ":turns"]


def _budget_arg(budget: int | None) -> str:
    return "" if budget is None else str(budget)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _session(session_id: str, head: list[Any], turns: list[Any]) -> Session:
    created_at, budget, spent, count = (_text(v) if v is not None else "" for v in head)
    return Session(
        id=session_id,
        created_at=float(created_at or 0),
        budget=int(budget) if budget else None,
        spent=int(spent or 0),
        turn_count=int(count or 0),
        turns=[Turn.from_json(orjson.loads(t)) for t in turns],
    )


class RedisSessionStore(SessionStore):
    name = "redis"

    def __init__(self, url: str, ttl_s: float, history: int, max_turns: int) -> None:
        super().__init__(ttl_s, history)
        self.max_turns = max_turns
        # One quick retry covers a connection that went stale (e.g. Redis restarted); no backoff, so a
        # Redis that is really gone is noticed at once (a refused connection fails immediately). The
        # timeouts leave room for a busy event loop: a reply that waits behind 50 other requests on a
        # loaded machine is late, not lost, and must not take sessions offline.
        self.redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
            retry_on_timeout=False,
        )
        self._open_script = self.redis.register_script(_OPEN)
        self._record_script = self.redis.register_script(_RECORD)
        self._retry_at = 0.0

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self._retry_at

    @contextlib.asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        """Fail fast while Redis is known to be away; turn its errors into StoreUnavailable."""
        if time.monotonic() < self._retry_at:
            raise StoreUnavailable("redis is unreachable (retrying shortly)")
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if self.healthy:
                logger.warning("redis session store unreachable: %s", type(exc).__name__)
            self._retry_at = time.monotonic() + _FAIL_FAST_S
            raise StoreUnavailable(f"redis is unreachable: {type(exc).__name__}") from exc
        except RedisError as exc:
            raise StoreUnavailable(f"redis refused the operation: {type(exc).__name__}") from exc
        if self._retry_at:
            logger.warning("redis session store reachable again")
            self._retry_at = 0.0

    async def open(self, session_id: str, budget: int | None) -> Session:
        args: list[str | int | bytes] = [repr(self.clock()), _budget_arg(budget), int(self.ttl_s * 1000), self.history]
        async with self._reachable():
            head, turns = await self._open_script(keys=_keys(session_id), args=args)
        return _session(session_id, head, turns)

    async def get(self, session_id: str) -> Session | None:
        keys = _keys(session_id)
        async with self._reachable(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys[0], "created_at", "budget", "spent", "turns")
            pipe.lrange(keys[1], 0, -1)
            head, turns = await pipe.execute()
        return None if head[0] is None else _session(session_id, head, turns)

    async def record(self, session_id: str, turn: Turn, budget: int | None) -> None:
        args: list[str | int | bytes] = [
            repr(self.clock()),
            _budget_arg(budget),
            int(self.ttl_s * 1000),
            turn.spent,
            orjson.dumps(turn.to_json()),
            self.max_turns,
        ]
        async with self._reachable():
            await self._record_script(keys=_keys(session_id), args=args)

    async def delete(self, session_id: str) -> bool:
        async with self._reachable():
            return bool(await self.redis.delete(*_keys(session_id)))

    async def close(self) -> None:
        await self.redis.aclose()
