"""``POST /v1/chat/completions``: validation of the chat fields, then the shared pipeline."""

from __future__ import annotations

from thrifty.server.chat.protocol import ChatCompletionRequest
from thrifty.server.pipeline import Pipeline
from thrifty.server.request import CHAT
from thrifty.server.serving import CompletionServing


def chat_serving(pipeline: Pipeline, max_body_bytes: int) -> CompletionServing:
    return CompletionServing(pipeline, CHAT, ChatCompletionRequest, max_body_bytes)
