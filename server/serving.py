"""The HTTP side of the completion endpoints: read the body, validate, run the pipeline, map errors."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from thrifty.server.errors import BodyTooLarge, GatewayError, InvalidRequest, ShuttingDown
from thrifty.server.metrics import NO_BACKEND
from thrifty.server.pipeline import CLIENT_CLOSED, Endpoint, Pipeline, RequestOutcome, error_response
from thrifty.server.protocol import CompletionFields, parse_body, validate

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
        outcome = self.pipeline.begin(time.perf_counter())
        try:
            principal = await self.pipeline.access.admit(request.headers)
            raw = parse_body(await read_body(request, self.max_body_bytes))
            validate(self.wire_model, raw)
            response = await self.pipeline.run(self.endpoint, raw, request.headers, outcome, principal)
        except GatewayError as exc:
            return self._refuse(exc, outcome)
        except ClientDisconnect:
            outcome.finish(CLIENT_CLOSED)
            raise
        except asyncio.CancelledError:
            if not outcome.handle.aborted:
                outcome.finish(CLIENT_CLOSED)
                raise
            # The drain ended this request (graceful shutdown ran out): answer it instead of dying.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return self._refuse(ShuttingDown("the gateway is shutting down; send the request again"), outcome)
        except Exception:
            # A bug in the gateway. Answered here rather than by Starlette's last-resort handler, which
            # re-raises and makes uvicorn drop the client's kept-alive connection.
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
            return self._refuse(GatewayError("the gateway failed unexpectedly; see its logs"), outcome)
        if response.media_type != "text/event-stream":
            outcome.finish(response.status_code)
        return response

    @staticmethod
    def _refuse(error: GatewayError, outcome: RequestOutcome) -> Response:
        outcome.finish(error.status_code)
        headers = outcome.headers
        if outcome.backend != NO_BACKEND:
            headers["x-thrifty-backend"] = outcome.backend
            headers["x-thrifty-overhead-ms"] = f"{outcome.overhead * 1000:.3f}"
        return error_response(error, headers or None)
