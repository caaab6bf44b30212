"""Wire types shared by the endpoints, and request parsing.

Only the fields the gateway acts on are validated; everything else in a request is forwarded to the
backend untouched (the models allow extra fields, and the gateway forwards the client's own dict, not
a re-serialisation of these models). Types are strict: ``"stream": "yes"`` is an error, as at OpenAI.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thrifty.server.errors import InvalidRequest

Model = TypeVar("Model", bound="WireModel")
# Far beyond any context length, and small enough that budget + allowance stays a 64-bit integer.
MAX_TOKENS = 2**31 - 1
# One nesting limit for what the gateway reads and what it writes back out: orjson writes at most 254
# levels and vLLM's own parser reads about 200, while OpenAI requests (JSON schemas in tools and
# response_format included) need a few dozen.
MAX_JSON_DEPTH = 128
# A problem's plan (``thrifty.plan``): at most this many sub-questions, each at most this many characters.
MAX_PLAN_STEPS = 64
MAX_PLAN_TEXT = 2000
# Integers the gateway can forward exactly: orjson reads anything wider as a float, which would change it.
INT_RANGE = (-(2**63), 2**64 - 1)
_LONG_DIGITS = re.compile(rb"\d{19}")


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(WireModel):
    include_usage: bool | None = None


class ThriftyExtension(BaseModel):
    """The request's ``thrifty`` field: the gateway's own options, removed before forwarding."""

    model_config = ConfigDict(extra="forbid", strict=True)

    budget: int | None = Field(None, ge=0, le=MAX_TOKENS, description="the problem's total token budget B")
    new_session: bool = Field(False, description="start a session with an id the gateway chooses")
    plan: list[Annotated[str, Field(min_length=1, max_length=MAX_PLAN_TEXT)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PLAN_STEPS,
        description="every sub-question of the problem, in order (for All-SubQ budget policies); kept in the session",
    )


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
    """The request's JSON object, refused (400) unless the gateway can forward it unchanged."""
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc.msg})", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    # Both checks look at the raw bytes first, so an ordinary request pays two scans in C and nothing more.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _deeper_than(raw, MAX_JSON_DEPTH):
        raise InvalidRequest(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")
    if _LONG_DIGITS.search(body):
        _refuse_wide_integers(body)
    return raw


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


class _WideInteger(ValueError):
    pass


def _exact_int(text: str) -> int:
    value = int(text)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise _WideInteger(text)
    return value


def _refuse_wide_integers(body: bytes) -> None:
    """A 400 naming the field when an integer literal does not fit in 64 bits (rare: re-read exactly)."""
    try:
        json.loads(body, parse_int=_exact_int)
    except _WideInteger:
        param = _param(_wide_integer_path(json.loads(body)) or ())
        raise InvalidRequest(
            f"invalid value for '{param}': integers must fit in 64 bits to be forwarded unchanged",
            param=param,
            code="integer_too_large",
        ) from None


def _wide_integer_path(value: Any, loc: tuple[int | str, ...] = ()) -> tuple[int | str, ...] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return None if INT_RANGE[0] <= value <= INT_RANGE[1] else loc
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found = _wide_integer_path(child, (*loc, key))
        if found is not None:
            return found
    return None


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
