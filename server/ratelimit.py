"""Per-key rate limits: requests per minute and tokens per minute, in fixed one-minute windows.

A request is admitted if the key's window has room for one more request and its tokens so far are
under the limit; the tokens a request used are added when it finishes (nobody knows them before).
With Redis the counters are shared by every gateway process (one Lua script admits atomically); if
Redis is away (``redis_link`` decides, and bounds the wait), each process counts on its own until it is
back.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from thrifty.server.errors import RateLimited
from thrifty.server.redis_link import RedisLink
from thrifty.server.sessions.store import StoreUnavailable

logger = logging.getLogger(__name__)

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits of one key (None: unlimited)."""

    key: str  # the key's configured name, never the key itself
    rpm: int | None
    tpm: int | None

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None


def _window(now: float) -> tuple[int, int]:
    """The window's index and the whole seconds until it ends (at least 1)."""
    index = int(now // WINDOW_S)
    return index, max(1, math.ceil((index + 1) * WINDOW_S - now))


def _refusal(quota: Quota, kind: str, retry_after: int) -> RateLimited:
    limit = quota.rpm if kind == "requests" else quota.tpm
    return RateLimited(
        f"rate limit reached for this API key: {limit} {kind} per minute; retry after {retry_after} s",
        retry_after_s=retry_after,
    )


class RateLimiter(ABC):
    @abstractmethod
    async def admit(self, quota: Quota, now: float) -> None:
        """Count one request, or raise RateLimited (which does not count it)."""

    @abstractmethod
    async def spend(self, quota: Quota, tokens: int, now: float) -> None:
        """Add a finished request's tokens."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""


class MemoryRateLimiter(RateLimiter):
    """Counts in this process only."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], list[int]] = {}

    def _slot(self, key: str, index: int) -> list[int]:
        slot = self._counts.get((key, index))
        if slot is None:
            # A new window: forget the finished ones.
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= index}
            slot = self._counts[(key, index)] = [0, 0]
        return slot

    async def admit(self, quota: Quota, now: float) -> None:
        index, retry_after = _window(now)
        slot = self._slot(quota.key, index)
        if quota.rpm is not None and slot[0] >= quota.rpm:
            raise _refusal(quota, "requests", retry_after)
        if quota.tpm is not None and slot[1] >= quota.tpm:
            raise _refusal(quota, "tokens", retry_after)
        slot[0] += 1

    async def spend(self, quota: Quota, tokens: int, now: float) -> None:
        self._slot(quota.key, _window(now)[0])[1] += tokens


_ADMIT = """
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
if rpm > 0 and requests >= rpm then return 1 end
if tpm > 0 and tokens >= tpm then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 0
"""


class RedisRateLimiter(RateLimiter):
    """Counts in Redis, shared by every gateway process; falls back to local counts while Redis is away."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._admit = link.redis.register_script(_ADMIT)
        self._fallback = MemoryRateLimiter()

    @staticmethod
    def _keys(key: str, index: int) -> list[str]:
        base = f"thrifty:rl:{{{key}}}:{index}"
        return [base + ":r", base + ":t"]

    async def admit(self, quota: Quota, now: float) -> None:
        index, retry_after = _window(now)
        try:
            async with self._link.call("rate limit"):
                verdict = await self._admit(
                    keys=self._keys(quota.key, index), args=[quota.rpm or 0, quota.tpm or 0, WINDOW_S * 2]
                )
        except StoreUnavailable:
            return await self._fallback.admit(quota, now)
        if verdict == 1:
            raise _refusal(quota, "requests", retry_after)
        if verdict == 2:
            raise _refusal(quota, "tokens", retry_after)
        return None

    async def spend(self, quota: Quota, tokens: int, now: float) -> None:
        key = self._keys(quota.key, _window(now)[0])[1]
        try:
            async with self._link.call("token charge") as redis, redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, tokens)
                pipe.expire(key, WINDOW_S * 2)
                await pipe.execute()
        except StoreUnavailable:
            await self._fallback.spend(quota, tokens, now)
