"""``GET /v1/models``: every configured model plus the router's virtual model ``auto``."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from thrifty.server.state import gateway_state

router = APIRouter()


@router.get("/v1/models", response_model=None)
async def list_models(request: Request) -> Response:
    state = gateway_state(request)
    state.access.identify(request.headers)
    return Response(state.models_body, media_type="application/json")


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
