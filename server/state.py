"""What the app's lifespan builds and the handlers reach: one object, typed."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from thrifty.server.access import AccessControl
from thrifty.server.backends.pool import BackendPool
from thrifty.server.drain import Drain
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.ops.reload import StageReloader
from thrifty.server.serving import CompletionServing
from thrifty.server.sessions.manager import SessionManager


@dataclass(slots=True)
class GatewayState:
    pool: BackendPool
    metrics: GatewayMetrics
    access: AccessControl
    sessions: SessionManager
    chat: CompletionServing
    completions: CompletionServing
    models_body: bytes
    reloader: StageReloader
    drain: Drain


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state
