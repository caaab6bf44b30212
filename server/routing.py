"""The route stage: which model answers. A named model must exist; ``auto`` and ``auto:<preset>`` ask
the router, over the models that have a healthy backend."""

from __future__ import annotations

from thrifty.router import InvalidRouting, NoRoute, Router, RoutingDecision, RoutingRequest
from thrifty.server.backends.pool import BackendPool
from thrifty.server.errors import BackendUnavailable, InvalidRequest, ModelNotFound
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.request import RequestContext


class RouteStage:
    def __init__(self, router: Router, pool: BackendPool, metrics: GatewayMetrics) -> None:
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self._served = ", ".join(sorted([*pool.by_model, *router.virtual_models]))

    async def __call__(self, ctx: RequestContext) -> RoutingDecision:
        requested = ctx.body["model"]
        if requested not in self.router.virtual_models:
            if requested not in self.pool.by_model:
                raise ModelNotFound(
                    f"the model '{requested}' does not exist; this gateway serves: {self._served} "
                    "(GET /v1/models lists them)",
                    param="model",
                )
            ctx.route = RoutingDecision(requested, "")
            return ctx.route
        request = RoutingRequest(ctx.endpoint.name, requested, ctx.body, ctx.headers)
        try:
            decision = await self.router.route(request, self.pool.candidates())
        except NoRoute as exc:
            raise BackendUnavailable(f"no backend can serve this request: {exc}") from None
        except InvalidRouting as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        m = self.metrics
        m.routing_decisions.labels(self.router.name, decision.model).inc()
        if "accuracy" in decision.details and "cost" in decision.details:
            m.predicted_accuracy.labels(decision.model).observe(decision.details["accuracy"])
            m.predicted_cost.labels(decision.model).observe(decision.details["cost"])
        ctx.body["model"] = decision.model
        ctx.route = decision
        return decision
