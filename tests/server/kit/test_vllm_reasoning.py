"""How ``thrifty_r1`` counts reasoning tokens (the parser class itself runs in vLLM: tests/integration)."""

from __future__ import annotations

import pytest

from thrifty.server.kit.vllm_reasoning import count_opened_reasoning

START, END = 1, 2


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([7, 7, 7, END, 9, 9], 3),  # the prompt opened <think>: everything before </think>
        ([END, 9, 9], 0),  # a budget of 0: </think> forced at once
        ([7, 7, 7, 7], 4),  # cut off by the length limit while thinking
        ([START, 7, 7, END, 9], 2),  # the model opened <think> itself: between the markers
        ([9, START, 7, END, 9], 1),  # text before its own <think> is not reasoning
        ([START, 7, 7], 2),  # opened by the model, cut off before </think>
        ([], 0),
    ],
)
def test_reasoning_tokens_follow_the_split_of_the_text(tokens: list[int], expected: int) -> None:
    assert count_opened_reasoning(tokens, START, END) == expected
