"""Operational endpoints: ``/health`` (the process is alive), ``/ready`` (a backend is healthy), ``/metrics``,
and the stages' admin endpoints, one route for each of the router and the budgeter:
``GET /admin/{stage}`` (what is loaded) and ``POST /admin/{stage}/reload`` (read its artifact again; the
previous one keeps serving if the new one is broken). With API keys configured, admin endpoints need a
key with ``admin: true``.

With several workers (``server.workers``), each worker holds its own stages: send SIGHUP to ``thrifty
serve`` instead, which restarts the workers gracefully, one after another.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from thrifty.server.errors import BackendUnavailable, Conflict, RouteNotFound, UnprocessableArtifact, error_response
from thrifty.server.kit.reload import NothingToReload
from thrifty.server.metrics import STAGES
from thrifty.server.state import gateway_state

logger = logging.getLogger(__name__)

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


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _stage(request: Request, kind: str) -> str:
    if kind not in STAGES:
        raise RouteNotFound(f"no route {request.method} {request.url.path} (stages: {', '.join(STAGES)})")
    return kind


@router.get("/admin/{kind}", response_model=None)
async def stage_status(kind: str, request: Request) -> Response:
    state = gateway_state(request)
    state.access.identify_admin(request.headers)
    return _json(state.reloader.status(_stage(request, kind)))


@router.post("/admin/{kind}/reload", response_model=None)
async def stage_reload(kind: str, request: Request) -> Response:
    state = gateway_state(request)
    state.access.identify_admin(request.headers)
    try:
        status = await state.reloader.reload(_stage(request, kind))
    except NothingToReload as exc:
        return error_response(Conflict(str(exc)))
    except (OSError, ValueError) as exc:  # a missing, torn, malformed or mismatched artifact
        return error_response(UnprocessableArtifact(f"reload failed; still serving the previous artifact: {exc}"))
    return _json({"status": "reloaded"} | status)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
