"""``build_app(config) -> FastAPI``: the gateway application. Nothing here runs at import time."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from thrifty.budgeter import build_budgeter
from thrifty.router import Router, build_router
from thrifty.server.access import AccessControl
from thrifty.server.backends import client
from thrifty.server.backends.pool import BackendPool
from thrifty.server.budgeting import BudgetStage
from thrifty.server.chat import api_router as chat_routes
from thrifty.server.chat.serving import chat_serving
from thrifty.server.completions import api_router as completion_routes
from thrifty.server.completions.serving import completion_serving
from thrifty.server.conclude import Conclusion
from thrifty.server.config import (
    ENV_CONFIG,
    ENV_DATA_DIR,
    ConfigError,
    GatewayConfig,
    default_config,
    load_config,
)
from thrifty.server.drain import Drain, start_on_termination
from thrifty.server.errors import GatewayError, InvalidRequest, MethodNotAllowed, RouteNotFound, error_response
from thrifty.server.forward import Forwarder
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.models import api_router as model_routes
from thrifty.server.ops import api_router as ops_routes
from thrifty.server.ops.reload import StageReloader
from thrifty.server.outcome import Outcomes
from thrifty.server.pipeline import Pipeline
from thrifty.server.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from thrifty.server.redis_link import RedisLink
from thrifty.server.relay import Relay
from thrifty.server.routing import RouteStage
from thrifty.server.sessions import api_router as session_routes
from thrifty.server.sessions.manager import SessionManager
from thrifty.server.sessions.memory import MemorySessionStore
from thrifty.server.sessions.redis_store import RedisSessionStore
from thrifty.server.sessions.store import SessionStore
from thrifty.server.state import GatewayState

logger = logging.getLogger(__name__)


def _models_body(pool: BackendPool, router: Router) -> bytes:
    created = int(time.time())
    names = [*pool.models, *router.virtual_models]
    data = [{"id": m, "object": "model", "created": created, "owned_by": "thrifty"} for m in names]
    return orjson.dumps({"object": "list", "data": data})


def _stores(config: GatewayConfig, metrics: GatewayMetrics) -> tuple[SessionStore, RateLimiter, RedisLink | None]:
    """Session store and rate limiter: in memory, or both in Redis (one link) when a URL is configured."""
    s = config.sessions
    metrics.session_store_up.set(1)
    if config.redis_url is None:
        return MemorySessionStore(s.ttl_s, s.history, s.max_turns), MemoryRateLimiter(), None
    link = RedisLink(config.redis_url, config.redis_timeout_s, on_change=metrics.session_store_up.set)
    return RedisSessionStore(link, s.ttl_s, s.history, s.max_turns), RedisRateLimiter(link), link


def build_app(config: GatewayConfig) -> FastAPI:
    """The gateway for ``config``; a router or budgeter that cannot be built is a ConfigError."""
    # Their options were checked with the config; what is left to fail is what building reads (an artifact).
    try:
        router = build_router(config.router_name, config.router[config.router_name])
    except ValueError as exc:
        raise ConfigError(f"router.{config.router_name}: {exc}") from None
    try:
        budgeter = build_budgeter(config.budgeter_name, config.budgeter[config.budgeter_name])
    except ValueError as exc:
        raise ConfigError(f"budgeter.{config.budgeter_name}: {exc}") from None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = GatewayMetrics()
        pool = BackendPool(config, metrics)
        session = client.open_session(config)
        store, limiter, link = _stores(config, metrics)
        sessions = SessionManager(store, config.sessions, metrics)
        access = AccessControl(config.auth, limiter, metrics, config.sessions.max_per_key)
        drain = Drain(config.server.graceful_shutdown_s)
        outcomes = Outcomes(metrics, drain)
        conclude = Conclusion(sessions, access)
        pipeline = Pipeline(
            access,
            sessions,
            RouteStage(router, pool, metrics),
            BudgetStage(budgeter, pool, config.limits.answer_tokens, metrics),
            Forwarder(pool, session, config.limits, config.timeouts, metrics),
            Relay(pool, outcomes, conclude, config.limits, config.timeouts),
            conclude,
            outcomes,
        )
        limit = config.limits.max_body_bytes
        reloader = StageReloader({"router": router, "budgeter": budgeter}, metrics)
        app.state.gateway = GatewayState(
            pool=pool,
            metrics=metrics,
            access=access,
            sessions=sessions,
            chat=chat_serving(pipeline, limit),
            completions=completion_serving(pipeline, limit),
            models_body=_models_body(pool, router),
            reloader=reloader,
            drain=drain,
        )
        hangup = reloader.on_sighup()
        termination = start_on_termination(drain)
        await pool.check_health(session)
        checker = asyncio.create_task(pool.run_health_checks(session), name="thrifty-health")
        try:
            yield
        finally:
            termination()
            drain.close()
            hangup()
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            await session.close()
            await store.close()
            await limiter.close()
            if link is not None:
                await link.close()

    options: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:
        # FastAPI's own OpenTelemetry hooks cost on every request; Thrifty exports its own metrics.
        options["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="Thrifty", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None, **options)
    for module in (chat_routes, completion_routes, model_routes, session_routes, ops_routes):
        module.attach_router(app)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(RouteNotFound(f"no route {request.method} {request.url.path}"))
        if exc.status_code == 405:
            return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        error = GatewayError(str(exc.detail))
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(error)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        return error_response(InvalidRequest("the request is not valid"))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # A bug in the gateway: log the traceback, never show it to the client.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(GatewayError("the gateway failed unexpectedly; see its logs"))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)


def app_from_environment() -> FastAPI:
    """uvicorn factory used by ``thrifty serve`` (also with several workers): config from the environment."""
    path = os.environ.get(ENV_CONFIG)
    if path:
        return build_app(load_config(Path(path)))
    return build_app(default_config(Path(os.environ.get(ENV_DATA_DIR, "data"))))
