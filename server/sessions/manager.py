"""Sessions on the request path: which session a request belongs to, and recording its turn.

A request names its session with the ``X-Session-ID`` header or ``metadata.session_id`` in the body;
without one it starts a new session whose id is generated and returned in ``x-thrifty-session`` (so a
client may continue it). Sessions are private to the API key that made them: the store key is
``<key name>/<session id>``. If the store is unreachable the request is still served, without
session state, flagged by ``x-thrifty-session-state: unavailable`` and a metric.
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


@dataclass(slots=True)
class SessionContext:
    """The session of one request, as the pipeline carries it."""

    id: str
    store_key: str
    budget: int | None  # the problem's total budget B, for a session this request creates
    session: Session | None  # None when the store was unreachable

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
        metrics.session_store_up.set(1)

    def _failed(self, operation: str, exc: StoreUnavailable) -> None:
        self._metrics.session_store_errors.labels(operation).inc()
        self._metrics.session_store_up.set(0)
        logger.debug("session store %s failed: %s", operation, exc)

    async def begin(
        self, owner: str, headers: Mapping[str, str], body: Mapping[str, Any], budget: int | None
    ) -> SessionContext:
        """Open (or create) the request's session. ``budget``: the request's own B, if it gave one."""
        session_id = session_id_from(headers, body) or uuid.uuid4().hex
        if budget is None:
            budget = self.config.default_budget
        context = SessionContext(session_id, f"{owner}/{session_id}", budget, None)
        try:
            context.session = await self.store.open(context.store_key, budget)
        except StoreUnavailable as exc:
            self._failed("open", exc)
            self._metrics.requests_without_session.inc()
            return context
        self._metrics.session_store_up.set(1)
        return context

    async def record(self, context: SessionContext, turn: Turn) -> None:
        if context.degraded:
            return
        try:
            await self.store.record(context.store_key, turn, context.budget)
        except StoreUnavailable as exc:
            # The answer is already on its way to the client; the ledger misses this turn.
            self._failed("record", exc)

    async def get(self, owner: str, session_id: str) -> Session | None:
        session = await self.store.get(f"{owner}/{session_id}")
        if session is not None:
            session.id = session_id
        return session

    async def delete(self, owner: str, session_id: str) -> bool:
        return await self.store.delete(f"{owner}/{session_id}")
