"""Training a TAB policy with GRPO on a world's outcome table: resumable, with progress and a history.

One run is one seed of one policy under one problem budget B and penalty λ. It checkpoints (the
learner's tensors and the optimizer's as safetensors, the step and the history as JSON) every
``checkpoint_every`` steps, atomically; called again with the same checkpoint folder it continues
where it stopped, and because a step's problems and samples depend only on the seed and the step, a
resumed run ends where an uninterrupted one does. Every ``eval_every`` steps the greedy policy is
played on held-out validation problems, so the history shows whether reward rises on problems the
policy never trained on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.budgeter.tab.grpo import GrpoSettings, Learner, Trajectory, batch_of, rollout, update
from thrifty.budgeter.world.environment import BudgetEnv
from thrifty.server.kit.artifacts import swap_in
from thrifty.server.kit.checkpoints import load_optimizer, save_optimizer

PROGRESS = "progress.json"
LEARNER = "learner.safetensors"


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """How a problem's budget B is set: a fixed number of tokens, or so many per sub-question.

    The paper gives every problem the same B; with problems of 1 to 8 sub-questions, as here, a fixed
    B starves long problems and is slack on short ones, so B can also scale with the turns, as a client
    that knows its plan would set it (``thrifty.budget`` = tokens per step × steps).
    """

    tokens: int | None = None
    per_turn: int | None = None

    def __call__(self, problem: str, turns: int) -> int | None:
        return self.per_turn * turns if self.per_turn is not None else self.tokens

    @classmethod
    def parse(cls, text: str) -> BudgetRule:
        """``320`` (B = 320 per problem), ``96/turn`` (B = 96 per sub-question) or ``none``."""
        text = text.strip().lower()
        if text in ("none", "null", "unlimited"):
            return cls()
        number, per, unit = text.partition("/")
        if not number.isdigit() or int(number) < 1 or (per and unit not in ("turn", "step")):
            raise ValueError(f"a problem budget is N, N/turn or none, not '{text}'")
        return cls(per_turn=int(number)) if per else cls(tokens=int(number))

    def label(self) -> str:
        return (
            "none"
            if self.tokens is None and self.per_turn is None
            else (f"{self.per_turn}/turn" if self.per_turn is not None else str(self.tokens))
        )


def as_rule(budget: int | None | BudgetRule) -> BudgetRule:
    return budget if isinstance(budget, BudgetRule) else BudgetRule(tokens=budget)


@dataclass(frozen=True, slots=True)
class RunSettings:
    budget: int | None | BudgetRule  # B per problem (an int: the same for every problem)
    penalty: float  # λ
    seed: int
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    eval_every: int = 25
    checkpoint_every: int = 25
    thinking_price: float = 0.0  # μ, per thinking token used (0: TAB's reward)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    env: BudgetEnv,
    learner: Learner,
    problems: Sequence[str],
    budget: int | None | BudgetRule,
    penalty: float,
    thinking_price: float = 0.0,
) -> dict[str, float]:
    """The greedy policy on ``problems``: mean reward, problem accuracy, thinking and all tokens per problem."""
    played = rollout(env, learner, problems, 1, as_rule(budget), penalty, 1.0, None, thinking_price)
    return summarize(played)


def summarize(played: Sequence[Trajectory]) -> dict[str, float]:
    count = max(len(played), 1)
    return {
        "reward": sum(t.reward for t in played) / count,
        "accuracy": sum(t.solved for t in played) / count,
        "thinking": sum(t.thinking for t in played) / count,
        "tokens": sum(t.tokens for t in played) / count,
    }


def train(
    learner: Any,
    env: BudgetEnv,
    train_problems: Sequence[str],
    validation: tuple[BudgetEnv, Sequence[str]] | None,
    settings: RunSettings,
    checkpoint: Path,
    progress: Any = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train ``learner`` (a :class:`~thrifty.budgeter.tab.fast.FastLearner` or the LLM learner) in place.

    ``progress``: a tqdm-like bar (``update``, ``set_postfix``) or None. ``stop_at``: stop after that
    step, checkpointed, as if killed there (tests use it). Returns the history.
    """
    import torch

    grpo = settings.grpo
    budget = as_rule(settings.budget)
    optimizer = torch.optim.Adam(learner.parameters(), lr=grpo.learning_rate)
    state: dict[str, Any] = {"step": 0, "history": [], "train": []}
    if (checkpoint / PROGRESS).is_file():
        from safetensors.torch import load_file

        learner.load_state(load_file(checkpoint / LEARNER))
        load_optimizer(optimizer, checkpoint)
        state = json.loads((checkpoint / PROGRESS).read_text())
    elif learner.scales_features:
        # Standardise features by what the initial (uniform) policy meets on the training problems.
        rng = np.random.default_rng(settings.seed)
        met = rollout(env, learner, train_problems, 1, budget, settings.penalty, 1.0, rng)
        learner.fit_scaling([c for t in met for c in t.contexts])
    if progress is not None and state["step"]:
        progress.update(state["step"])

    def validate() -> None:
        if validation is not None:
            found = evaluate(
                validation[0], learner, validation[1], settings.budget, settings.penalty, settings.thinking_price
            )
            state["history"].append({"step": state["step"], **found})

    if not state["history"]:
        validate()
    while state["step"] < grpo.steps:
        step = state["step"]
        problems = batch_of(train_problems, grpo.problems_per_step, settings.seed, step)
        rng = np.random.default_rng([settings.seed, step])
        played = rollout(
            env, learner, problems, grpo.group, budget, settings.penalty, grpo.temperature, rng, settings.thinking_price
        )
        stats = update(learner, optimizer, played, grpo.group, grpo)
        state["step"] = step + 1
        state["train"].append({"step": state["step"], **{k: round(v, 5) for k, v in stats.items()}})
        if state["step"] % settings.eval_every == 0 or state["step"] == grpo.steps:
            validate()
        if progress is not None:
            progress.update(1)
            last = state["history"][-1] if state["history"] else {}
            progress.set_postfix(reward=f"{stats['reward']:.3f}", val=f"{last.get('reward', float('nan')):.3f}")
        if state["step"] % settings.checkpoint_every == 0 or state["step"] == stop_at:
            _checkpoint(learner, optimizer, state, checkpoint)
        if state["step"] == stop_at:
            break
    return state


def _checkpoint(learner: Any, optimizer: Any, state: dict[str, Any], folder: Path) -> None:
    from safetensors.torch import save_file

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in learner.state().items()}, partial / LEARNER)
    save_optimizer(optimizer, partial)
    (partial / PROGRESS).write_text(json.dumps(state))
    swap_in(partial, folder)
