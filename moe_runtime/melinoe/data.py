"""What the MELINOE fine-tune reads: batches for the loss, and prompts whose decoding is recorded.

Two sources, one interface (:class:`TuningData`):

- a ``thrifty world build`` folder (``--data data/world``): the world's own training turns, as its
  solvers were trained on them (thinking, checks, answers, and turns whose thinking a budget cut: the
  skill of answering from cut thinking must survive the fine-tune);
- a JSONL file, one example per line: ``{"text": ...}`` (loss on every token),
  ``{"messages": [...]}`` (the model's chat template; loss on the last message, which must be the
  assistant's; with a template that opens the thinking in the prompt, the reply is written after the
  prompt as given, thinking and ``</think>`` included, then the end-of-sequence token) or
  ``{"prompt": ..., "completion": ...}`` (loss on the completion).

A tenth of the examples (at least one, by a seeded shuffle) is held out: the job's validation NLL and the
predictor's precision/recall are measured on prompts it never trained or fitted on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from thrifty.moe_runtime.melinoe.tuning import IGNORE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VALIDATION_SHARE = 0.1


class TuningData(Protocol):
    source: str  # what was read, for the manifest
    digest: str  # SHA-256 of what was read

    def batch(self, step: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        """The training batch of ``step``: the same for the same (step, size, seed), so a resumed run
        sees the data an uninterrupted one would."""
        ...

    def validation_batches(self, size: int) -> list[dict[str, torch.Tensor]]: ...

    def prompts(self, split: str, count: int) -> list[list[int]]:
        """Up to ``count`` prompts (token ids) of ``train`` or ``validation`` examples, whose greedy
        decoding is recorded to fit and judge the activation predictor."""
        ...


def source_file(source: Path) -> Path:
    """The file a data source reads: a world build's training chains, or the JSONL itself."""
    return source / "data" / "train.jsonl" if source.is_dir() else source


