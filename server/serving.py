"""The HTTP side of the completion endpoints: admit the caller, read and validate the body, run the
pipeline, and answer whatever went wrong (OpenAI error bodies; never Starlette's last-resort 500)."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from thrifty.server.errors import BodyTooLarge, GatewayError, InvalidRequest, ShuttingDown, error_response
from thrifty.server.outcome import CLIENT_CLOSED
from thrifty.server.pipeline import Pipeline
from thrifty.server.protocol import CompletionFields, parse_body, validate
from thrifty.server.request import Endpoint, RequestContext

logger = logging.getLogger(__name__)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("the Content-Length header is not a number", code="invalid_header")
        if int(declared) > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class CompletionServing:
    """Serves one completion endpoint; ``wire_model`` says which fields it validates."""

    def __init__(
        self, pipeline: Pipeline, endpoint: Endpoint, wire_model: type[CompletionFields], max_body_bytes: int
    ) -> None:
        self.pipeline = pipeline
        self.endpoint = endpoint
        self.wire_model = wire_model
        self.max_body_bytes = max_body_bytes

    async def create(self, request: Request) -> Response:
        ctx = self.pipeline.begin(self.endpoint, time.perf_counter())
        outcomes = self.pipeline.outcomes
        try:
            principal = await self.pipeline.access.admit(request.headers)
            raw = parse_body(await read_body(request, self.max_body_bytes))
            validate(self.wire_model, raw)
            response = await self.pipeline.run(ctx, raw, request.headers, principal)
        except GatewayError as exc:
            return self._refuse(exc, ctx)
        except ClientDisconnect:
            outcomes.finish(ctx, CLIENT_CLOSED)
            raise
        except asyncio.CancelledError:
            if not ctx.handle.aborted:
                outcomes.finish(ctx, CLIENT_CLOSED)
                raise
            # The drain ended this request (graceful shutdown ran out): answer it instead of dying.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return self._refuse(ShuttingDown("the gateway is shutting down; send the request again"), ctx)
        except Exception:
            # A bug in the gateway. Answered here rather than by Starlette's last-resort handler, which
            # re-raises and makes uvicorn drop the client's kept-alive connection.
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
            return self._refuse(GatewayError("the gateway failed unexpectedly; see its logs"), ctx)
        if response.media_type != "text/event-stream":
            outcomes.finish(ctx, response.status_code)
        return response

    def _refuse(self, error: GatewayError, ctx: RequestContext) -> Response:
        outcomes = self.pipeline.outcomes
        outcomes.finish(ctx, error.status_code)
        return error_response(error, outcomes.headers(ctx) or None)
