"""``POST /v1/completions``: validation of the completion fields, then the shared pipeline."""

from __future__ import annotations

from thrifty.server.completions.protocol import CompletionRequest
from thrifty.server.pipeline import Pipeline
from thrifty.server.request import COMPLETIONS
from thrifty.server.serving import CompletionServing


def completion_serving(pipeline: Pipeline, max_body_bytes: int) -> CompletionServing:
    return CompletionServing(pipeline, COMPLETIONS, CompletionRequest, max_body_bytes)
