"""How solvers see a chain: the byte-level tokenizer, the chat template and the conversation of a turn.

Solvers read and write bytes (one token per byte, no merges), so a digit is always one token and a
thinking budget counts characters of scratchpad. ``<|im_start|>``/``<|im_end|>`` are special;
``<think>``/``</think>`` are added tokens that are *not* special, as in Qwen3, so that vLLM's reasoning
parser sees them in the output and its thinking budget can force ``</think>``.

The template is ChatML. Earlier assistant turns keep only their answer (their thinking is dropped, as
Qwen3's template does), and the generation prompt opens the thinking block, so everything the model
writes up to ``</think>`` is reasoning.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from thrifty.budgeter.world.chains import Chain, Step

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

THINK_START, THINK_END = "<think>", "</think>"
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' + message['content'].split('</think>')[-1].lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif -%}"
)
GENERATION_PROMPT = f"{IM_START}assistant\n{THINK_START}\n"


def answer_text(step: Step) -> str:
    """How a solver states a turn's result: "x3 is 54", the name then the value.

    Naming the result (with "is", so it never reads like the user's "x3 = …") lets a later turn find
    ``x3`` in the conversation by its name; tiny solvers look values up far more reliably that way.
    """
    return f"{step.prompt.split(' = ', 1)[0]} is {step.value}"


def messages_for(chain: Chain, turn: int, answers: list[str] | None = None) -> list[dict[str, str]]:
    """The conversation up to turn ``turn`` (0-based); earlier answers are the gold ones unless given."""
    previous = answers if answers is not None else [answer_text(s) for s in chain.steps[:turn]]
    messages: list[dict[str, str]] = []
    for step, answer in zip(chain.steps[:turn], previous, strict=True):
        messages.append({"role": "user", "content": step.prompt})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": chain.steps[turn].prompt})
    return messages


def render_prompt(messages: list[dict[str, str]]) -> str:
    """The template applied by hand (the same text as ``apply_chat_template``; a test checks it)."""
    parts = [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages]
    return "".join(parts) + GENERATION_PROMPT


def thinking_allowed(budget: int) -> int:
    """The thinking tokens a solver writes under vLLM's ``thinking_token_budget`` of ``budget``.

    vLLM counts the budget from ``<think>``, so the newline that the generation prompt puts after it is
    the first of them: a budget of b leaves b − 1 tokens to write (none for 0 or 1), then ``</think>``
    is forced. (Measured on vLLM 0.32 CPU; the outcome tables and the environment use this.)
    """
    return max(budget - 1, 0)


def completion(scratchpad: str, answer: str) -> str:
    return f"{scratchpad}\n{THINK_END}\n\n{answer}{IM_END}"


def build_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, IM_START, IM_END)])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_START, THINK_END)])
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(folder: Path) -> None:
    build_tokenizer().save_pretrained(folder)
