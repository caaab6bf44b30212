"""Judging budget policies on a table: where each lands on accuracy against thinking tokens, and what
it saves against static budgets at equal accuracy.

A policy's **point** is its problem accuracy and mean thinking tokens used per problem (what the
solver actually thought, not what it was allowed) on a set of problems. The **static frontier** is
the points of the ladder's static levels (every turn the same budget, B not applied: what a user
without a budgeter runs), reduced to those no cheaper level matches, joined by straight lines.

The saving of a point is ``1 − its thinking / the frontier's thinking at its accuracy``. A point more
accurate than every static level is compared with the most accurate one (the best static level), so
the saving is then a lower bound: the static levels never reach that accuracy at any price.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from thrifty.budgeter.world.environment import BudgetEnv, Policy, run_episode


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    accuracy: float  # share of problems with every turn right
    thinking: float  # mean thinking tokens used per problem
    tokens: float  # mean completion tokens (thinking and answers) per problem
    accuracy_std: float = 0.0  # over seeds, for trained policies
    thinking_std: float = 0.0
    runs: int = 1

    def to_json(self) -> dict[str, float | str | int]:
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "thinking": self.thinking,
            "tokens": self.tokens,
            "accuracy_std": self.accuracy_std,
            "thinking_std": self.thinking_std,
            "runs": self.runs,
        }


def play(env: BudgetEnv, problems: Sequence[str], policy: Policy, name: str) -> Point:
    """``policy`` on every problem of ``problems``, one episode each."""
    if not problems:
        raise ValueError("a point needs at least one problem")
    episodes = [run_episode(env, problem, policy) for problem in problems]
    count = len(episodes)
    return Point(
        name,
        sum(e.correct for e in episodes) / count,
        sum(e.thinking_tokens for e in episodes) / count,
        sum(e.tokens for e in episodes) / count,
    )


def over_seeds(name: str, runs: Sequence[Point]) -> Point:
    """The mean point of several runs (seeds) of one policy, with the spread (sample std)."""
    if not runs:
        raise ValueError("no runs to average")

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    accuracy = [p.accuracy for p in runs]
    thinking = [p.thinking for p in runs]
    return Point(
        name,
        statistics.fmean(accuracy),
        statistics.fmean(thinking),
        statistics.fmean(p.tokens for p in runs),
        spread(accuracy),
        spread(thinking),
        len(runs),
    )


def frontier(points: Sequence[Point]) -> list[Point]:
    """The points no cheaper point matches in accuracy, cheapest first (accuracy strictly rising)."""
    kept: list[Point] = []
    for point in sorted(points, key=lambda p: (p.thinking, -p.accuracy)):
        if not kept or point.accuracy > kept[-1].accuracy:
            kept.append(point)
    return kept


def thinking_at(curve: Sequence[Point], accuracy: float) -> float:
    """The thinking the frontier ``curve`` needs to reach ``accuracy`` (linear between its points; its
    cheapest point's below it, its most accurate point's above it)."""
    if not curve:
        raise ValueError("an empty frontier")
    if accuracy <= curve[0].accuracy:
        return curve[0].thinking
    for low, high in zip(curve, curve[1:], strict=False):
        if accuracy <= high.accuracy:
            share = (accuracy - low.accuracy) / (high.accuracy - low.accuracy)
            return low.thinking + share * (high.thinking - low.thinking)
    return curve[-1].thinking


def saving(point: Point, curve: Sequence[Point]) -> float:
    """The share of thinking ``point`` saves against the static frontier at its accuracy (see above)."""
    reference = thinking_at(curve, point.accuracy)
    return 1.0 - point.thinking / reference if reference > 0 else 0.0
