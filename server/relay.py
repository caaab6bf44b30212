"""The relay stage: the backend's answer to the client — a JSON body as it came, or an SSE stream relayed
event by event as it arrives — with its usage read on the way and the request concluded at its end.

A stream that breaks after its first event can no longer become an HTTP error: its end is an SSE error
event (``data: {"error": …}``), which the openai SDK raises as ``APIError``. A client that leaves
mid-stream is counted as 499.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from thrifty.server.backends import client
from thrifty.server.backends.pool import Backend, BackendPool
from thrifty.server.config import Limits, Timeouts
from thrifty.server.errors import BackendError, GatewayError, ShuttingDown, sse_error_event
from thrifty.server.forward import Answer, OpenStream
from thrifty.server.outcome import CLIENT_CLOSED, Outcomes
from thrifty.server.request import RequestContext
from thrifty.server.sse import SEPARATOR, EventTooLarge

logger = logging.getLogger(__name__)

_DONE = b"data: [DONE]"
_FINISH_REASON = re.compile(rb'"finish_reason":"([A-Za-z_]+)"')

Conclude = Callable[[RequestContext], Awaitable[None]]


class Relay:
    def __init__(
        self, pool: BackendPool, outcomes: Outcomes, conclude: Conclude, limits: Limits, timeouts: Timeouts
    ) -> None:
        self.pool = pool
        self.outcomes = outcomes
        self.conclude = conclude
        self.limits = limits
        self.timeouts = timeouts

    async def answer(self, ctx: RequestContext, answer: Answer) -> Response:
        """A whole answer: a 200 is read for usage and concludes the request; a 4xx (also a stream's refusal)
        passes through as it is."""
        received = time.perf_counter()
        if answer.status == 200:
            try:
                body = orjson.loads(answer.data)
                ctx.usage.read(body.get("usage"))
            except (orjson.JSONDecodeError, AttributeError):
                raise client.not_json(answer.backend) from None
            choices = body.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                ctx.usage.finish_reason = choices[0].get("finish_reason")
            await self.conclude(ctx)
        ctx.overhead += time.perf_counter() - received
        # Backend 4xx answers (a prompt too long for the model, say) reach the client as they are.
        return Response(
            answer.data, status_code=answer.status, headers=self.outcomes.headers(ctx), media_type="application/json"
        )

    def stream(self, ctx: RequestContext, stream: OpenStream, strip_usage: bool) -> Response:
        headers = self.outcomes.headers(ctx)
        headers["cache-control"] = "no-cache"
        return StreamingResponse(
            self._events(ctx, stream, strip_usage), headers=headers, media_type="text/event-stream"
        )

    async def _events(self, ctx: RequestContext, stream: OpenStream, strip_usage: bool) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        idle, response, events = self.timeouts.idle, stream.response, stream.events
        status = CLIENT_CLOSED  # until the stream ends one way or another, the client may leave
        try:
            # Events that arrived together leave together: one write per read from the backend, not
            # one per event. Nothing waits to be batched, so a token is never held back.
            while True:
                out = []
                done = False
                for event in events:
                    if event.startswith(_DONE):
                        out.append(event + SEPARATOR)
                        done = True
                        break
                    if b'"usage"' in event and not _usage_event(event, ctx, strip_usage):
                        continue
                    if b'"finish_reason":"' in event:
                        match = _FINISH_REASON.search(event)
                        ctx.usage.finish_reason = match.group(1).decode() if match else None
                    out.append(event + SEPARATOR)
                if out:
                    yield b"".join(out)
                if done:
                    await self.conclude(ctx)
                    status = 200
                    return
                try:
                    async with asyncio.timeout_at(min(stream.deadline, loop.time() + idle)):
                        data = await response.content.readany()
                    if not data:
                        raise client.ended_early(stream.backend)
                    events = stream.splitter.feed(data)
                except (*client.TRANSPORT_ERRORS, EventTooLarge, BackendError) as exc:
                    error = self._failure(ctx, stream, exc)
                    status = error.status_code
                    logger.warning("stream from backend %s failed: %s", stream.backend.name, error.message)
                    yield sse_error_event(error)
                    return
        finally:
            response.release()
            self.outcomes.finish(ctx, status)

    def _failure(self, ctx: RequestContext, stream: OpenStream, exc: BaseException) -> GatewayError:
        """What a stream that broke after its first event tells the client."""
        backend: Backend = stream.backend
        if ctx.handle.aborted:
            return ShuttingDown("the gateway is shutting down; the stream was ended")
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, EventTooLarge):
            return client.oversized(backend, self.limits.max_sse_event_bytes)
        if isinstance(exc, TimeoutError):
            if asyncio.get_running_loop().time() >= stream.deadline:
                return client.unfinished(self.timeouts.total)
            self.pool.record_failure(backend)
            return client.idle(backend, self.timeouts.idle)
        self.pool.record_failure(backend)
        return client.convert(exc, backend, started=True)


def _usage_event(event: bytes, ctx: RequestContext, strip_usage: bool) -> bool:
    """Read a usage event's tokens; False when the event should not reach the client."""
    try:
        data: Any = orjson.loads(event.partition(b"data:")[2])
    except orjson.JSONDecodeError:
        return True
    if not isinstance(data, dict):
        return True
    ctx.usage.read(data.get("usage"))
    return not (strip_usage and not data.get("choices"))
