"""Operational endpoints: ``/health`` (the process is alive), ``/ready`` (a backend is healthy), ``/metrics``,
and the router's admin endpoints: ``GET /admin/router`` (what is loaded) and ``POST /admin/router/reload``
(read the artifact again; the previous one keeps serving if the new one is broken). With API keys
configured, admin endpoints need a key with ``admin: true``.

With several workers (``server.workers``), each worker holds its own router: send SIGHUP to ``thrifty
serve`` instead, which restarts the workers gracefully, one after another.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from thrifty.router import NothingToReload, Router
from thrifty.server.errors import BackendUnavailable, Conflict, UnprocessableArtifact
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.pipeline import error_response
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


async def reload_router(router: Router, metrics: GatewayMetrics) -> dict[str, Any]:
    """Read the router's artifact again; on failure the previous one keeps serving."""
    try:
        status = await router.reload()
    except NothingToReload:
        raise
    except Exception:
        metrics.router_reloads.labels("failed").inc()
        raise
    metrics.router_reloads.labels("ok").inc()
    logger.info("router reloaded: %s", status)
    return status


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


@router.get("/admin/router", response_model=None)
async def router_status(request: Request) -> Response:
    state = gateway_state(request)
    state.access.identify_admin(request.headers)
    return _json(
        {"policy": state.router.name, "virtual_models": list(state.router.virtual_models)} | state.router.status()
    )


@router.post("/admin/router/reload", response_model=None)
async def router_reload(request: Request) -> Response:
    state = gateway_state(request)
    state.access.identify_admin(request.headers)
    try:
        status = await reload_router(state.router, state.metrics)
    except NothingToReload as exc:
        return error_response(Conflict(str(exc)))
    except (OSError, ValueError) as exc:  # a missing, torn or mismatched artifact
        return error_response(UnprocessableArtifact(f"reload failed; still serving the previous artifact: {exc}"))
    return _json({"status": "reloaded", "policy": state.router.name} | status)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
