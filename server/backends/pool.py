"""The backend pool: which backends serve which model, their health, breakers and load."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp

from thrifty.router import ModelCandidate
from thrifty.server.backends.circuit import CircuitBreaker
from thrifty.server.config import BackendConfig, GatewayConfig
from thrifty.server.metrics import GatewayMetrics

logger = logging.getLogger(__name__)


class Backend:
    """One backend server and what the gateway knows about it."""

    __slots__ = ("auth_header", "breaker", "config", "failed_checks", "healthy", "in_flight", "name", "seen_up", "url")

    def __init__(self, config: BackendConfig, breaker: CircuitBreaker) -> None:
        self.config = config
        self.name = config.name
        self.url = config.base_url
        self.breaker = breaker
        # Optimistic until the first health check says otherwise, so a request racing start-up is tried.
        self.healthy = True
        self.seen_up = False  # whether a health check has ever passed
        self.failed_checks = 0  # health checks failed in a row
        self.in_flight = 0
        self.auth_header = f"Bearer {config.api_key}" if config.api_key else None

    @property
    def available(self) -> bool:
        return self.healthy and self.breaker.allows()


class BackendPool:
    """Backends grouped by the model they serve."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._health = config.health
        self.backends = [
            Backend(b, CircuitBreaker(config.circuit_breaker.failure_threshold, config.circuit_breaker.reset_after_s))
            for b in config.backends
        ]
        self.by_model: dict[str, list[Backend]] = {}
        for backend in self.backends:
            self.by_model.setdefault(backend.config.model, []).append(backend)
        self._rotation = 0

    @property
    def models(self) -> list[str]:
        return list(self.by_model)

    def candidates(self) -> list[ModelCandidate]:
        """Models with at least one available backend, described for the router."""
        out = []
        for model, backends in self.by_model.items():
            if any(b.available for b in backends):
                c = backends[0].config
                out.append(ModelCandidate(model, c.price.input, c.price.output, c.reasoning, c.context_length))
        return out

    def pick(self, model: str, exclude: Iterable[Backend] = ()) -> Backend | None:
        """The least-loaded available backend for ``model`` not in ``exclude``; rotation breaks ties."""
        excluded = set(map(id, exclude))
        choices = [b for b in self.by_model.get(model, ()) if b.available and id(b) not in excluded]
        if not choices:
            return None
        self._rotation += 1
        start = self._rotation % len(choices)
        rotated = choices[start:] + choices[:start]
        return min(rotated, key=lambda b: b.in_flight)

    def record_success(self, backend: Backend) -> None:
        backend.breaker.on_success()

    def record_failure(self, backend: Backend) -> None:
        backend.breaker.on_failure()
        self._publish(backend)

    def any_available(self) -> bool:
        return any(b.available for b in self.backends)

    def _publish(self, backend: Backend) -> None:
        self._metrics.backend_up.labels(backend.name).set(1 if backend.available else 0)

    async def check_health(self, session: aiohttp.ClientSession) -> None:
        """One round of health checks, all backends at once."""
        await asyncio.gather(*(self._check(session, b) for b in self.backends))

    async def _check(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        timeout = aiohttp.ClientTimeout(total=self._health.timeout_s)
        try:
            async with session.get(f"{backend.url}/health", timeout=timeout) as response:
                passed = response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            passed = False
        backend.failed_checks = 0 if passed else backend.failed_checks + 1
        backend.seen_up = backend.seen_up or passed
        # A backend that was up stays in until it misses `unhealthy_after` checks in a row: on a busy
        # machine one check can time out while the backend serves. One never seen up is out at once.
        healthy = passed or (
            backend.healthy and backend.seen_up and backend.failed_checks < self._health.unhealthy_after
        )
        if healthy != backend.healthy:
            logger.warning("backend %s is now %s", backend.name, "healthy" if healthy else "unhealthy")
        backend.healthy = healthy
        self._publish(backend)

    async def run_health_checks(self, session: aiohttp.ClientSession) -> None:
        """Forever: check every ``interval_s``. Cancelled by the app's lifespan."""
        while True:
            await asyncio.sleep(self._health.interval_s)
            await self.check_health(session)
