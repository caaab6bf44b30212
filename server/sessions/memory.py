"""Sessions in the gateway's own memory: bounded (least recently used goes first) and expiring.

One event loop owns the dictionary and no method awaits between reading and writing it, so every
operation is atomic without a lock. Sessions are per process: use Redis to share them.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from thrifty.server.sessions.model import Session, Turn
from thrifty.server.sessions.store import SessionStore


@dataclass(slots=True)
class _Entry:
    session: Session
    recent: deque[Turn] = field(default_factory=deque)
    expires_at: float = 0.0


class MemorySessionStore(SessionStore):
    name = "memory"

    def __init__(
        self, ttl_s: float, history: int, max_turns: int, max_sessions: int, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(ttl_s, history, clock)
        self.max_turns = max_turns
        self.max_sessions = max_sessions
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def _live(self, session_id: str, now: float) -> _Entry | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[session_id]
            return None
        return entry

    def _touch(self, session_id: str, budget: int | None) -> _Entry:
        now = self.clock()
        entry = self._live(session_id, now)
        if entry is None:
            entry = _Entry(Session(session_id, now, budget), deque(maxlen=self.max_turns))
            self._entries[session_id] = entry
            while len(self._entries) > self.max_sessions:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(session_id)
        entry.expires_at = now + self.ttl_s
        return entry

    @staticmethod
    def _view(entry: _Entry, last: int) -> Session:
        s = entry.session
        turns = list(entry.recent)[-last:] if last > 0 else []
        return Session(s.id, s.created_at, s.budget, s.spent, s.turn_count, turns)

    async def open(self, session_id: str, budget: int | None) -> Session:
        return self._view(self._touch(session_id, budget), self.history)

    async def get(self, session_id: str) -> Session | None:
        entry = self._live(session_id, self.clock())
        return None if entry is None else self._view(entry, self.max_turns)

    async def record(self, session_id: str, turn: Turn, budget: int | None) -> None:
        entry = self._touch(session_id, budget)
        entry.session.spent += turn.spent
        entry.session.turn_count += 1
        entry.recent.append(turn)

    async def delete(self, session_id: str) -> bool:
        return self._entries.pop(session_id, None) is not None
