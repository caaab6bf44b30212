"""vLLM reasoning parser ``thrifty_r1``: DeepSeek-R1's, with the reasoning tokens counted when the prompt
opened the thinking.

Chat templates of the R1 family (and the reasoning world's solvers) end the generation prompt with
``<think>``, so the model generates its thinking, ``</think>`` and the answer, but never ``<think>``
itself. vLLM's ``deepseek_r1`` parser splits such output right (everything before ``</think>`` is
reasoning), yet it counts ``usage.completion_tokens_details.reasoning_tokens`` only between a
generated ``<think>`` and ``</think>``, which gives 0 for every such reply. The gateway records that
count in the session ledger (each turn's ``reasoning_tokens``, what a budget policy reads of the
previous turn) and in ``thrifty_tokens_total{kind="reasoning"}``, so a wrong 0 there misleads both.

This parser counts the way the text is split: with a generated ``<think>``, the tokens between it and
``</think>``; without one, the tokens before the first ``</think>`` (all of them if thinking was cut
off by the length limit before ``</think>`` came). Select it with ``--reasoning-parser thrifty_r1``;
it is registered by thrifty's vLLM plugin (entry point ``vllm.general_plugins``), so it is there
wherever thrifty is installed next to vLLM. Only vLLM is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence

NAME = "thrifty_r1"


def register() -> None:
    """vLLM general plugin: make ``--reasoning-parser thrifty_r1`` known (imported only when chosen)."""
    from vllm.reasoning import ReasoningParserManager

    ReasoningParserManager.register_lazy_module(NAME, __name__, "OpenedThinkingR1Parser")


def count_opened_reasoning(token_ids: Sequence[int], start: int, end: int) -> int:
    """Reasoning tokens of a reply whose thinking the prompt may have opened (see the module's doc)."""
    if start in token_ids:
        opened = token_ids.index(start) + 1
        closed = next((i for i in range(opened, len(token_ids)) if token_ids[i] == end), len(token_ids))
        return closed - opened
    return next((i for i, token in enumerate(token_ids) if token == end), len(token_ids))


def __getattr__(name: str) -> object:  # the class needs vLLM: built on first use, not at plugin load
    if name != "OpenedThinkingR1Parser":
        raise AttributeError(name)
    from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser

    class OpenedThinkingR1Parser(DeepSeekR1ReasoningParser):
        def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
            return count_opened_reasoning(list(token_ids), self.start_token_id, self.end_token_id)

    OpenedThinkingR1Parser.__qualname__ = name
    globals()[name] = OpenedThinkingR1Parser
    return OpenedThinkingR1Parser
