"""Routes for text completions."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from thrifty.server.state import gateway_state

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(request: Request) -> Response:
    return await gateway_state(request).completions.create(request)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
