"""A multi-turn chat session: its turns and its token ledger.

Thinking budgets are per *problem*: a session carries the problem's total budget B and what its turns
have spent. "Spent" counts completion tokens (reasoning included) — the tokens a model generated
for the problem; prompt tokens are recorded per turn but are not spending.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Turn:
    """One answered request of a session."""

    model: str
    thinking_budget: int | None
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    latency_s: float
    finish_reason: str | None
    at: float  # unix time the turn finished
    routing: dict[str, float] | None = None  # a learned router's λ and predicted accuracy and cost
    budgeting: dict[str, Any] | None = None  # the budget decision: policy, budget, the policy's distribution

    @property
    def spent(self) -> int:
        return self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Turn:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def to_row(self) -> list[Any]:
        """The fields in order, without their names: the compact form a process keeps in memory."""
        return [getattr(self, name) for name in self.__dataclass_fields__]

    @classmethod
    def from_row(cls, row: list[Any]) -> Turn:
        return cls(*row)


@dataclass(slots=True)
class Session:
    """What the gateway knows of a conversation. ``turns`` may hold only the most recent ones."""

    id: str
    created_at: float
    budget: int | None  # the problem's total token budget B; None for unlimited
    spent: int = 0
    turn_count: int = 0
    turns: list[Turn] = field(default_factory=list)
    plan: tuple[str, ...] | None = None  # the problem's sub-questions (``thrifty.plan``), if a turn sent them

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(self.budget - self.spent, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thrifty.session",
            "created_at": self.created_at,
            "budget": self.budget,
            "spent": self.spent,
            "remaining": self.remaining,
            "turn_count": self.turn_count,
            "plan": None if self.plan is None else list(self.plan),
            "turns": [t.to_json() for t in self.turns],
        }
