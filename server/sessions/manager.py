"""Sessions on the request path: which session a request belongs to, and recording its turn.

A request joins a session by naming it: the ``X-Session-ID`` header or ``metadata.session_id`` in the
body (any id the client chooses), or ``"thrifty": {"new_session": true}``, which makes the gateway
choose one. The id comes back in ``x-thrifty-session``. A request that names no session is served on its
own, as at OpenAI: nothing is stored for it (its thinking budget is still capped by the problem budget
B). Sessions are private to the API key that made them, and each key holds at most its quota of them
(its least recently used go first).

If the store cannot be reached the request is still served, without session state, flagged by
``x-thrifty-session-state: unavailable``; a turn answered but not recorded is flagged ``unrecorded``
where the response has not begun yet, and always counted in ``thrifty_session_turns_lost_total``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thrifty.server.config import SessionsConfig
from thrifty.server.errors import InvalidRequest
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.sessions.model import Session, Turn
from thrifty.server.sessions.store import SessionStore, StoreUnavailable

logger = logging.getLogger(__name__)

SESSION_HEADER = "x-session-id"
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNAVAILABLE = "unavailable"  # x-thrifty-session-state: the store was away; nothing of the session was used
UNRECORDED = "unrecorded"  # x-thrifty-session-state: answered, but the turn is not in the session


@dataclass(slots=True)
class SessionContext:
    """The session of one request, as the pipeline carries it."""

    id: str
    owner: str
    quota: int
    budget: int | None  # the problem's total budget B, for a session this request creates
    session: Session | None  # None when the store was unreachable
    plan: tuple[str, ...] | None = None  # the request's thrifty.plan, kept by the session if it has none

    @property
    def degraded(self) -> bool:
        return self.session is None


def session_id_from(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The client's session id, validated; None when the request names none."""
    value: Any = headers.get(SESSION_HEADER)
    param = "X-Session-ID"
    if value is None:
        metadata = body.get("metadata")
        value = metadata.get("session_id") if isinstance(metadata, dict) else None
        param = "metadata.session_id"
    if value is None:
        return None
    if not isinstance(value, str) or not SESSION_ID_PATTERN.match(value):
        raise InvalidRequest(
            f"'{param}' must be 1 to 128 characters of letters, digits, '.', '_', ':' or '-'", param=param
        )
    return value


class SessionManager:
    def __init__(self, store: SessionStore, config: SessionsConfig, metrics: GatewayMetrics) -> None:
        self.store = store
        self.config = config
        self._metrics = metrics

    def budget_for(self, requested: int | None) -> int | None:
        """The problem budget B of a request: its own, else the configured default."""
        return self.config.default_budget if requested is None else requested

    def on_its_own(self, requested: int | None) -> Session | None:
        """What the budgeter sees of a request that names no session: a problem of one turn, nothing stored."""
        budget = self.budget_for(requested)
        return None if budget is None else Session("", self.store.clock(), budget)

    def _failed(self, operation: str, exc: StoreUnavailable) -> None:
        self._metrics.session_store_errors.labels(operation).inc()
        logger.debug("session store %s failed: %s", operation, exc)

    async def begin(
        self,
        owner: str,
        quota: int,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        budget: int | None,
        new: bool = False,
        plan: tuple[str, ...] | None = None,
    ) -> SessionContext | None:
        """The request's session (opened, or to be created by its first turn); None if it names none.

        ``budget``: the request's own B, if it gave one; ``new``: the client asked for a fresh session.
        """
        session_id = session_id_from(headers, body)
        if session_id is None:
            if not new:
                return None
            session_id = uuid.uuid4().hex
        budget = self.budget_for(budget)
        context = SessionContext(session_id, owner, quota, budget, None, plan)
        try:
            found = await self.store.open(owner, session_id)
        except StoreUnavailable as exc:
            self._failed("open", exc)
            self._metrics.requests_without_session.inc()
            return context
        context.session = found or Session(session_id, self.store.clock(), budget)
        return context

    async def record(self, context: SessionContext, turn: Turn) -> bool:
        """Record the request's turn; False (and counted) when it could not be."""
        if context.degraded:
            return False
        try:
            await self.store.record(context.owner, context.id, turn, context.budget, context.quota, context.plan)
        except StoreUnavailable as exc:
            self._failed("record", exc)
            self._metrics.session_turns_lost.inc()
            logger.warning("a turn of a session could not be recorded: %s", exc)
            return False
        return True

    async def get(self, owner: str, session_id: str) -> Session | None:
        return await self.store.get(owner, session_id)

    async def delete(self, owner: str, session_id: str) -> bool:
        return await self.store.delete(owner, session_id)
