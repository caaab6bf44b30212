"""The budget stage: how many thinking tokens the turn may use, where a budget can apply.

It applies when the endpoint's requests carry a thinking budget and the chosen model's backends think
(``reasoning: true``); otherwise it does nothing. A ``thinking_token_budget`` the client sent wins over
the policy. The budget reaches vLLM as ``thinking_token_budget``, and the token limit becomes
budget + answer allowance (the client's own ``max_tokens``/``max_completion_tokens``, else
``limits.answer_tokens``).
"""

from __future__ import annotations

from thrifty.budgeter import Budgeter, BudgetRequest
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
        if body.get("thinking_token_budget") is not None:
            budget: int | None = body["thinking_token_budget"]
            policy = "client"
        else:
            budget = await self.budgeter.assign(BudgetRequest(ctx.model, body, ctx.problem))
            policy = self.budgeter.name
        if budget is None:
            return
        body["thinking_token_budget"] = budget
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        body[key] = budget + (body.get(key) or self.answer_tokens)
        ctx.budget = budget
        self.metrics.thinking_budget.labels(policy, ctx.model).observe(budget)
