"""A fast stand-in for a vLLM backend: a bare ASGI app that answers with a fixed completion.

It exists for two things: measuring the gateway's own overhead (the stand-in costs as little as an
HTTP server can) and unit-testing the gateway's forwarding and fault handling without a model. It is
never used to claim anything about a real model.

Behaviour is set per instance through :class:`StandinState`, which tests mutate while it runs:
``fail_status`` answers every completion with that status, ``die_after_chunks`` closes the
connection in the middle of a stream, ``hang_after_chunks`` stops sending without closing it (a frozen
backend), ``delay_s`` sleeps before answering (and gives up if the client leaves), ``gate`` holds every
answer until a test sets it, ``line_ending`` frames events with CRLF (or CR) as some SSE servers do,
``first_event_padding`` makes a stream event (the first, or ``padded_event``) that many bytes larger.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from thrifty.server.types import ASGIReceive, ASGIScope, ASGISend

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclass(slots=True)
class StandinState:
    """Mutable behaviour and a record of what the stand-in received."""

    model: str = "standin"
    fail_status: int | None = None
    die_after_chunks: int | None = None
    hang_after_chunks: int | None = None
    line_ending: bytes = b"\n"
    first_event_padding: int = 0
    padded_event: int = 0  # which stream event the padding goes into
    delay_s: float = 0.0
    gate: threading.Event | None = None  # each completion waits for it before answering (or before gate_event)
    gate_event: int | None = None  # the stream event the gate holds back instead
    chunk_delay_s: float = 0.0
    stream_chunks: int = 4
    # Streams that ended because the client went away (the gateway must pass disconnects on).
    disconnects: int = 0
    record: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)
    received_raw: list[bytes] = field(default_factory=list)


class _Disconnect(Exception):
    """Raised to drop the connection without a proper end of stream."""


def _usage(prompt: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


class Standin:
    """The ASGI application; ``Standin(StandinState(model="m"))`` is ready for uvicorn."""

    def __init__(self, state: StandinState | None = None) -> None:
        self.state = state or StandinState()
        self._chat_body = orjson.dumps(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": 0,
                "model": self.state.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello from the stand-in."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(12, 6, 0),
            }
        )
        self._completion_body = orjson.dumps(
            {
                "id": "cmpl-standin",
                "object": "text_completion",
                "created": 0,
                "model": self.state.model,
                "choices": [{"index": 0, "text": " stand-in text", "finish_reason": "stop"}],
                "usage": _usage(5, 3, 0),
            }
        )
        self._models_body = orjson.dumps(
            {"object": "list", "data": [{"id": self.state.model, "object": "model", "owned_by": "standin"}]}
        )

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/health":
            await _respond(send, 200, b"", _JSON_HEADERS)
            return
        if path == "/v1/models":
            await _respond(send, 200, self._models_body, _JSON_HEADERS)
            return
        body = await _read_body(receive)
        if path not in ("/v1/chat/completions", "/v1/completions"):
            await _respond(send, 404, b'{"error":{"message":"not found"}}', _JSON_HEADERS)
            return
        state = self.state
        request = orjson.loads(body) if body else {}
        if state.record:
            state.received.append(request)
            state.received_raw.append(body)
        if state.gate_event is None:
            await _wait(state.gate)
        if state.delay_s:
            gone = asyncio.Event()
            watcher = asyncio.create_task(_watch_disconnect(receive, gone))
            try:
                await asyncio.wait_for(gone.wait(), state.delay_s)
                return  # the client left while we were "thinking", as vLLM aborts such a request
            except TimeoutError:
                pass
            finally:
                watcher.cancel()
        if state.fail_status is not None:
            error = {"error": {"message": "stand-in failure", "type": "server_error", "code": None}}
            await _respond(send, state.fail_status, orjson.dumps(error), _JSON_HEADERS)
            return
        chat = path == "/v1/chat/completions"
        if not request.get("stream"):
            await _respond(send, 200, self._chat_body if chat else self._completion_body, _JSON_HEADERS)
            return
        try:
            await self._stream(receive, send, chat, request)
        except _Disconnect:
            # Returning without more_body=False makes uvicorn close the socket mid-response.
            return

    async def _stream(self, receive: ASGIReceive, send: ASGISend, chat: bool, request: dict[str, Any]) -> None:
        state = self.state
        # Slow streams watch for the client going away; fast ones (the benchmark's) skip the extra task.
        gone = asyncio.Event() if state.chunk_delay_s or state.hang_after_chunks is not None else None
        watcher = asyncio.create_task(_watch_disconnect(receive, gone)) if gone is not None else None
        try:
            await self._send_stream(send, chat, request, gone)
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _send_stream(
        self, send: ASGISend, chat: bool, request: dict[str, Any], gone: asyncio.Event | None
    ) -> None:
        state = self.state
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        created = int(time.time())
        end = b"\n\n" if state.line_ending == b"\n" else state.line_ending * 2

        async def event(data: bytes) -> None:
            await send({"type": "http.response.body", "body": b"data: " + data + end, "more_body": True})

        for i in range(state.stream_chunks):
            if state.die_after_chunks is not None and i >= state.die_after_chunks:
                raise _Disconnect
            if state.hang_after_chunks is not None and i >= state.hang_after_chunks and gone is not None:
                await gone.wait()  # frozen: nothing more until the client gives up
                state.disconnects += 1
                raise _Disconnect
            if i == state.gate_event:
                await _wait(state.gate)
            last = i == state.stream_chunks - 1
            padding = state.first_event_padding if i == state.padded_event else 0
            chunk = (
                _chat_chunk(state.model, created, i, last, padding)
                if chat
                else _text_chunk(state.model, created, i, last, padding)
            )
            if state.chunk_delay_s:
                await asyncio.sleep(state.chunk_delay_s)
            if gone is not None and gone.is_set():
                state.disconnects += 1
                raise _Disconnect
            await event(chunk)
        options = request.get("stream_options") or {}
        if options.get("include_usage"):
            usage: dict[str, Any] = {
                "id": "chatcmpl-standin" if chat else "cmpl-standin",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": state.model,
                "choices": [],
                "usage": _usage(12, state.stream_chunks, 1 if chat else 0),
            }
            await event(orjson.dumps(usage))
        await send({"type": "http.response.body", "body": b"data: [DONE]" + end, "more_body": False})


def _chat_chunk(model: str, created: int, i: int, last: bool, padding: int = 0) -> bytes:
    # The first chunk carries reasoning, as a reasoning parser's output does.
    delta: dict[str, Any] = {"reasoning_content": "think"} if i == 0 else {"content": f"tok{i} "}
    if padding:
        delta["padding"] = "." * padding
    if i == 0:
        delta["role"] = "assistant"
    return orjson.dumps(
        {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
        }
    )


def _text_chunk(model: str, created: int, i: int, last: bool, padding: int = 0) -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl-standin",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": f"tok{i} " + "." * padding, "finish_reason": "stop" if last else None}],
        }
    )


async def _wait(gate: threading.Event | None) -> None:
    while gate is not None and not gate.is_set():
        await asyncio.sleep(0.005)


async def _watch_disconnect(receive: ASGIReceive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _read_body(receive: ASGIReceive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: ASGISend, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app() -> Standin:
    """uvicorn factory: ``uvicorn --factory thrifty.server.standin:create_app``."""
    import os

    return Standin(StandinState(model=os.environ.get("THRIFTY_STANDIN_MODEL", "standin")))
