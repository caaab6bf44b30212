"""The LLM budget policy (the paper's setting) and the LLM judge, on the bundled SmolLM2-135M-Instruct.

The model reads the problem so far and answers with the letter of a ladder level::

    system  You set how many tokens a step-by-step arithmetic solver may think ...
    user    Steps so far:
            x1 = 3*20 -> x1 is 60
            Next step: x2 = x1*123+7
            Tokens left for this problem: 260 of 300.
            Options: A) 16  B) 32  C) 64  D) 128  E) 256  F) 512
            Answer with one letter.
    assistant  C

Its policy is the next-token distribution over the option letters (levels that do not fit in what is
left of B masked out), so one forward pass scores every level, and sampling, greedy choice and the
GRPO ratio all read the same numbers. What it sees is a *view*:

- ``subq``: only the current sub-question (and the tokens left);
- ``history``: the conversation so far, as above (TAB's view);
- ``all``: every sub-question of the problem, past and future, with the answers so far (All-SubQ).

The **judge** baseline is the base model asked this, zero-shot. The **llm** TAB policy is the same
model with a LoRA adapter (PEFT; the paper's r = 64, α = 128 on the attention projections) trained with
GRPO by :mod:`thrifty.budgeter.tab.train`. TRL's ``GRPOTrainer`` is not used: it samples one completion
per prompt and normalises rewards over completions of that prompt, while here one trajectory is
several prompts (each turn's, built from the earlier turns' outcomes) sharing one advantage; the loop
in :mod:`thrifty.budgeter.tab.grpo` does exactly that on transformers and PEFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from thrifty.budgeter.tab.difficulty import text_of
from thrifty.budgeter.tab.features import Context
from thrifty.budgeter.tab.policy import masked_log_softmax

if TYPE_CHECKING:
    import torch

View = Literal["subq", "history", "all"]
VIEWS: tuple[View, ...] = ("subq", "history", "all")
LETTERS = "ABCDEFGHIJKL"
SYSTEM = (
    "You set how many tokens a step-by-step arithmetic solver may think before it answers the next step. "
    "Too few and it may answer wrong; every token costs. Easy steps need few tokens, long multiplications "
    "and divisions many."
)
MAX_PROMPT_TOKENS = 384  # longer conversations keep their end


def prompt_messages(context: Context, ladder: Sequence[int], view: View) -> list[dict[str, str]]:
    """The chat the model reads for one decision."""
    lines = []
    if view in ("history", "all"):
        done = _steps_so_far(context)
        lines.append("Steps so far:" if done else "This is the first step.")
        lines += done
    lines.append(f"Next step: {context.sub_question}")
    if view == "all" and context.plan is not None:
        future = context.future()
        lines.append("Steps still to come: " + ("; ".join(future) if future else "none"))
    if context.budget is not None:
        lines.append(f"Tokens left for this problem: {context.remaining} of {context.budget}.")
    options = "  ".join(f"{LETTERS[i]}) {level}" for i, level in enumerate(ladder))
    lines += [f"Options: {options}", "Answer with one letter."]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def _steps_so_far(context: Context) -> list[str]:
    lines, asked = [], None
    for message in context.messages[:-1]:
        text = text_of(message.get("content")).strip()
        if message.get("role") == "user":
            asked = text
        elif message.get("role") == "assistant" and asked is not None:
            lines.append(f"{asked} -> {text}")
            asked = None
    return lines


class LlmScorer:
    """SmolLM2 (optionally with a LoRA adapter) scoring the ladder's letters for a batch of contexts."""

    scales_features = False  # it reads text: nothing to standardise

    def __init__(
        self,
        model_dir: Path,
        ladder: Sequence[int],
        view: View,
        all_subq: bool = False,
        adapter: Path | None = None,
        lora: tuple[int, int] | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if len(ladder) > len(LETTERS):
            raise ValueError(f"an LLM policy names at most {len(LETTERS)} levels")
        torch.manual_seed(seed)
        self.ladder = tuple(ladder)
        self.view = view
        self.all_subq = all_subq
        self.batch_size = batch_size
        self.micro_batch: int | None = batch_size  # a backward pass holds one batch of prompts
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.letters = []
        for letter in LETTERS[: len(self.ladder)]:
            ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"option letter {letter!r} is not one token for this tokenizer")
            self.letters.append(ids[0])
        self.trainable = adapter is not None or lora is not None
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        elif lora is not None:
            from peft import LoraConfig, get_peft_model

            rank, alpha = lora
            config = LoraConfig(
                r=rank,
                lora_alpha=alpha,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, config)
        self.model: Any = model
        self.model.eval()

    # --- scoring ---------------------------------------------------------------------------------------

    def prompts(self, contexts: Sequence[Context]) -> list[str]:
        return [
            str(
                self.tokenizer.apply_chat_template(
                    prompt_messages(c, self.ladder, self.view), tokenize=False, add_generation_prompt=True
                )
            )
            for c in contexts
        ]

    def _letter_logits(self, contexts: Sequence[Context], reference: bool = False) -> torch.Tensor:
        import contextlib

        import torch

        texts = self.prompts(contexts)
        if not texts:
            return torch.zeros((0, len(self.ladder)))
        # Batches of prompts of about the same length pad least; the rows go back in order at the end.
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        outputs = []
        for start in range(0, len(order), self.batch_size):
            batch = self.tokenizer(
                [texts[i] for i in order[start : start + self.batch_size]],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=MAX_PROMPT_TOKENS,
                add_special_tokens=False,
            )
            switch = self.model.disable_adapter() if reference and self.trainable else contextlib.nullcontext()
            with switch:
                # Only the last position's logits are read: the head runs on it alone, not on every token.
                logits: torch.Tensor = self.model(**batch, logits_to_keep=1).logits[:, -1, :]
            outputs.append(logits[:, self.letters])
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(outputs)[inverse]

    def probabilities(self, contexts: Sequence[Context], masks: np.ndarray, temperature: float) -> np.ndarray:
        import torch

        with torch.no_grad():
            logp = masked_log_softmax(self._letter_logits(contexts), masks, temperature)
        return np.where(masks, np.exp(logp.numpy()), 0.0)

    def choose(self, context: Context, mask: np.ndarray) -> tuple[int, np.ndarray]:
        """The greedy level for one context (0 when nothing fits) and the distribution."""
        p = self.probabilities([context], mask[None, :], 1.0)[0]
        return (self.ladder[int(np.argmax(p))] if mask.any() else 0), p

    # --- the Learner protocol (an adapter being trained) -------------------------------------------------

    def log_probs(
        self, contexts: Sequence[Context], masks: np.ndarray, actions: np.ndarray, temperature: float
    ) -> torch.Tensor:
        import torch

        index = torch.from_numpy(np.asarray(actions, dtype=np.int64))[:, None]
        self.model.train()
        try:
            logp: torch.Tensor = masked_log_softmax(self._letter_logits(contexts), masks, temperature)
        finally:
            self.model.eval()
        return logp.gather(1, index)[:, 0]

    def reference_log_probs(
        self, contexts: Sequence[Context], masks: np.ndarray, actions: np.ndarray, temperature: float
    ) -> torch.Tensor:
        """The base model's (the adapter switched off)."""
        import torch

        index = torch.from_numpy(np.asarray(actions, dtype=np.int64))[:, None]
        with torch.no_grad():
            logp: torch.Tensor = masked_log_softmax(self._letter_logits(contexts, reference=True), masks, temperature)
        return logp.gather(1, index)[:, 0]

    def parameters(self) -> Any:
        return [p for p in self.model.parameters() if p.requires_grad]

    def fit_scaling(self, contexts: Sequence[Context]) -> None:
        """Nothing to standardise: the model reads text."""

    def state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, tensors)

    def save_adapter(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
