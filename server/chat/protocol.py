"""Wire models for ``POST /v1/chat/completions`` (the fields the gateway acts on)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from thrifty.server.protocol import MAX_TOKENS, CompletionFields, WireModel

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Any = None


class ChatCompletionRequest(CompletionFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    # vLLM's extension: the most tokens the model may spend between <think> and </think>.
    thinking_token_budget: int | None = Field(None, ge=0, le=MAX_TOKENS)
    # OpenAI's reasoning models' knob; the gateway turns it into a thinking budget (the budgeter's levels).
    reasoning_effort: ReasoningEffort | None = None