def digest(source: Path) -> str:
    """SHA-256 of what a data source reads (a rerun of a job on changed data is another job)."""
    path = source_file(source)
    if not path.is_file():
        raise ValueError(
            f"no training data at {path}: --data is a `thrifty world build` folder or a JSONL file"
            if source.is_dir() or source.suffix != ".jsonl"
            else f"no data file at {source}"
        )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, target) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(target)] = torch.tensor(target)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def _split(count: int, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    held = max(1, round(count * VALIDATION_SHARE)) if count > 1 else 0
    return sorted(order[held:]), sorted(order[:held])


@dataclass(frozen=True, slots=True)
class Example:
    prompt: list[int]
    completion: list[int]  # the tokens the loss covers (everything, for plain text: prompt is then empty)

    def row(self, limit: int) -> tuple[list[int], list[int]]:
        ids = (self.prompt + self.completion)[:limit]
        labels = ([IGNORE] * len(self.prompt) + self.completion)[:limit]
        return ids, labels


class JsonlData:
    """Examples from a JSONL file (see the module docstring), tokenized with the model's tokenizer."""

    def __init__(self, path: Path, tokenizer: PreTrainedTokenizerBase, *, max_tokens: int = 2048) -> None:
        self.source = str(path)
        self.digest = digest(path)
        raw = path.read_bytes()
        self.max_tokens = max_tokens
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad = int(pad) if pad is not None else 0
        examples = []
        for number, line in enumerate(raw.decode().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            examples.append(self._example(row, tokenizer, f"{path}:{number}"))
        if len(examples) < 2:
            raise ValueError(f"{path} holds {len(examples)} example(s); the fine-tune needs at least two")
        self.train, self.validation = ([examples[i] for i in part] for part in _split(len(examples), 0))

    @staticmethod
    def _example(row: Any, tokenizer: PreTrainedTokenizerBase, where: str) -> Example:
        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        if isinstance(row, dict) and isinstance(row.get("text"), str):
            return Example([], ids(row["text"]))
        if isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            return Example(ids(row["prompt"]), ids(row["completion"]))
        messages = row.get("messages") if isinstance(row, dict) else None
        if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
            if messages[-1].get("role") != "assistant" or len(messages) < 2:
                raise ValueError(f"{where}: messages must end with the assistant's reply (and have a prompt)")
            reply = messages[-1].get("content")
            if not isinstance(reply, str):
                raise ValueError(f"{where}: the assistant's reply must be text")
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            if not isinstance(prompt, str) or not isinstance(full, str):
                raise ValueError(f"{where}: the chat template did not render text")
            if full.startswith(prompt):
                return Example(ids(prompt), ids(full[len(prompt) :]))
            # Templates that open the thinking in the generation prompt (Qwen3's, the world's) render a
            # finished reply differently from a prompt awaiting one: the reply follows the prompt as written.
            end = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) else ""
            return Example(ids(prompt), ids(reply + end))
        raise ValueError(f"{where}: an example is {{'text'}}, {{'prompt', 'completion'}} or {{'messages'}}")

    def batch(self, step: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        rng = random.Random(seed * 1_000_003 + step)
        chosen = [self.train[rng.randrange(len(self.train))] for _ in range(size)]
        return _pad([e.row(self.max_tokens) for e in chosen], self.pad)

    def validation_batches(self, size: int) -> list[dict[str, torch.Tensor]]:
        rows = [e.row(self.max_tokens) for e in self.validation]
        return [_pad(rows[i : i + size], self.pad) for i in range(0, len(rows), size)]

    def prompts(self, split: str, count: int) -> list[list[int]]:
        examples = self.train if split == "train" else self.validation
        # Plain text has no prompt: its first half stands in for one.
        return [e.prompt or e.completion[: max(1, len(e.completion) // 2)] for e in examples[:count]]


class WorldData:
    """The world's training turns (``data/train.jsonl`` of a ``thrifty world build`` folder), batched as
    the world's own training batches them (``budgeter.world.training``), thinking cuts included."""

    def __init__(self, world: Path, *, problems: int | None = None) -> None:
        from thrifty.budgeter.world.build import read_chains
        from thrifty.budgeter.world.chat_format import THINK_END, build_tokenizer
        from thrifty.budgeter.world.solvers import load_specs
        from thrifty.budgeter.world.training import make_examples

        path = source_file(world)
        self.source = str(path)
        self.digest = digest(world)
        chains = read_chains(path)[:problems]
        train, validation = _split(len(chains), 0)
        self.tokenizer = build_tokenizer()
        think_end = self.tokenizer.convert_tokens_to_ids(THINK_END)
        if not isinstance(think_end, int):
            raise ValueError("the world's tokenizer has no single </think> token")
        self.think_end = think_end
        self.pad = int(self.tokenizer.pad_token_id)
        self.plan = load_specs().training["full"]
        self.train_chains = [chains[i] for i in train]
        self.validation_chains = [chains[i] for i in validation]
        self.train = make_examples(self.train_chains, self.tokenizer)
        self.validation = make_examples(self.validation_chains, self.tokenizer)

    def _batches(self, examples: list[Any], size: int, seed: int) -> Any:
        from dataclasses import replace

        from thrifty.budgeter.world.training import Batches

        return Batches(examples, replace(self.plan, batch_size=size), seed, self.think_end, self.pad)

    def batch(self, step: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = self._batches(self.train, size, seed)(step)
        return batch

    def validation_batches(self, size: int) -> list[dict[str, torch.Tensor]]:
        rows = [
            (e.prompt + e.thinking + e.tail, [IGNORE] * len(e.prompt) + e.thinking + e.tail)
            for e in sorted(self.validation, key=len)
        ]
        return [_pad(rows[i : i + size], self.pad) for i in range(0, len(rows), size)]

    def prompts(self, split: str, count: int) -> list[list[int]]:
        examples = self.train if split == "train" else self.validation
        return [e.prompt for e in examples[:count]]


def load_data(source: Path, tokenizer: PreTrainedTokenizerBase, *, max_tokens: int = 2048) -> TuningData:
    """A world build folder or a JSONL file."""
    if source.is_dir():
        return WorldData(source)
    return JsonlData(source, tokenizer, max_tokens=max_tokens)
