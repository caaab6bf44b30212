"""What a TAB policy sees before a turn, and the feature vector the fast policy reads.

One :class:`Context` is built the same way in training (from the budget environment's observation)
and in the gateway (from the request's messages and the session's ledger), so a policy sees in serving
exactly what it was trained on:

- the conversation so far, ending with this turn's sub-question;
- the turn's index, the problem's token budget B and what its turns have spent (completion tokens,
  thinking included: the session's ledger), and the last turn's budget and thinking tokens;
- with **All-SubQ**, the plan: every sub-question of the problem, past and future.

The feature vector (:func:`featurize`) is the numbers below: where the problem stands
(:data:`STATE`), what the turn asks for (:data:`TEXT`), with All-SubQ what the plan still holds
(:data:`PLAN`), then the static embedder's vector of the sub-question when the policy has one. A
policy artifact stores the names, so a vector of another layout is refused instead of misread.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import numpy as np

from thrifty.budgeter.tab.difficulty import Difficulty, estimate, estimate_turn, stated_values, text_of

if TYPE_CHECKING:
    from thrifty.budgeter.world.environment import Observation

_LOG_SCALE = 12.0  # log2 of budgets in the tens of thousands stays within [0, 1]


@dataclass(frozen=True, slots=True)
class Context:
    messages: tuple[Mapping[str, object], ...]  # the conversation so far, this turn's sub-question last
    turn: int  # 0-based
    budget: int | None  # the problem's token budget B (None: not limited)
    spent: int  # completion tokens the problem's earlier turns used
    last_budget: int | None = None  # the thinking budget the previous turn had (None: first turn, or unlimited)
    last_thinking: int = 0  # thinking tokens the previous turn used
    plan: tuple[str, ...] | None = None  # every sub-question of the problem (All-SubQ), if known

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(self.budget - self.spent, 0)

    @property
    def sub_question(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return text_of(message.get("content"))
        return ""

    def difficulty(self) -> Difficulty:
        return estimate_turn(self.messages)

    def future(self) -> tuple[str, ...]:
        """The plan's sub-questions after this turn's (empty without a plan)."""
        return () if self.plan is None else self.plan[self.turn + 1 :]


STATE: tuple[str, ...] = (
    "turn",
    "first_turn",
    "log_budget",
    "no_budget",
    "remaining_fraction",
    "log_remaining",
    "log_spent_per_turn",
    "log_last_budget",
    "log_last_thinking",
    "last_hit_budget",
)
TEXT: tuple[str, ...] = (
    "parsed",
    "log_digit_steps",
    "operators",
    "log_longest",
    "references",
    "log_digits",
    "log_length",
    "log_working",
)
PLAN: tuple[str, ...] = (
    "has_plan",
    "log_future_turns",
    "log_future_steps",
    "log_future_longest",
    "share_of_remaining_steps",
)
SCALARS = STATE + TEXT


def feature_names(all_subq: bool, embedding_dim: int) -> tuple[str, ...]:
    names = SCALARS + (PLAN if all_subq else ())
    return names + tuple(f"embedding_{i}" for i in range(embedding_dim))


def _log(value: float, scale: float = _LOG_SCALE) -> float:
    return math.log2(1.0 + max(value, 0.0)) / scale


def state_scalars(context: Context) -> list[float]:
    """Where the problem stands: the turn, B and what is left of it, the last turn's budget and use."""
    budget, remaining = context.budget, context.remaining
    last_budget = context.last_budget
    hit = last_budget is not None and context.last_thinking >= max(last_budget - 1, 0)
    return [
        min(context.turn, 15) / 15,
        float(context.turn == 0),
        0.0 if budget is None else _log(budget),
        float(budget is None),
        1.0 if budget is None or budget == 0 else (remaining or 0) / budget,
        1.0 if remaining is None else _log(remaining),
        _log(context.spent / context.turn) if context.turn else 0.0,
        0.0 if last_budget is None else _log(last_budget),
        _log(context.last_thinking),
        float(hit),
    ]


def text_scalars(context: Context, all_subq: bool) -> list[float]:
    """What the turn asks for (its difficulty), and with All-SubQ what the plan still holds."""
    found = context.difficulty()
    values = [
        float(found.parsed),
        _log(found.digit_steps, 6.0),
        min(found.operators, 8) / 8,
        _log(found.longest, 6.0),
        min(found.references, 4) / 4,
        _log(found.digits, 8.0),
        _log(found.length, 12.0),
        _log(found.working, 11.0),
    ]
    if all_subq:
        values += _plan_scalars(context, found)
    return values


def scalars(context: Context, all_subq: bool) -> list[float]:
    """The numeric features of a context, in :data:`SCALARS` (+ :data:`PLAN`) order."""
    return state_scalars(context) + text_scalars(context, all_subq)


def _plan_scalars(context: Context, current: Difficulty) -> list[float]:
    if context.plan is None:
        return [0.0] * len(PLAN)
    future = context.future()
    # Future sub-questions name results not computed yet: their sizes are unknown, so they are worked
    # out with every unknown name standing for a 2-digit value, a typical size in these chains.
    values = dict(stated_values(context.messages))
    estimates = []
    for text in future:
        guesses = dict(values)
        for name in _names(text):
            guesses.setdefault(name, _TYPICAL)
        estimates.append(estimate(text, guesses))
    steps = sum(d.need for d in estimates)
    longest = max((d.longest for d in estimates), default=0)
    share = current.need / (current.need + steps) if current.need + steps else 1.0
    return [1.0, _log(len(future), 4.0), _log(steps, 8.0), _log(longest, 6.0), share]


_TYPICAL = Decimal(42)
_NAME = re.compile(r"\bx\d+\b")


def _names(text: str) -> list[str]:
    """The names a sub-question's expression uses ("x3 = x1*x2" uses x1 and x2)."""
    return _NAME.findall(text.partition("=")[2])


def featurize(
    contexts: Sequence[Context],
    all_subq: bool,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> np.ndarray:
    """(len(contexts), features) float32: the scalars, then the embedder's vector of each sub-question.

    ``embed``: a callable ``list[str] -> (n, dim) array`` (a static embedder's ``encode``), or None.
    """
    rows = np.asarray([scalars(c, all_subq) for c in contexts], dtype=np.float32).reshape(len(contexts), -1)
    if embed is None:
        return rows
    vectors = np.asarray(embed([c.sub_question or " " for c in contexts]), dtype=np.float32)
    return np.concatenate([rows, vectors.reshape(len(contexts), -1)], axis=1)


def context_of(observation: Observation, budget: int | None, all_subq: bool) -> Context:
    """The context of a budget-environment observation, for a problem given the token budget ``budget``."""
    return Context(
        messages=observation.messages,
        turn=observation.turn,
        budget=budget,
        spent=observation.spent,
        last_budget=observation.budgets[-1] if observation.budgets else None,
        last_thinking=observation.thinking[-1] if observation.thinking else 0,
        plan=observation.sub_questions if all_subq else None,
    )


def context_from_messages(
    messages: Sequence[Mapping[str, object]],
    turn: int,
    budget: int | None,
    spent: int,
    last_budget: int | None = None,
    last_thinking: int = 0,
    plan: Sequence[str] | None = None,
) -> Context:
    return Context(
        tuple(messages), turn, budget, spent, last_budget, last_thinking, None if plan is None else tuple(plan)
    )
