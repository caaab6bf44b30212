"""The forward stage: send the request to a backend of the chosen model, and get its answer started.

The least-loaded available backend is tried first; a connect error, or a 502/503 before the first byte,
is retried on another (and a lone backend whose kept-alive connection went stale gets one more try).
``timeouts.total`` bounds a whole non-streaming answer; ``timeouts.first_token`` a stream's first event,
up to which failures may still be retried, since nothing has reached the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from thrifty.server.backends import client
from thrifty.server.backends.pool import Backend, BackendPool
from thrifty.server.config import Limits, Timeouts
from thrifty.server.errors import BackendError
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.request import RequestContext
from thrifty.server.sse import EventSplitter, EventTooLarge

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({502, 503})


@dataclass(slots=True)
class Answer:
    """A whole answer (a non-streaming one, or a stream's refusal): status and body as the backend sent them."""

    backend: Backend
    status: int
    data: bytes


@dataclass(slots=True)
class OpenStream:
    """A stream whose first events are in: the relay takes it from here."""

    backend: Backend
    response: aiohttp.ClientResponse
    events: list[bytes]
    splitter: EventSplitter
    deadline: float  # the loop time by which it must finish (timeouts.total)


class Forwarder:
    def __init__(
        self,
        pool: BackendPool,
        session: aiohttp.ClientSession,
        limits: Limits,
        timeouts: Timeouts,
        metrics: GatewayMetrics,
    ) -> None:
        self.pool = pool
        self.session = session
        self.limits = limits
        self.timeouts = timeouts
        self.metrics = metrics

    async def answer(self, ctx: RequestContext, payload: bytes) -> Answer:
        """Send a non-streaming request and read the whole answer (any status below 500)."""
        deadline = asyncio.get_running_loop().time() + self.timeouts.total
        ctx.overhead = time.perf_counter() - ctx.started
        try:
            async with asyncio.timeout_at(deadline):
                backend, response = await self._open(ctx, payload, [])
                try:
                    data = await response.read()
                except client.TRANSPORT_ERRORS as exc:
                    self.pool.record_failure(backend)
                    raise client.convert(exc, backend, started=True) from exc
                finally:
                    response.release()
        except TimeoutError:
            raise client.no_answer(self.timeouts.total) from None
        if response.status >= 500:
            self.pool.record_failure(backend)
            raise client.failed(backend, response.status, data)
        self.pool.record_success(backend)
        return Answer(backend, response.status, data)

    async def stream(self, ctx: RequestContext, payload: bytes) -> OpenStream | Answer:
        """Send a streaming request and wait for its first events; a refusal below 500 comes back whole."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total
        first_deadline = min(deadline, loop.time() + self.timeouts.first_token)
        ctx.overhead = time.perf_counter() - ctx.started
        tried: list[Backend] = []
        for attempt in range(1 + self.limits.retries):
            try:
                async with asyncio.timeout_at(first_deadline):
                    backend, response = await self._open(ctx, payload, tried)
                    if response.status != 200:
                        data = await response.read()
                        response.release()
                        if response.status >= 500:
                            self.pool.record_failure(backend)
                            raise client.failed(backend, response.status, data)
                        return Answer(backend, response.status, data)
                    splitter = EventSplitter(self.limits.max_sse_event_bytes)
                    try:
                        events = await _first_events(response, splitter)
                    except client.TRANSPORT_ERRORS as exc:
                        response.release()
                        self.pool.record_failure(backend)
                        error = client.convert(exc, backend, started=False)
                        if attempt < self.limits.retries and error.retryable:
                            continue
                        raise error from exc
                    except EventTooLarge:
                        response.release()
                        raise client.oversized(backend, self.limits.max_sse_event_bytes) from None
            except TimeoutError:
                raise client.no_first_token(self.timeouts.first_token) from None
            self.pool.record_success(backend)
            ctx.handle.stream = response  # from here on, a drain ends the stream by closing the response
            ctx.first_token_at = time.perf_counter()
            return OpenStream(backend, response, events, splitter, deadline)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _open(
        self, ctx: RequestContext, payload: bytes, tried: list[Backend]
    ) -> tuple[Backend, aiohttp.ClientResponse]:
        """Send to a backend of the request's model, retrying elsewhere on failures before the first byte.

        ``tried`` collects the backends used so far, across calls for the same request.
        """
        last_error: BackendError | None = None
        model = ctx.model
        for _ in range(1 + self.limits.retries):
            backend = self.pool.pick(model, exclude=tried)
            if backend is None and last_error is not None and last_error.retryable and tried:
                # A lone backend whose kept-alive connection went stale deserves one more try.
                backend = tried[-1] if tried[-1].available and tried.count(tried[-1]) == 1 else None
            if backend is None:
                break
            tried.append(backend)
            backend.breaker.on_attempt()
            ctx.backend = backend.name
            try:
                response = await client.post(self.session, backend, ctx.endpoint.path, payload)
            except BackendError as exc:
                self._failed(backend, type(exc).__name__)
                last_error = exc
                if exc.retryable:
                    continue
                raise
            if response.status in _RETRY_STATUSES:
                text = await _read_error_text(response)
                self._failed(backend, f"status {response.status}")
                last_error = client.busy(backend, response.status, text)
                continue
            return backend, response
        if last_error is not None:
            raise last_error
        raise client.none_healthy(model)

    def _failed(self, backend: Backend, reason: str) -> None:
        # Only the kind of failure is logged: a backend's error text may quote the client's prompt.
        self.pool.record_failure(backend)
        self.metrics.retries.labels(backend.name).inc()
        logger.warning("backend %s failed before answering (%s); trying another", backend.name, reason)


async def _first_events(response: aiohttp.ClientResponse, splitter: EventSplitter) -> list[bytes]:
    """Read until the stream's first event is complete; the events that came with it too."""
    while True:
        data = await response.content.readany()
        if not data:
            raise aiohttp.ServerDisconnectedError("the stream ended before its first event")
        events = splitter.feed(data)
        if events:
            return events


async def _read_error_text(response: aiohttp.ClientResponse) -> str:
    try:
        return client.snippet(await response.read())
    except client.TRANSPORT_ERRORS:
        return "(no body)"
    finally:
        response.release()
