"""Operational endpoints: ``/health`` (the process is alive), ``/ready`` (a backend is healthy), ``/metrics``."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from thrifty.server.errors import BackendUnavailable
from thrifty.server.pipeline import error_response
from thrifty.server.state import gateway_state

router = APIRouter()


@router.get("/health", response_model=None)
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready", response_model=None)
async def ready(request: Request) -> Response:
    state = gateway_state(request)
    if state.pool.any_available():
        healthy = [b.name for b in state.pool.backends if b.available]
        return Response(orjson.dumps({"status": "ready", "backends": healthy}), media_type="application/json")
    return error_response(BackendUnavailable("no backend is healthy"))


@router.get("/metrics", response_model=None)
async def metrics(request: Request) -> Response:
    body, content_type = gateway_state(request).metrics.render()
    return Response(body, media_type=content_type)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
