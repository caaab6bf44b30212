"""The gateway's exceptions and the one mapping to OpenAI's error envelope (:func:`error_response`).

    GatewayError                      (500 server_error: a bug, never a client's doing)
    ├── InvalidRequest                (400 invalid_request_error, names the field in ``param``)
    │   └── BodyTooLarge              (413)
    ├── Unauthorized                  (401, missing or unknown API key)
    ├── Forbidden                     (403, a key without admin rights on an admin endpoint)
    ├── Conflict                      (409, e.g. reloading a stage that has no artifact)
    ├── UnprocessableArtifact         (422, a reload refused: the previous artifact keeps serving)
    ├── RateLimited                   (429 with Retry-After: a key's requests or tokens per minute)
    ├── SessionNotFound               (404)
    ├── SessionStoreDown              (503: the session store cannot be reached)
    ├── ShuttingDown                  (503: graceful shutdown ran out before the request was answered)
    ├── ModelNotFound                 (404)
    ├── RouteNotFound                 (404, unknown path)
    ├── MethodNotAllowed              (405)
    └── BackendError                  (502 bad gateway: the backend answered wrongly or died)
        ├── BackendUnavailable        (503: no healthy backend, refused connection, open breaker)
        └── BackendTimeout            (504: connect, first-token or total timeout)

Every backend failure (a transport error, a bad status, a malformed or cut stream) becomes one of these
in exactly one place, ``backends.client``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response


class GatewayError(Exception):
    """Base class: carries what the OpenAI error body needs."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    def headers(self) -> dict[str, str]:
        """Extra response headers this error needs."""
        return {}


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class BodyTooLarge(InvalidRequest):
    status_code = 413
    default_code = "request_too_large"


class Unauthorized(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class Forbidden(GatewayError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "forbidden"


class Conflict(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class UnprocessableArtifact(GatewayError):
    status_code = 422
    error_type = "invalid_request_error"
    default_code = "router_reload_failed"


class RateLimited(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class SessionNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "session_not_found"


class SessionStoreDown(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "session_store_unavailable"


class ShuttingDown(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "shutting_down"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class RouteNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(GatewayError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class BackendError(GatewayError):
    """``retryable``: nothing reached the client and another backend may well succeed."""

    status_code = 502
    error_type = "backend_error"
    default_code = "bad_gateway"

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retryable = retryable


class BackendUnavailable(BackendError):
    status_code = 503
    default_code = "backend_unavailable"


class BackendTimeout(BackendError):
    status_code = 504
    default_code = "backend_timeout"


def sse_error_event(error: GatewayError) -> bytes:
    """A failure after the stream began: one SSE event the openai SDK raises as an APIError."""
    return b"data: " + error.json() + b"\n\n"


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    """The error as an OpenAI-style JSON response, with the headers it needs (and any given)."""
    extra = error.headers()
    if headers:
        extra.update(headers)
    return Response(error.json(), status_code=error.status_code, headers=extra, media_type="application/json")
