"""``GET`` and ``DELETE /v1/sessions/{id}``: a session's turns and ledger, and ending it."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from thrifty.server.errors import InvalidRequest, SessionNotFound, SessionStoreDown
from thrifty.server.sessions.manager import SESSION_ID_PATTERN
from thrifty.server.sessions.store import StoreUnavailable
from thrifty.server.state import gateway_state

router = APIRouter()


def _session_id(value: str) -> str:
    if not SESSION_ID_PATTERN.match(value):
        raise InvalidRequest("not a valid session id", param="session_id")
    return value


@router.get("/v1/sessions/{session_id}", response_model=None)
async def get_session(session_id: str, request: Request) -> Response:
    state = gateway_state(request)
    principal = state.access.identify(request.headers)
    try:
        session = await state.sessions.get(principal.name, _session_id(session_id))
    except StoreUnavailable:
        raise SessionStoreDown("the session store is unreachable; try again shortly") from None
    if session is None:
        raise SessionNotFound(f"no session '{session_id}'", param="session_id")
    return Response(orjson.dumps(session.to_json()), media_type="application/json")


@router.delete("/v1/sessions/{session_id}", response_model=None)
async def delete_session(session_id: str, request: Request) -> Response:
    state = gateway_state(request)
    principal = state.access.identify(request.headers)
    try:
        deleted = await state.sessions.delete(principal.name, _session_id(session_id))
    except StoreUnavailable:
        raise SessionStoreDown("the session store is unreachable; try again shortly") from None
    if not deleted:
        raise SessionNotFound(f"no session '{session_id}'", param="session_id")
    body = {"id": session_id, "object": "thrifty.session.deleted", "deleted": True}
    return Response(orjson.dumps(body), media_type="application/json")


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
