"""Routes for text completions."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from thrifty.server.state import gateway_state


async def create_completion(request: Request) -> Response:
    return await gateway_state(request).completions.create(request)


def attach_router(app: FastAPI) -> None:
    # A plain Starlette route, as for chat completions (see server/chat/api_router.py).
    app.router.add_route("/v1/completions", create_completion, methods=["POST"])
