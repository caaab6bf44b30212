"""What a request leaves behind: its response headers and its metrics, each derived once from its context."""

from __future__ import annotations

import time

from thrifty.server.drain import Drain
from thrifty.server.metrics import NO_BACKEND, GatewayMetrics
from thrifty.server.request import Endpoint, RequestContext
from thrifty.server.sessions.manager import UNAVAILABLE, UNRECORDED

# The client went away before the end (nginx's code): counted apart from requests answered in full.
CLIENT_CLOSED = 499


class Outcomes:
    def __init__(self, metrics: GatewayMetrics, drain: Drain) -> None:
        self.metrics = metrics
        self.drain = drain

    def begin(self, endpoint: Endpoint, started: float) -> RequestContext:
        """A request arrived: in flight, and known to the drain. It must be :meth:`finish`\\ ed once."""
        self.metrics.in_flight.inc()
        return RequestContext(endpoint, started, self.drain.enter())

    def headers(self, ctx: RequestContext) -> dict[str, str]:
        """The ``x-thrifty-*`` headers of the response, from what the stages decided."""
        out: dict[str, str] = {}
        route = ctx.route
        if route is not None:
            out["x-thrifty-model"] = route.model
            if route.policy:
                out["x-thrifty-routing-policy"] = route.policy
            for key, value in route.details.items():
                out[f"x-thrifty-routing-{key}"] = f"{value:.6g}"
        session = ctx.session
        if session is not None:
            out["x-thrifty-session"] = session.id
            if session.degraded:
                out["x-thrifty-session-state"] = UNAVAILABLE
            elif ctx.unrecorded:
                out["x-thrifty-session-state"] = UNRECORDED
        if ctx.budget is not None:
            out["x-thrifty-thinking-budget"] = str(ctx.budget)
        if ctx.budget_policy is not None:
            out["x-thrifty-budget-policy"] = ctx.budget_policy
        if ctx.backend != NO_BACKEND:
            out["x-thrifty-backend"] = ctx.backend
            out["x-thrifty-overhead-ms"] = f"{ctx.overhead * 1000:.3f}"
        return out

    def finish(self, ctx: RequestContext, status: int) -> None:
        """Record the request's metrics (once, whatever happens after)."""
        if ctx.finished:
            return
        ctx.finished = True
        self.drain.leave(ctx.handle)
        m = self.metrics
        model, backend = ctx.model, ctx.backend
        m.in_flight.dec()
        m.requests.labels(model, backend, str(status)).inc()
        m.request_duration.labels(model, backend).observe(time.perf_counter() - ctx.started)
        m.overhead.observe(ctx.overhead)
        if ctx.first_token_at is not None:
            m.time_to_first_token.labels(model, backend).observe(ctx.first_token_at - ctx.started)
        usage = ctx.usage
        if usage.reported:
            m.tokens.labels(model, "prompt").inc(usage.prompt)
            m.tokens.labels(model, "completion").inc(usage.completion)
            if usage.reasoning is not None:
                m.tokens.labels(model, "reasoning").inc(usage.reasoning)
