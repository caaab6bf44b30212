"""Talking to backends over HTTP, and the one place where every backend failure becomes a gateway error:
transport errors (aiohttp's), statuses that mean failure, answers that are not what was asked for,
streams that freeze, end early or send an event too large.

aiohttp rather than httpx (the usual choice): proxying a fixed completion through a Starlette app on
this project's 2-core machine, httpx served ~510 requests/s at 32 connections and aiohttp ~8,500. The
gateway's throughput target (2,000/s) rules httpx out on the request path.
"""

from __future__ import annotations

import asyncio

import aiohttp

from thrifty.server.backends.pool import Backend
from thrifty.server.config import GatewayConfig
from thrifty.server.errors import BackendError, BackendTimeout, BackendUnavailable

TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, OSError)


def open_session(config: GatewayConfig) -> aiohttp.ClientSession:
    """The app's one client session; call inside a running event loop."""
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: each backend has its own
        limit_per_host=config.limits.max_connections_per_backend,
        keepalive_timeout=30,
        enable_cleanup_closed=False,
    )
    timeout = aiohttp.ClientTimeout(total=None, connect=config.timeouts.connect, sock_connect=config.timeouts.connect)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )


async def post(session: aiohttp.ClientSession, backend: Backend, path: str, body: bytes) -> aiohttp.ClientResponse:
    """Send a request; returns once the response headers are in."""
    headers = {"Content-Type": "application/json"}
    if backend.auth_header:
        headers["Authorization"] = backend.auth_header
    try:
        return await session.post(backend.url + path, data=body, headers=headers)
    except TRANSPORT_ERRORS as exc:
        raise convert(exc, backend, started=False) from exc


def convert(exc: BaseException, backend: Backend, *, started: bool) -> BackendError:
    """Map a transport failure to the gateway's error; ``started``: the response had begun arriving."""
    name = backend.name
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return BackendTimeout(f"timed out connecting to backend '{name}'", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BackendUnavailable(f"backend '{name}' refused the connection", retryable=True)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return BackendTimeout(f"backend '{name}' did not answer in time")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and not started:
        return BackendError(f"backend '{name}' closed the connection before answering", retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return BackendError(f"backend '{name}' closed the connection before finishing the response")
    return BackendError(f"backend '{name}' failed: {type(exc).__name__}")


def snippet(data: bytes, limit: int = 300) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"


# -- failures that are not transport errors -------------------------------------------------------


def busy(backend: Backend, status: int, text: str) -> BackendUnavailable:
    """A 502/503 before anything was sent: another backend may do better."""
    return BackendUnavailable(f"backend '{backend.name}' answered {status}: {text}", retryable=True)


def failed(backend: Backend, status: int, data: bytes) -> BackendError:
    return BackendError(f"backend '{backend.name}' failed with status {status}: {snippet(data)}")


def not_json(backend: Backend) -> BackendError:
    return BackendError(f"backend '{backend.name}' sent a response that is not a JSON object")


def none_healthy(model: str) -> BackendUnavailable:
    return BackendUnavailable(f"no healthy backend serves the model '{model}'")


def no_answer(total_s: float) -> BackendTimeout:
    return BackendTimeout(f"the backend did not answer within {total_s:g} s")


def no_first_token(first_token_s: float) -> BackendTimeout:
    return BackendTimeout(f"the backend sent no first token within {first_token_s:g} s")


def unfinished(total_s: float) -> BackendTimeout:
    return BackendTimeout(f"the stream did not finish within {total_s:g} s")


def idle(backend: Backend, idle_s: float) -> BackendTimeout:
    return BackendTimeout(
        f"backend '{backend.name}' sent nothing for {idle_s:g} s (timeouts.idle)", code="backend_idle"
    )


def ended_early(backend: Backend) -> BackendError:
    """The body ended cleanly but without ``[DONE]``: the client must know it was cut."""
    return BackendError(f"backend '{backend.name}' ended the stream early")


def oversized(backend: Backend, limit: int) -> BackendError:
    return BackendError(
        f"backend '{backend.name}' sent a stream event larger than limits.max_sse_event_bytes ({limit:,} bytes)",
        code="event_too_large",
    )
