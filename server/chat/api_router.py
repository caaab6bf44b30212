"""Routes for chat completions."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from thrifty.server.state import gateway_state

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(request: Request) -> Response:
    return await gateway_state(request).chat.create(request)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
