"""Train one solver from scratch on the world's training chains: resumable, with a progress bar.

Each example is one turn: the conversation so far (earlier answers only, as the chat template shows
them) and the step's thinking (first working, any redo, check rounds: :mod:`thrifty.budgeter.world.thinking`)
with the answer. A fraction of examples have their thinking cut at a random point and ``</think>``
forced right there, as vLLM's thinking budget does; in those the loss covers only the answer, which is
the best result so far (the latest completed working's), so the model learns to answer from partial
thinking without learning to stop thinking early by itself. Some of the cuts land next to the end of
a working, where that answer changes (``boundary_fraction``), many of those exactly at it
(``end_fraction``): a budget that stops thinking right after ``=40`` leaves the solver to tell 40
from the first digits of 400, which small solvers get wrong unless trained on it.

Checkpoints (model, AdamW state as safetensors, progress as JSON) are written atomically every
``checkpoint_every_s``; a restarted job continues from the last one. The batch of step ``s`` depends
only on the seed and ``s``, so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty.budgeter.world.chains import Chain, Step
from thrifty.budgeter.world.chat_format import (
    THINK_END,
    answer_text,
    build_tokenizer,
    completion,
    messages_for,
    render_prompt,
)
from thrifty.budgeter.world.solvers import SolverSpec, TrainingPlan
from thrifty.budgeter.world.thinking import stated_at
from thrifty.server.kit.artifacts import swap_in
from thrifty.server.kit.checkpoints import load_optimizer, save_optimizer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

IGNORE = -100
BOUNDARY = 3  # a boundary cut lands this many tokens either side of a working's end, or closer
CHECKPOINT = "checkpoint"


@dataclass(frozen=True, slots=True)
class Example:
    prompt: list[int]
    thinking: list[int]  # the first working, any redo, the check rounds (thrifty.budgeter.world.thinking)
    tail: list[int]  # "\n</think>\n\n<answer><|im_end|>"
    answers: tuple[tuple[int, list[int]], ...]  # (from which thinking token on, the answer after a forced </think>)
    guess: list[int]  # the answer after a forced </think> before any working is complete: the right one

    def __len__(self) -> int:
        return len(self.prompt) + len(self.thinking) + len(self.tail)

    def answer_at(self, cut: int) -> list[int]:
        """What follows a ``</think>`` forced after ``cut`` thinking tokens: the best result so far."""
        return stated_at(self.answers, cut, self.guess)


def make_examples(chains: list[Chain], tokenizer: PreTrainedTokenizerFast) -> list[Example]:
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def after_forced_end(step: Step, value: str) -> list[int]:
        full = completion("", answer_text(replace(step, value=value)))
        return ids(full[len(f"\n{THINK_END}") :])

    examples = []
    for chain in chains:
        for turn, step in enumerate(chain.steps):
            thinking = ids(step.thinking)
            if len(thinking) != len(step.thinking):  # positions are characters: one byte, one token
                raise ValueError(f"thinking of {chain.id} turn {turn} is not one token per character")
            full = completion(step.thinking, answer_text(step))
            examples.append(
                Example(
                    ids(render_prompt(messages_for(chain, turn))),
                    thinking,
                    ids(full[len(step.thinking) :]),
                    tuple((position, after_forced_end(step, value)) for position, value in step.results),
                    after_forced_end(step, step.value),
                )
            )
    return examples


def _sequence(example: Example, cut: int | None, think_end: int) -> tuple[list[int], list[int]]:
    if cut is None:
        ids = example.prompt + example.thinking + example.tail
        labels = [IGNORE] * len(example.prompt) + example.thinking + example.tail
    else:
        forced = example.prompt + example.thinking[:cut] + [think_end]
        answer = example.answer_at(cut)
        ids = forced + answer
        labels = [IGNORE] * len(forced) + answer
    return ids, labels


class TrainingInterrupted(RuntimeError):
    """Training stopped on request after a checkpoint; calling ``train_solver`` again resumes it."""


class TrainingTooSlow(RuntimeError):
    """Training ran past its plan's ``max_minutes``; it stopped at a checkpoint and resumes when run again."""


class Batches:
    """Step → batch, deterministic: examples of similar length are drawn together to waste less padding."""

    def __init__(self, examples: list[Example], plan: TrainingPlan, seed: int, think_end: int, pad: int) -> None:
        self.examples = sorted(examples, key=len)
        self.plan = plan
        self.seed = seed
        self.think_end = think_end
        self.pad = pad

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        import torch

        rng = random.Random(self.seed * 1_000_003 + step)
        size = self.plan.batch_size
        window = min(len(self.examples), size * 8)
        start = rng.randrange(len(self.examples) - window + 1)
        chosen = [self.examples[start + rng.randrange(window)] for _ in range(size)]
        rows = []
        for example in chosen:
            cut = None
            if rng.random() < self.plan.truncated_fraction:
                cut = self._cut(example, rng)
            rows.append(_sequence(example, cut, self.think_end))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((size, width), self.pad, dtype=torch.long)
        labels = torch.full((size, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        for i, (ids, target) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(target)] = torch.tensor(target)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}

    def _cut(self, example: Example, rng: random.Random) -> int:
        """Where a cut example's thinking stops: anywhere, or (``boundary_fraction``) next to a working's end.

        Just before and just after a result is complete are where the forced answer changes (from the
        guess to that result, or from the hurried result to the redone one), and a uniform cut lands
        there only about once in a hundred; without these, a solver cut right after ``=60`` tends to
        answer as if the number went on (600).
        """
        if example.answers and rng.random() < self.plan.boundary_fraction:
            position = example.answers[rng.randrange(len(example.answers))][0]
            if rng.random() < self.plan.end_fraction:
                return position
            return min(len(example.thinking), max(0, position + rng.randint(-BOUNDARY, BOUNDARY)))
        return rng.randrange(len(example.thinking) + 1)


