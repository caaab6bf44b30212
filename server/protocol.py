"""Wire types shared by the endpoints, and request parsing.

Only the fields the gateway acts on are validated; everything else in a request is forwarded to the
backend untouched (the models allow extra fields, and the gateway forwards the client's own dict, not
a re-serialisation of these models). Types are strict: ``"stream": "yes"`` is an error, as at OpenAI.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thrifty.server.errors import InvalidRequest

Model = TypeVar("Model", bound="WireModel")
# Far beyond any context length, and small enough that budget + allowance stays a 64-bit integer.
MAX_TOKENS = 2**31 - 1


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(WireModel):
    include_usage: bool | None = None


class ThriftyExtension(BaseModel):
    """The request's ``thrifty`` field: the gateway's own options, removed before forwarding."""

    model_config = ConfigDict(extra="forbid", strict=True)

    budget: int | None = Field(None, ge=0, le=MAX_TOKENS, description="the problem's total token budget B")


class CompletionFields(WireModel):
    """Fields both completion endpoints act on."""

    model: str = Field(..., min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    n: int | None = Field(None, ge=1, le=128)
    thrifty: ThriftyExtension | None = None


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc.msg})", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    return raw


def validate(model: type[Model], raw: dict[str, Any]) -> Model:
    """Validate ``raw``; the first problem becomes a 400 naming the field in ``param``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = _param(first["loc"])
        kind = first["type"]
        if kind == "missing":
            message = f"'{param}' is required"
        else:
            message = f"invalid value for '{param}': {first['msg'].removeprefix('Value error, ')}"
        raise InvalidRequest(message, param=param or None) from None
