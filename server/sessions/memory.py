"""Sessions in the gateway's own memory: bounded per owner (least recently used goes first) and expiring.

One event loop owns the dictionaries and no method awaits between reading and writing them, so every
operation is atomic without a lock. Sessions are per process: use Redis to share them.

Memory: a turn is kept as a JSON array of its fields (about 100 bytes), which the garbage collector never
has to walk; only the last ``history`` turns, which every request of the session hands to the budgeter,
are kept as objects too. The worst case is owners × quota × max_turns turns (loadtests/RESULTS.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from thrifty.server.sessions.model import Session, Turn
from thrifty.server.sessions.store import SessionStore


@dataclass(slots=True)
class _Entry:
    created_at: float
    budget: int | None
    expires_at: float
    spent: int = 0
    turn_count: int = 0
    plan: tuple[str, ...] | None = None
    recent: deque[Turn] = field(default_factory=deque)  # the last `history` turns, as objects
    kept: deque[bytes] = field(default_factory=deque)  # the last `max_turns` turns, as JSON rows


class MemorySessionStore(SessionStore):
    name = "memory"

    def __init__(self, ttl_s: float, history: int, max_turns: int, clock: Callable[[], float] = time.time) -> None:
        super().__init__(ttl_s, history, max_turns, clock)
        self._owners: dict[str, OrderedDict[str, _Entry]] = {}

    def _live(self, owner: str, session_id: str, now: float) -> _Entry | None:
        sessions = self._owners.get(owner)
        entry = sessions.get(session_id) if sessions is not None else None
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(owner, session_id)
            return None
        return entry

    def _drop(self, owner: str, session_id: str) -> bool:
        sessions = self._owners.get(owner)
        if sessions is None or sessions.pop(session_id, None) is None:
            return False
        if not sessions:
            del self._owners[owner]
        return True

    def _view(self, session_id: str, entry: _Entry, turns: list[Turn]) -> Session:
        return Session(session_id, entry.created_at, entry.budget, entry.spent, entry.turn_count, turns, entry.plan)

    async def open(self, owner: str, session_id: str) -> Session | None:
        now = self.clock()
        entry = self._live(owner, session_id, now)
        if entry is None:
            return None
        entry.expires_at = now + self.ttl_s
        self._owners[owner].move_to_end(session_id)
        return self._view(session_id, entry, list(entry.recent))

    async def get(self, owner: str, session_id: str) -> Session | None:
        entry = self._live(owner, session_id, self.clock())
        if entry is None:
            return None
        return self._view(session_id, entry, [Turn.from_row(orjson.loads(t)) for t in entry.kept])

    async def record(
        self,
        owner: str,
        session_id: str,
        turn: Turn,
        budget: int | None,
        quota: int,
        plan: tuple[str, ...] | None = None,
    ) -> None:
        now = self.clock()
        entry = self._live(owner, session_id, now)
        sessions = self._owners.setdefault(owner, OrderedDict())
        if entry is None:
            entry = _Entry(now, budget, now, recent=deque(maxlen=self.history), kept=deque(maxlen=self.max_turns))
            sessions[session_id] = entry
            # The owner's own least recently used (expired ones are at the front) make room.
            while len(sessions) > quota:
                sessions.popitem(last=False)
        else:
            sessions.move_to_end(session_id)
        entry.expires_at = now + self.ttl_s
        if entry.plan is None and plan is not None:
            entry.plan = plan
        entry.spent += turn.spent
        entry.turn_count += 1
        entry.recent.append(turn)
        # orjson's bytes keep the 4 KiB buffer they were written in; a copy holds just the ~100 bytes.
        entry.kept.append(memoryview(orjson.dumps(turn.to_row())).tobytes())

    async def delete(self, owner: str, session_id: str) -> bool:
        return self._drop(owner, session_id)

    def count(self, owner: str | None = None) -> int:
        """Sessions held (for one owner, or all), expired ones not yet dropped included."""
        if owner is not None:
            return len(self._owners.get(owner, ()))
        return sum(len(s) for s in self._owners.values())
