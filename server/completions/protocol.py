"""Wire models for ``POST /v1/completions`` (the fields the gateway acts on)."""

from __future__ import annotations

from pydantic import Field

from thrifty.server.protocol import CompletionFields


class CompletionRequest(CompletionFields):
    # A string, a list of strings, a list of token ids, or a list of those lists — as at OpenAI.
    prompt: str | list[str] | list[int] | list[list[int]] = Field(..., union_mode="left_to_right")
