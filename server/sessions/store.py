"""The session store interface. Two implementations: in memory (the default) and Redis.

Every method is async and may raise :class:`StoreUnavailable` when the backing service is away; the
gateway then serves the request without session state and says so. Recording a turn is atomic: the
ledger (turn count, tokens spent, turns) stays exact under any number of concurrent turns.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from thrifty.server.sessions.model import Session, Turn


class StoreUnavailable(Exception):
    """The store cannot be reached right now."""


class SessionStore(ABC):
    """Where sessions live. ``history`` bounds how many recent turns ``open``/``get`` return."""

    name: str

    def __init__(self, ttl_s: float, history: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.history = history
        self.clock = clock

    @abstractmethod
    async def open(self, session_id: str, budget: int | None) -> Session:
        """The session, created with ``budget`` if it does not exist; refreshes its TTL."""

    @abstractmethod
    async def get(self, session_id: str) -> Session | None:
        """The session with its recent turns, or None."""

    @abstractmethod
    async def record(self, session_id: str, turn: Turn, budget: int | None) -> None:
        """Append a turn and add its tokens to the ledger, atomically (creating the session if gone)."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """End the session; False if it did not exist."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""

    @property
    def healthy(self) -> bool:
        return True
