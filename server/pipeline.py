"""The request path shared by the completion endpoints.

    client ─► [key + limits] ─► [validate] ─► [Router] ─► [Session] ─► [Budgeter] ─► [Forward + retry] ─► backend
                                               model      history,     thinking      pick backend,
                                                          budget B     budget        breaker, timeouts
          ◄── response / SSE stream (usage counted, errors as SSE events) ◄── [Conclude: record turn, charge key]

``Pipeline.run`` takes a validated request and returns a Starlette response. Metrics for a request are
recorded exactly once, in ``RequestOutcome.finish``, when the last byte has been sent (or the request failed).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson
from starlette.responses import Response, StreamingResponse

from thrifty.budgeter import Budgeter, BudgetRequest
from thrifty.router import AUTO, InvalidRouting, NoRoute, Router, RoutingDecision, RoutingRequest
from thrifty.server.access import AccessControl, Principal
from thrifty.server.backends import client
from thrifty.server.backends.pool import Backend, BackendPool
from thrifty.server.config import GatewayConfig
from thrifty.server.drain import Drain, InFlight
from thrifty.server.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    ShuttingDown,
    sse_error_event,
)
from thrifty.server.metrics import NO_BACKEND, NO_MODEL, GatewayMetrics
from thrifty.server.sessions.manager import UNAVAILABLE, UNRECORDED, SessionContext, SessionManager
from thrifty.server.sessions.model import Session, Turn
from thrifty.server.sse import SEPARATOR, EventSplitter, EventTooLarge

logger = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions"]
AUTO_MODEL = AUTO
_PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_RETRY_STATUSES = frozenset({502, 503})
_DONE = b"data: [DONE]"
# The client went away before the end (nginx's code): counted apart from requests answered in full.
CLIENT_CLOSED = 499
_FINISH_REASON = re.compile(rb'"finish_reason":"([A-Za-z_]+)"')


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    extra = error.headers()
    if headers:
        extra.update(headers)
    return Response(error.json(), status_code=error.status_code, headers=extra, media_type="application/json")


@dataclass(slots=True)
class RequestOutcome:
    """Bookkeeping for one request; ``finish`` records its metrics once."""

    metrics: GatewayMetrics
    started: float
    drain: Drain
    handle: InFlight
    model: str = NO_MODEL
    backend: str = NO_BACKEND
    overhead: float = 0.0
    first_token_at: float | None = None
    finished: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None
    session: SessionContext | None = None
    thinking_budget: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    routing: dict[str, float] | None = None  # the router's predictions behind its choice

    def count_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        tokens = self.metrics.tokens
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            tokens.labels(self.model, "prompt").inc(prompt)
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            tokens.labels(self.model, "completion").inc(completion)
            self.completion_tokens = completion
        details = usage.get("completion_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
            tokens.labels(self.model, "reasoning").inc(details["reasoning_tokens"])
            self.reasoning_tokens = details["reasoning_tokens"]

    def turn(self) -> Turn:
        return Turn(
            model=self.model,
            thinking_budget=self.thinking_budget,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            reasoning_tokens=self.reasoning_tokens,
            latency_s=round(time.perf_counter() - self.started, 6),
            finish_reason=self.finish_reason,
            at=time.time(),
            routing=self.routing,
        )

    def finish(self, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        self.drain.leave(self.handle)
        m = self.metrics
        m.in_flight.dec()
        m.requests.labels(self.model, self.backend, str(status)).inc()
        m.request_duration.labels(self.model, self.backend).observe(time.perf_counter() - self.started)
        m.overhead.observe(self.overhead)
        if self.first_token_at is not None:
            m.time_to_first_token.labels(self.model, self.backend).observe(self.first_token_at - self.started)


class Pipeline:
    """Route, budget and forward completion requests."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: BackendPool,
        router: Router,
        budgeter: Budgeter,
        session: aiohttp.ClientSession,
        metrics: GatewayMetrics,
        sessions: SessionManager,
        access: AccessControl,
        drain: Drain,
    ) -> None:
        self.config = config
        self.pool = pool
        self.router = router
        self.budgeter = budgeter
        self.session = session
        self.metrics = metrics
        self.sessions = sessions
        self.access = access
        self.drain = drain
        self._timeouts = config.timeouts
        self._models_hint = ", ".join(sorted([*pool.by_model, *router.virtual_models]))

    def begin(self, started: float) -> RequestOutcome:
        """Count the request as in flight; the returned outcome must be finished exactly once."""
        self.metrics.in_flight.inc()
        return RequestOutcome(self.metrics, started, self.drain, self.drain.enter())

    async def run(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        headers: Mapping[str, str],
        outcome: RequestOutcome,
        principal: Principal,
    ) -> Response:
        """Serve one validated request. Raises GatewayError before anything is sent to the client."""
        outcome.principal = principal
        body = dict(body)
        extension = body.pop("thrifty", None) or {}  # the gateway's own field never reaches backends
        decision = await self._route(endpoint, body, headers)
        # After routing, so that a request for an unknown model touches no session.
        context = await self.sessions.begin(
            principal.name,
            principal.max_sessions,
            headers,
            body,
            extension.get("budget"),
            new=bool(extension.get("new_session")),
        )
        outcome.session = context
        if context is not None:
            view = context.session
            outcome.headers["x-thrifty-session"] = context.id
            if context.degraded:
                outcome.headers["x-thrifty-session-state"] = UNAVAILABLE
        else:
            view = self.sessions.on_its_own(extension.get("budget"))
        outcome.model = decision.model
        outcome.headers["x-thrifty-model"] = decision.model
        if decision.policy:
            outcome.headers["x-thrifty-routing-policy"] = decision.policy
        if decision.details:
            outcome.routing = {key: float(value) for key, value in decision.details.items()}
            for key, value in decision.details.items():
                outcome.headers[f"x-thrifty-routing-{key}"] = f"{value:.6g}"
        body["model"] = decision.model
        if endpoint == "chat":
            await self._apply_budget(decision.model, body, outcome, view)
        stream = bool(body.get("stream"))
        strip_usage = False
        if stream:
            options = body.get("stream_options") or {}
            if not options.get("include_usage"):
                # Ask for usage anyway so token metrics cover every stream; the client never sees it.
                body["stream_options"] = {**options, "include_usage": True}
                strip_usage = True
        payload = orjson.dumps(body)
        if stream:
            return await self._stream(endpoint, decision.model, payload, outcome, strip_usage)
        return await self._complete(endpoint, decision.model, payload, outcome)

    # -- stages ---------------------------------------------------------------------------------

    async def _route(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str]) -> RoutingDecision:
        requested = body["model"]
        if requested not in self.router.virtual_models:
            if requested not in self.pool.by_model:
                raise ModelNotFound(
                    f"the model '{requested}' does not exist; this gateway serves: {self._models_hint} "
                    "(GET /v1/models lists them)",
                    param="model",
                )
            return RoutingDecision(requested, "")
        try:
            decision = await self.router.route(
                RoutingRequest(endpoint, requested, body, headers), self.pool.candidates()
            )
        except NoRoute as exc:
            raise BackendUnavailable(f"no backend can serve this request: {exc}") from None
        except InvalidRouting as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        m = self.metrics
        m.routing_decisions.labels(self.router.name, decision.model).inc()
        if "accuracy" in decision.details and "cost" in decision.details:
            m.predicted_accuracy.labels(decision.model).observe(decision.details["accuracy"])
            m.predicted_cost.labels(decision.model).observe(decision.details["cost"])
        return decision

    async def _apply_budget(
        self, model: str, body: dict[str, Any], outcome: RequestOutcome, session: Session | None
    ) -> None:
        backend = self.pool.by_model[model][0].config
        if not backend.reasoning:
            return  # the budget stage is a no-op for models that do not think
        if body.get("thinking_token_budget") is not None:
            budget: int | None = body["thinking_token_budget"]  # the client's own choice wins
            policy = "client"
        else:
            budget = await self.budgeter.assign(BudgetRequest(model, body, session))
            policy = self.budgeter.name
        if budget is None:
            return
        body["thinking_token_budget"] = budget
        # The answer allowance is what the client asked for, else the configured default.
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        allowance = body.get(key) or self.config.limits.answer_tokens
        body[key] = budget + allowance
        outcome.thinking_budget = budget
        outcome.headers["x-thrifty-thinking-budget"] = str(budget)
        self.metrics.thinking_budget.labels(policy, model).observe(budget)

    async def _open(
        self, endpoint: Endpoint, model: str, payload: bytes, outcome: RequestOutcome, tried: list[Backend]
    ) -> tuple[Backend, aiohttp.ClientResponse]:
        """Send to a backend of ``model``, retrying elsewhere on failures before the first byte.

        ``tried`` collects the backends used so far, across calls for the same request.
        """
        last_error: BackendError | None = None
        path = _PATHS[endpoint]
        for _ in range(1 + self.config.limits.retries):
            backend = self.pool.pick(model, exclude=tried)
            if backend is None and last_error is not None and last_error.retryable and tried:
                # A lone backend whose kept-alive connection went stale deserves one more try.
                backend = tried[-1] if tried[-1].available and tried.count(tried[-1]) == 1 else None
            if backend is None:
                break
            tried.append(backend)
            backend.breaker.on_attempt()
            outcome.backend = backend.name
            try:
                response = await client.post(self.session, backend, path, payload)
            except BackendError as exc:
                self._failed(backend, type(exc).__name__)
                last_error = exc
                if exc.retryable:
                    continue
                raise
            if response.status in _RETRY_STATUSES:
                text = await _read_error_text(response)
                self._failed(backend, f"status {response.status}")
                last_error = BackendUnavailable(
                    f"backend '{backend.name}' answered {response.status}: {text}", retryable=True
                )
                continue
            return backend, response
        if last_error is not None:
            raise last_error
        raise BackendUnavailable(f"no healthy backend serves the model '{model}'")

    def _failed(self, backend: Backend, reason: str) -> None:
        # Only the kind of failure is logged: a backend's error text may quote the client's prompt.
        self.pool.record_failure(backend)
        self.metrics.retries.labels(backend.name).inc()
        logger.warning("backend %s failed before answering (%s); trying another", backend.name, reason)

    async def _complete(self, endpoint: Endpoint, model: str, payload: bytes, outcome: RequestOutcome) -> Response:
        deadline = asyncio.get_running_loop().time() + self._timeouts.total
        dispatched = time.perf_counter()
        outcome.overhead = dispatched - outcome.started
        try:
            async with asyncio.timeout_at(deadline):
                backend, response = await self._open(endpoint, model, payload, outcome, [])
                try:
                    data = await response.read()
                except client.TRANSPORT_ERRORS as exc:
                    self.pool.record_failure(backend)
                    raise client.convert(exc, backend, started=True) from exc
                finally:
                    response.release()
        except TimeoutError:
            raise BackendTimeout(f"the backend did not answer within {self._timeouts.total:g} s") from None
        received = time.perf_counter()
        status = response.status
        if status >= 500:
            self.pool.record_failure(backend)
            raise BackendError(f"backend '{backend.name}' failed with status {status}: {_snippet(data)}")
        self.pool.record_success(backend)
        if status == 200:
            try:
                answer = orjson.loads(data)
                outcome.count_usage(answer.get("usage"))
            except (orjson.JSONDecodeError, AttributeError):
                raise BackendError(f"backend '{backend.name}' sent a response that is not a JSON object") from None
            choices = answer.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                outcome.finish_reason = choices[0].get("finish_reason")
            await self._conclude(outcome)
        headers = outcome.headers
        headers["x-thrifty-backend"] = backend.name
        outcome.overhead += time.perf_counter() - received
        headers["x-thrifty-overhead-ms"] = f"{outcome.overhead * 1000:.3f}"
        # Backend 4xx answers (a prompt too long for the model, say) reach the client as they are.
        return Response(data, status_code=status, headers=headers, media_type="application/json")

    async def _stream(
        self, endpoint: Endpoint, model: str, payload: bytes, outcome: RequestOutcome, strip_usage: bool
    ) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeouts.total
        first_deadline = min(deadline, loop.time() + self._timeouts.first_token)
        outcome.overhead = time.perf_counter() - outcome.started
        # Up to the first event nothing has reached the client, so failures may still be retried.
        tried: list[Backend] = []
        for attempt in range(1 + self.config.limits.retries):
            try:
                async with asyncio.timeout_at(first_deadline):
                    backend, response = await self._open(endpoint, model, payload, outcome, tried)
                    if response.status != 200:
                        data = await response.read()
                        response.release()
                        if response.status >= 500:
                            self.pool.record_failure(backend)
                            raise BackendError(
                                f"backend '{backend.name}' failed with status {response.status}: {_snippet(data)}"
                            )
                        outcome.headers["x-thrifty-backend"] = backend.name
                        return Response(
                            data, status_code=response.status, headers=outcome.headers, media_type="application/json"
                        )
                    splitter = EventSplitter(self.config.limits.max_sse_event_bytes)
                    try:
                        events = await _first_events(response, splitter)
                    except client.TRANSPORT_ERRORS as exc:
                        response.release()
                        self.pool.record_failure(backend)
                        error = client.convert(exc, backend, started=False)
                        if attempt < self.config.limits.retries and error.retryable:
                            continue
                        raise error from exc
                    except EventTooLarge as exc:
                        response.release()
                        raise self._oversized(backend, exc) from None
            except TimeoutError:
                raise BackendTimeout(
                    f"the backend sent no first token within {self._timeouts.first_token:g} s"
                ) from None
            break
        self.pool.record_success(backend)
        outcome.handle.stream = response  # from here on, a drain ends the stream by closing the response
        outcome.first_token_at = time.perf_counter()
        headers = outcome.headers
        headers["x-thrifty-backend"] = backend.name
        headers["x-thrifty-overhead-ms"] = f"{outcome.overhead * 1000:.3f}"
        headers["cache-control"] = "no-cache"
        return StreamingResponse(
            self._relay(backend, response, events, splitter, outcome, strip_usage, deadline),
            headers=headers,
            media_type="text/event-stream",
        )

    def _oversized(self, backend: Backend, exc: EventTooLarge) -> BackendError:
        return BackendError(
            f"backend '{backend.name}' sent a stream event larger than limits.max_sse_event_bytes "
            f"({self.config.limits.max_sse_event_bytes:,} bytes)",
            code="event_too_large",
        )

    async def _relay(
        self,
        backend: Backend,
        response: aiohttp.ClientResponse,
        events: list[bytes],
        splitter: EventSplitter,
        outcome: RequestOutcome,
        strip_usage: bool,
        deadline: float,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        idle = self._timeouts.idle
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
                    if b'"usage"' in event and not self._usage_event(event, outcome, strip_usage):
                        continue
                    if b'"finish_reason":"' in event:
                        match = _FINISH_REASON.search(event)
                        outcome.finish_reason = match.group(1).decode() if match else None
                    out.append(event + SEPARATOR)
                if out:
                    yield b"".join(out)
                if done:
                    await self._conclude(outcome)
                    status = 200
                    return
                try:
                    async with asyncio.timeout_at(min(deadline, loop.time() + idle)):
                        data = await response.content.readany()
                    if not data:
                        # The backend ended the body cleanly but without [DONE]: tell the client it was cut.
                        raise BackendError(f"backend '{backend.name}' ended the stream early")
                    events = splitter.feed(data)
                except (*client.TRANSPORT_ERRORS, EventTooLarge, BackendError) as exc:
                    error = self._stream_failure(backend, exc, outcome, deadline)
                    status = error.status_code
                    logger.warning("stream from backend %s failed: %s", backend.name, error.message)
                    yield sse_error_event(error)
                    return
        finally:
            response.release()
            outcome.finish(status)

    def _stream_failure(
        self, backend: Backend, exc: BaseException, outcome: RequestOutcome, deadline: float
    ) -> GatewayError:
        """What a stream that broke after its first event tells the client."""
        if outcome.handle.aborted:
            return ShuttingDown("the gateway is shutting down; the stream was ended")
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, EventTooLarge):
            return self._oversized(backend, exc)
        if isinstance(exc, TimeoutError):
            if asyncio.get_running_loop().time() >= deadline:
                return BackendTimeout(f"the stream did not finish within {self._timeouts.total:g} s")
            self.pool.record_failure(backend)
            return BackendTimeout(
                f"backend '{backend.name}' sent nothing for {self._timeouts.idle:g} s (timeouts.idle)",
                code="backend_idle",
            )
        self.pool.record_failure(backend)
        return client.convert(exc, backend, started=True)

    async def _conclude(self, outcome: RequestOutcome) -> None:
        """A request answered in full: record its turn and charge its tokens to the caller's key."""
        context = outcome.session
        if context is not None and not await self.sessions.record(context, outcome.turn()) and not context.degraded:
            outcome.headers["x-thrifty-session-state"] = UNRECORDED  # seen where the response has not begun
        if outcome.principal is not None:
            await self.access.spend(outcome.principal, outcome.prompt_tokens + outcome.completion_tokens)

    def _usage_event(self, event: bytes, outcome: RequestOutcome, strip_usage: bool) -> bool:
        """Count a usage event's tokens; False when the event should not reach the client."""
        try:
            data = orjson.loads(event.partition(b"data:")[2])
        except orjson.JSONDecodeError:
            return True
        if not isinstance(data, dict):
            return True
        outcome.count_usage(data.get("usage"))
        return not (strip_usage and not data.get("choices"))


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
        return _snippet(await response.read())
    except client.TRANSPORT_ERRORS:
        return "(no body)"
    finally:
        response.release()


def _snippet(data: bytes, limit: int = 300) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"