class _StepLoss:
    """The model's loss for one batch: eager, or through ``torch.compile`` (dynamic shapes: widths vary).

    Inductor compiles C++ kernels for the CPU; without a C++ compiler, or if Dynamo or Inductor fails on
    the forward pass, the step runs eagerly from then on, with a warning: the same training, only slower.
    The compiled module shares the model's parameters, so checkpoints and the saved model are the plain
    model's. ``compiled`` says whether the compiled step is (still) the one running.
    """

    def __init__(self, model: PreTrainedModel, name: str, compiled: bool) -> None:
        import torch

        self.model = model
        self.name = name
        self.compiled = compiled
        if compiled and not (
            os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        ):
            logger.warning("training %s eagerly: torch.compile needs a C++ compiler (none found; set CXX)", name)
            self.compiled = False
        self.forward = torch.compile(model, dynamic=True) if self.compiled else model

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from torch._dynamo.exc import TorchDynamoException  # wraps Inductor's failures too

        if self.compiled:
            try:
                return self.forward(**batch).loss  # type: ignore[no-any-return]
            except TorchDynamoException as error:
                logger.warning("training %s eagerly: torch.compile failed (%s)", self.name, str(error)[:500])
                self.compiled = False
        return self.model(**batch).loss  # type: ignore[no-any-return]


def _learning_rate(plan: TrainingPlan, step: int) -> float:
    if step < plan.warmup_steps:
        return plan.learning_rate * (step + 1) / plan.warmup_steps
    progress = (step - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
    return plan.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# --- checkpoints: safetensors and JSON only ----------------------------------------------------------


def _save_checkpoint(
    model: PreTrainedModel, optimizer: torch.optim.Optimizer, progress: dict[str, Any], folder: Path
) -> None:
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    save_optimizer(optimizer, partial)
    (partial / "progress.json").write_text(json.dumps(progress))
    swap_in(partial, folder)


def train_solver(
    spec: SolverSpec,
    plan: TrainingPlan,
    chains: list[Chain],
    out: Path,
    seed: int,
    progress_bar: bool = True,
    stop_at: int | None = None,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into ``out`` (a Hugging Face folder) and return its training record.

    ``checkpoint``: where to keep the resumable state (default: beside ``out``); a job passes its stage's.

    ``stop_at``: checkpoint and raise :class:`TrainingInterrupted` once that many steps are done, as
    if the job had been killed there (tests use it to check that a resumed run matches a straight one).
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    think_end = tokenizer.convert_tokens_to_ids(THINK_END)
    if not isinstance(think_end, int):
        raise TypeError("the tokenizer has no single </think> token")
    config = spec.model_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    checkpoint = checkpoint or out.with_name(out.name + "." + CHECKPOINT)
    progress: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "losses": []}
    if (checkpoint / "progress.json").exists():
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        progress = json.loads((checkpoint / "progress.json").read_text())
        logger.info("resuming %s at step %d", spec.name, progress["step"])
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay, betas=(0.9, 0.98)
    )
    if progress["step"]:
        load_optimizer(optimizer, checkpoint)
    batches = Batches(make_examples(chains, tokenizer), plan, seed, think_end, int(tokenizer.pad_token_id))
    step_loss = _StepLoss(model, spec.name, plan.compiled)
    limit_s = plan.max_minutes * 60
    started = time.monotonic() - progress["elapsed_s"]
    last_checkpoint = time.monotonic()
    bar = tqdm(total=plan.steps, initial=progress["step"], desc=f"train {spec.name}", disable=not progress_bar)
    window: list[float] = []
    while progress["step"] < plan.steps:
        if time.monotonic() - started >= limit_s:
            _save_checkpoint(model, optimizer, progress, checkpoint)
            bar.close()
            raise TrainingTooSlow(
                f"training {spec.name} did {progress['step']} of {plan.steps} steps in {plan.max_minutes:g} minutes, "
                "its safety limit (max_minutes in solvers.yaml): this machine is much slower than expected, or "
                "busy. It stopped at a checkpoint; run the build again to continue from there."
            )
        step = progress["step"]
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(plan, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.autocast):
            loss = step_loss(batches(step))
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        progress["step"] = step + 1
        progress["elapsed_s"] = time.monotonic() - started
        if len(window) == 20 or progress["step"] == plan.steps:
            progress["losses"].append([progress["step"], sum(window) / len(window)])
            bar.set_postfix(loss=f"{progress['losses'][-1][1]:.3f}")
            window = []
        bar.update(1)
        if time.monotonic() - last_checkpoint >= plan.checkpoint_every_s or progress["step"] == stop_at:
            _save_checkpoint(model, optimizer, progress, checkpoint)
            last_checkpoint = time.monotonic()
        if progress["step"] == stop_at:
            bar.close()
            raise TrainingInterrupted(f"stopped after step {stop_at}")
    bar.close()
    model.eval()  # type: ignore[no-untyped-call]
    model.config.use_cache = True
    if spec.is_moe:
        model.config.output_router_logits = False  # serving needs only the tokens
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "solver": spec.name,
        "architecture": spec.architecture,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": progress["step"],
        "train_seconds": round(progress["elapsed_s"], 1),
        "final_loss": progress["losses"][-1][1] if progress["losses"] else None,
        "losses": progress["losses"],
        "examples": len(batches.examples),
        "compiled": step_loss.compiled,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(checkpoint, ignore_errors=True)
    return record
