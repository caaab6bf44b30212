"""The budget stage: how many thinking tokens the turn may use, where a budget can apply.

It applies when the endpoint's requests carry a thinking budget and the chosen model's backends think
(``reasoning: true``); otherwise it does nothing. A ``thinking_token_budget`` the client sent wins over
everything; then OpenAI's ``reasoning_effort`` (none, minimal, low, medium, high: a level that far up
the budgeter's levels, within what is left of the problem's budget); then the policy, which sees the
session and the problem's plan (``thrifty.plan``, this request's or the one its session keeps). The
decision (budget, policy, what the policy wants recorded) goes to the session's turn, the
``x-thrifty-thinking-budget`` and ``x-thrifty-budget-policy`` headers and the metrics. The budget
reaches vLLM as ``thinking_token_budget``, and the token limit becomes budget + answer allowance (the
client's own ``max_tokens``/``max_completion_tokens``, else ``limits.answer_tokens``).
"""

from __future__ import annotations

import time

from thrifty.budgeter import BudgetDecision, Budgeter, BudgetRequest
from thrifty.server.backends.pool import BackendPool
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.request import RequestContext


class BudgetStage:
    def __init__(self, budgeter: Budgeter, pool: BackendPool, answer_tokens: int, metrics: GatewayMetrics) -> None:
        self.budgeter = budgeter
        self.pool = pool
        self.answer_tokens = answer_tokens
        self.metrics = metrics

    def applies(self, ctx: RequestContext) -> bool:
        return ctx.endpoint.thinking and self.pool.by_model[ctx.model][0].config.reasoning

    async def __call__(self, ctx: RequestContext) -> None:
        if not self.applies(ctx):
            return
        body = ctx.body
        effort = body.pop("reasoning_effort", None)  # turned into a thinking budget here, not forwarded
        if body.get("thinking_token_budget") is not None:
            decision = BudgetDecision(int(body["thinking_token_budget"]), "client")
        elif effort is not None:
            remaining = ctx.problem.remaining if ctx.problem is not None else None
            wanted = self.budgeter.effort_budget(effort)
            decision = BudgetDecision(
                wanted if remaining is None else min(wanted, remaining), "reasoning_effort", {"effort": effort}
            )
        else:
            plan = ctx.extension.get("plan") or (ctx.problem.plan if ctx.problem is not None else None)
            started = time.perf_counter()
            decision = await self.budgeter.assign_decision(
                BudgetRequest(ctx.model, body, ctx.problem, tuple(plan) if plan else None)
            )
            self.metrics.budget_decision.labels(decision.policy).observe(time.perf_counter() - started)
        ctx.budget_policy, ctx.budget_detail = decision.policy, decision.detail
        if decision.budget is None:
            return
        budget: int = decision.budget
        body["thinking_token_budget"] = budget
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        body[key] = budget + (body.get(key) or self.answer_tokens)
        ctx.budget = budget
        self.metrics.thinking_budget.labels(decision.policy, ctx.model).observe(budget)
