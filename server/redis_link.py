"""One Redis client for sessions and rate limits, and one view of whether Redis answers.

A Redis that is down refuses connections at once; one that hangs (stopped, a stalled network) accepts
them and never answers. Either way a request waits at most once, for ``timeout_s``: the first operation
that fails marks Redis away, and from then on every operation fails at once — sessions are skipped and
flagged, rate limits counted per process — until a probe in the background sees Redis answer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from thrifty.server.sessions.store import StoreUnavailable

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.5


class RedisLink:
    """The client, whether Redis is reachable (``up``), and the probe that notices it coming back."""

    def __init__(self, url: str, timeout_s: float, on_change: Callable[[bool], None] | None = None) -> None:
        self.timeout_s = timeout_s
        # One quick retry covers a connection that went stale (Redis restarted); no backoff, so a Redis
        # that is really gone is noticed at once.
        self.redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            retry_on_timeout=False,
        )
        self.up = True
        self._on_change = on_change
        self._probe: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def call(self, operation: str) -> AsyncIterator[Redis]:
        """Run one operation on Redis within ``timeout_s``; StoreUnavailable at once while Redis is away."""
        if not self.up:
            raise StoreUnavailable(f"redis is unreachable ({operation} skipped; probing in the background)")
        try:
            async with asyncio.timeout(self.timeout_s):
                yield self.redis
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            self._away(operation, exc)
            raise StoreUnavailable(f"redis is unreachable: {type(exc).__name__} during {operation}") from exc
        except RedisError as exc:
            raise StoreUnavailable(f"redis refused {operation}: {type(exc).__name__}") from exc

    def _away(self, operation: str, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        logger.warning(
            "redis unreachable (%s during %s): serving without session state until it answers again",
            type(exc).__name__,
            operation,
        )
        if self._on_change is not None:
            self._on_change(False)
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis(), name="thrifty-redis-probe")

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.redis.ping()
            except (RedisError, OSError, TimeoutError):
                continue
            self.up = True
            logger.warning("redis reachable again")
            if self._on_change is not None:
                self._on_change(True)
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.redis.aclose()
