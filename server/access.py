"""Who is calling: API keys (kept as SHA-256 hashes) and their rate limits.

Keys are never stored, logged or used as metric labels; a key is known by its configured name.
With no keys configured the gateway is open (``thrifty serve`` refuses that on a non-loopback address
unless told ``--allow-unauthenticated``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from thrifty.server.config import AuthConfig
from thrifty.server.errors import Forbidden, RateLimited, Unauthorized
from thrifty.server.metrics import GatewayMetrics
from thrifty.server.ratelimit import Quota, RateLimiter

ANONYMOUS = "anonymous"
KEY_PREFIX = "thr-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a configured key's name (or anonymous) and its limits."""

    name: str
    quota: Quota | None
    admin: bool
    max_sessions: int  # sessions this caller may hold at once


class AccessControl:
    def __init__(self, auth: AuthConfig, limiter: RateLimiter, metrics: GatewayMetrics, max_sessions: int) -> None:
        self.enabled = bool(auth.keys)
        self._limiter = limiter
        self._metrics = metrics
        self._by_hash: dict[str, Principal] = {}
        for key in auth.keys:
            quota = Quota(key.name, key.rpm or auth.rpm, key.tpm or auth.tpm)
            self._by_hash[key.sha256] = Principal(
                key.name, None if quota.unlimited else quota, key.admin, key.max_sessions or max_sessions
            )
        # Without keys the gateway listens on loopback only (``thrifty serve`` insists): local callers are trusted.
        self._anonymous = Principal(ANONYMOUS, None, admin=True, max_sessions=max_sessions)

    def identify(self, headers: Mapping[str, str]) -> Principal:
        if not self.enabled:
            return self._anonymous
        header = headers.get("authorization")
        if not header:
            self._metrics.auth_failures.inc()
            raise Unauthorized("no API key provided; send it as 'Authorization: Bearer KEY'", code="missing_api_key")
        scheme, _, key = header.partition(" ")
        principal = self._by_hash.get(hash_key(key.strip())) if scheme.lower() == "bearer" else None
        if principal is None:
            self._metrics.auth_failures.inc()
            raise Unauthorized("the API key is not valid")
        return principal

    def identify_admin(self, headers: Mapping[str, str]) -> Principal:
        principal = self.identify(headers)
        if not principal.admin:
            raise Forbidden(f"the key '{principal.name}' may not call admin endpoints (set admin: true on a key)")
        return principal

    async def admit(self, headers: Mapping[str, str]) -> Principal:
        """Identify the caller and count a model request against its limits (401 / 429 otherwise).

        Only completion requests are counted; listing models and reading sessions just authenticate.
        """
        principal = self.identify(headers)
        if principal.quota is not None:
            try:
                await self._limiter.admit(principal.quota, time.time())
            except RateLimited:
                self._metrics.rate_limited.inc()
                raise
        return principal

    async def spend(self, principal: Principal, tokens: int) -> None:
        if principal.quota is not None and tokens > 0:
            await self._limiter.spend(principal.quota, tokens, time.time())
