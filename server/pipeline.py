"""The request path of the completion endpoints, stage by stage, over one :class:`RequestContext`.

    client ─► access ─► [body: parse, validate] ─► session ─► route ─► budget ─► forward ─► relay ─► conclude
              key,       400/413                   history,    model    thinking   backend,    JSON or    turn
              limits                               budget B             budget     retries     SSE        recorded

Each stage is an object with one job in a module of its own (see ``docs/ARCHITECTURE.md``); this module
only runs them in order. Headers and metrics come from the context at the end (:mod:`outcome`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from thrifty.server.access import AccessControl, Principal
from thrifty.server.budgeting import BudgetStage
from thrifty.server.conclude import Conclusion
from thrifty.server.forward import Answer, Forwarder
from thrifty.server.outcome import Outcomes
from thrifty.server.relay import Relay
from thrifty.server.request import Endpoint, RequestContext
from thrifty.server.routing import RouteStage
from thrifty.server.sessions.manager import SessionManager


class Pipeline:
    def __init__(
        self,
        access: AccessControl,
        sessions: SessionManager,
        route: RouteStage,
        budget: BudgetStage,
        forward: Forwarder,
        relay: Relay,
        conclude: Conclusion,
        outcomes: Outcomes,
    ) -> None:
        self.access = access
        self.sessions = sessions
        self.route = route
        self.budget = budget
        self.forward = forward
        self.relay = relay
        self.conclude = conclude
        self.outcomes = outcomes

    def begin(self, endpoint: Endpoint, started: float) -> RequestContext:
        return self.outcomes.begin(endpoint, started)

    async def run(
        self, ctx: RequestContext, body: dict[str, Any], headers: Mapping[str, str], principal: Principal
    ) -> Response:
        """Serve one validated request. Raises GatewayError before anything is sent to the client."""
        ctx.principal, ctx.headers = principal, headers
        ctx.body = body = dict(body)
        ctx.extension = extension = body.pop("thrifty", None) or {}  # the gateway's own field stays here
        ctx.session = await self.sessions.begin(
            principal.name,
            principal.max_sessions,
            headers,
            body,
            extension.get("budget"),
            new=bool(extension.get("new_session")),
            plan=tuple(extension["plan"]) if extension.get("plan") else None,
        )
        ctx.problem = (
            ctx.session.session if ctx.session is not None else self.sessions.on_its_own(extension.get("budget"))
        )
        await self.route(ctx)
        await self.budget(ctx)
        if not body.get("stream"):
            return await self.relay.answer(ctx, await self.forward.answer(ctx, orjson.dumps(body)))
        options = body.get("stream_options") or {}
        # Usage is always asked for, so token metrics cover every stream; the client sees it only if it asked.
        strip_usage = not options.get("include_usage")
        if strip_usage:
            body["stream_options"] = {**options, "include_usage": True}
        opened = await self.forward.stream(ctx, orjson.dumps(body))
        if isinstance(opened, Answer):  # refused before it began (a prompt too long, say)
            return await self.relay.answer(ctx, opened)
        return self.relay.stream(ctx, opened, strip_usage)
