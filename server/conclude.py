"""The conclude stage: a request answered in full records its turn in its session and charges its tokens
to the caller's key."""

from __future__ import annotations

import time

from thrifty.server.access import AccessControl
from thrifty.server.request import RequestContext
from thrifty.server.sessions.manager import SessionManager
from thrifty.server.sessions.model import Turn


class Conclusion:
    def __init__(self, sessions: SessionManager, access: AccessControl) -> None:
        self.sessions = sessions
        self.access = access

    async def __call__(self, ctx: RequestContext) -> None:
        usage = ctx.usage
        session = ctx.session
        if session is not None:
            route = ctx.route
            turn = Turn(
                model=ctx.model,
                thinking_budget=ctx.budget,
                prompt_tokens=usage.prompt,
                completion_tokens=usage.completion,
                reasoning_tokens=usage.reasoning or 0,
                latency_s=round(time.perf_counter() - ctx.started, 6),
                finish_reason=usage.finish_reason,
                at=time.time(),
                routing={k: float(v) for k, v in route.details.items()} if route and route.details else None,
                budgeting=None
                if ctx.budget_policy is None
                else {"policy": ctx.budget_policy, "budget": ctx.budget, **(ctx.budget_detail or {})},
            )
            ctx.unrecorded = not await self.sessions.record(session, turn) and not session.degraded
        if ctx.principal is not None:
            await self.access.spend(ctx.principal, usage.prompt + usage.completion)
