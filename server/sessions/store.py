"""The session store interface. Two implementations: in memory (the default) and Redis.

Sessions belong to an owner (the API key's name) and each owner has a quota: a new session beyond it
pushes out that owner's least recently used one, never another owner's. A session is stored when its
first turn is recorded, so a request that fails leaves nothing behind. Every method is async and may
raise :class:`StoreUnavailable` when the backing service is away; the gateway then serves the request
without session state and says so. Recording a turn is atomic: the ledger (turn count, tokens spent,
turns) stays exact under any number of concurrent turns.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from thrifty.server.sessions.model import Session, Turn


class StoreUnavailable(Exception):
    """The store cannot be reached right now."""


class SessionStore(ABC):
    """Where sessions live. ``history`` bounds how many recent turns ``open`` returns, ``max_turns`` how many
    a session keeps."""

    name: str

    def __init__(self, ttl_s: float, history: int, max_turns: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.history = history
        self.max_turns = max_turns
        self.clock = clock

    @abstractmethod
    async def open(self, owner: str, session_id: str) -> Session | None:
        """The session with its recent turns, its TTL refreshed; None if it does not exist (yet)."""

    @abstractmethod
    async def get(self, owner: str, session_id: str) -> Session | None:
        """The session with every turn it keeps, or None."""

    @abstractmethod
    async def record(
        self,
        owner: str,
        session_id: str,
        turn: Turn,
        budget: int | None,
        quota: int,
        plan: tuple[str, ...] | None = None,
    ) -> None:
        """Append a turn and add its tokens to the ledger, atomically. A session that does not exist is
        created with ``budget``, and the owner's oldest sessions beyond ``quota`` are dropped. ``plan``
        is kept if the session has none yet (a plan, once kept, is never replaced)."""

    @abstractmethod
    async def delete(self, owner: str, session_id: str) -> bool:
        """End the session; False if it did not exist."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""
