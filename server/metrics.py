"""Prometheus metrics: every metric the gateway exports is defined here.

Labels come from a fixed small set — model and backend names from the config, status codes, policy
names — never from a client's input. With several uvicorn workers, ``thrifty serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start; each worker then writes its
samples there and ``/metrics`` aggregates all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from thrifty.server.config import ENV_PROMETHEUS_MULTIPROC_DIR

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
_ACCURACY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_COST_BUCKETS = (1e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 0.1)
_BUDGET_BUCKETS = (0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

# The request path's stages that may be backed by an artifact (reloadable).
STAGES = ("router", "budgeter")
# Labels used when a request fails before a model or backend is known.
NO_MODEL = "none"
NO_BACKEND = "none"


class GatewayMetrics:
    """The gateway's metrics, registered on a registry of their own (one per app, so tests can build many)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(ENV_PROMETHEUS_MULTIPROC_DIR))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "thrifty_requests_total",
            "Requests answered, by model, backend and HTTP status.",
            ["model", "backend", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "thrifty_request_duration_seconds",
            "Time from request arrival to the last byte sent.",
            ["model", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "thrifty_time_to_first_token_seconds",
            "Time from request arrival to the first streamed event.",
            ["model", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "thrifty_gateway_overhead_seconds",
            "Time the gateway itself spends on a request (everything except waiting on the backend).",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "thrifty_tokens_total",
            "Tokens by kind (prompt, completion, reasoning).",
            ["model", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "thrifty_requests_in_flight",
            "Requests being served now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.backend_up = Gauge(
            "thrifty_backend_up",
            "1 when the backend passes health checks and its breaker is closed.",
            ["backend"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.routing_decisions = Counter(
            "thrifty_routing_decisions_total",
            "Routing decisions, by policy and chosen model.",
            ["policy", "model"],
            registry=r,
        )
        self.predicted_accuracy = Histogram(
            "thrifty_routing_predicted_accuracy",
            "A learned router's predicted accuracy of the model it chose, by model.",
            ["model"],
            buckets=_ACCURACY_BUCKETS,
            registry=r,
        )
        self.predicted_cost = Histogram(
            "thrifty_routing_predicted_cost_usd",
            "A learned router's predicted cost (USD) of the request on the model it chose, by model.",
            ["model"],
            buckets=_COST_BUCKETS,
            registry=r,
        )
        self.reloads = {
            stage: Counter(
                f"thrifty_{stage}_reloads_total",
                f"Reloads of the {stage}'s artifact, by outcome (ok, failed).",
                ["outcome"],
                registry=r,
            )
            for stage in STAGES
        }
        self.thinking_budget = Histogram(
            "thrifty_thinking_budget_tokens",
            "Thinking budgets assigned, by policy and model.",
            ["policy", "model"],
            buckets=_BUDGET_BUCKETS,
            registry=r,
        )
        self.budget_decision = Histogram(
            "thrifty_budget_decision_seconds",
            "Time the budgeter took to choose a turn's thinking budget, by policy.",
            ["policy"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "thrifty_backend_retries_total",
            "Requests retried on another backend, by the backend that failed.",
            ["backend"],
            registry=r,
        )

        self.auth_failures = Counter(
            "thrifty_auth_failures_total", "Requests refused for a missing or unknown API key.", registry=r
        )
        self.rate_limited = Counter(
            "thrifty_rate_limited_total", "Requests refused by a key's requests or tokens per minute.", registry=r
        )
        self.session_store_up = Gauge(
            "thrifty_session_store_up",
            "1 while the session store answers; 0 while requests are served without session state.",
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.session_store_errors = Counter(
            "thrifty_session_store_errors_total",
            "Session store operations that failed, by operation.",
            ["operation"],
            registry=r,
        )
        self.requests_without_session = Counter(
            "thrifty_requests_without_session_total",
            "Requests served without session state because the session store was unreachable.",
            registry=r,
        )
        self.session_turns_lost = Counter(
            "thrifty_session_turns_lost_total",
            "Turns answered but missing from their session: the store failed while recording them.",
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text; with several workers, aggregated over all of them."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
