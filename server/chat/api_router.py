"""Routes for chat completions."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from thrifty.server.state import gateway_state


async def create_chat_completion(request: Request) -> Response:
    return await gateway_state(request).chat.create(request)


def attach_router(app: FastAPI) -> None:
    # A plain Starlette route: the handler reads and validates the body itself, and FastAPI's
    # per-request machinery (dependency solving, OpenTelemetry hooks) measurably costs on this path.
    app.router.add_route("/v1/chat/completions", create_chat_completion, methods=["POST"])
