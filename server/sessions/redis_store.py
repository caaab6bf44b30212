"""Sessions in Redis: shared by every gateway process, kept across restarts, expiring after a TTL.

Layout per owner ``o`` (the braces are a Redis Cluster hash tag: an owner's keys share one shard):

    thrifty:s:{o}:<id>      hash: created_at, budget, spent, turns, plan (JSON, if a turn sent one)
    thrifty:s:{o}:<id>:t    list of turn JSON, trimmed to the most recent ``max_turns``
    thrifty:si:{o}          sorted set: the owner's session ids by last use (its quota's index)

Opening, recording and deleting are Lua scripts, so each is one atomic step on the server: concurrent
turns never lose an update, and the quota never lets an owner hold more than its share. A session is
written when its first turn is recorded. Requests that name no session never touch Redis for it, so
any number of them costs Redis nothing. Reaching Redis (timeouts, outages) is :mod:`redis_link`'s job.
"""

from __future__ import annotations

from typing import Any

import orjson

from thrifty.server.redis_link import RedisLink
from thrifty.server.sessions.model import Session, Turn
from thrifty.server.sessions.store import SessionStore

# KEYS: head, turns, index. ARGV: now, ttl (ms), history, session id.
_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local head = redis.call('HMGET', KEYS[1], 'created_at', 'budget', 'spent', 'turns', 'plan')
local n = tonumber(ARGV[3])
local turns = {}
if n > 0 then turns = redis.call('LRANGE', KEYS[2], -n, -1) end
return {head, turns}
"""

# KEYS: head, turns, index. ARGV: now, budget, ttl (ms), tokens spent, turn JSON, max turns, session id,
# quota, the owner's key prefix, the plan's JSON ('' for none). The owner's other sessions are named from
# the prefix: they share the owner's hash tag, so they live on the same shard as the declared keys.
_RECORD = """
local now = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'budget', ARGV[2], 'spent', 0, 'turns', 0)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]) / 1000)
  redis.call('ZADD', KEYS[3], now, ARGV[7])
  local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[8])
  if over > 0 then
    for _, old in ipairs(redis.call('ZRANGE', KEYS[3], 0, over - 1)) do
      redis.call('DEL', ARGV[9] .. old, ARGV[9] .. old .. ':t')
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, over - 1)
  end
else
  redis.call('ZADD', KEYS[3], now, ARGV[7])
end
if ARGV[10] ~= '' then redis.call('HSETNX', KEYS[1], 'plan', ARGV[10]) end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'turns', 1)
redis.call('RPUSH', KEYS[2], ARGV[5])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: head, turns, index. ARGV: session id.
_DELETE = """
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1], KEYS[2])
"""


def _prefix(owner: str) -> str:
    return f"thrifty:s:{{{owner}}}:"


def _keys(owner: str, session_id: str) -> list[str]:
    head = _prefix(owner) + session_id
    return [head, head + ":t", f"thrifty:si:{{{owner}}}"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _session(session_id: str, head: list[Any], turns: list[Any]) -> Session:
    created_at, budget, spent, count = (_text(v) if v is not None else "" for v in head[:4])
    plan = orjson.loads(head[4]) if len(head) > 4 and head[4] else None
    return Session(
        id=session_id,
        created_at=float(created_at or 0),
        budget=int(budget) if budget else None,
        spent=int(spent or 0),
        turn_count=int(count or 0),
        turns=[Turn.from_json(orjson.loads(t)) for t in turns],
        plan=None if plan is None else tuple(plan),
    )


class RedisSessionStore(SessionStore):
    name = "redis"

    def __init__(self, link: RedisLink, ttl_s: float, history: int, max_turns: int) -> None:
        super().__init__(ttl_s, history, max_turns)
        self.link = link
        self._open_script = link.redis.register_script(_OPEN)
        self._record_script = link.redis.register_script(_RECORD)
        self._delete_script = link.redis.register_script(_DELETE)

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    async def open(self, owner: str, session_id: str) -> Session | None:
        args: list[str | int | bytes] = [repr(self.clock()), self._ttl_ms, self.history, session_id]
        async with self.link.call("session open"):
            found = await self._open_script(keys=_keys(owner, session_id), args=args)
        if not found:
            return None
        head, turns = found
        return _session(session_id, head, turns)

    async def get(self, owner: str, session_id: str) -> Session | None:
        head_key, turns_key, _ = _keys(owner, session_id)
        async with self.link.call("session read") as redis, redis.pipeline(transaction=True) as pipe:
            pipe.hmget(head_key, "created_at", "budget", "spent", "turns", "plan")
            pipe.lrange(turns_key, 0, -1)
            head, turns = await pipe.execute()
        return None if head[0] is None else _session(session_id, head, turns)

    async def record(
        self,
        owner: str,
        session_id: str,
        turn: Turn,
        budget: int | None,
        quota: int,
        plan: tuple[str, ...] | None = None,
    ) -> None:
        args: list[str | int | bytes] = [
            repr(self.clock()),
            "" if budget is None else str(budget),
            self._ttl_ms,
            turn.spent,
            orjson.dumps(turn),
            self.max_turns,
            session_id,
            quota,
            _prefix(owner),
            b"" if plan is None else orjson.dumps(list(plan)),
        ]
        async with self.link.call("turn record"):
            await self._record_script(keys=_keys(owner, session_id), args=args)

    async def delete(self, owner: str, session_id: str) -> bool:
        async with self.link.call("session delete"):
            return bool(await self._delete_script(keys=_keys(owner, session_id), args=[session_id]))
