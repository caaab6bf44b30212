"""Evaluation logs: what a router learns from. One JSON object per line, one line per (query, model).

Required fields: ``query`` (the text a router embeds), ``model`` (a model name), ``score`` (in [0, 1]:
1 right, 0 wrong, or a graded score) and ``cost`` (USD spent answering). Optional: ``task`` (a label
the per-task baseline may use), ``client`` (the organisation that owns the record, in federated
training). Any other field is kept as it is (the reasoning world adds ``bucket``, ``problem``, ``turn``
and ``tokens``). Writers and readers in thrifty all go through this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thrifty.server.kit.artifacts import write_text_atomic

REQUIRED = ("query", "model", "score", "cost")


class EvalLogError(ValueError):
    """A record does not follow the format; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class EvalRecord:
    query: str
    model: str
    score: float
    cost: float
    task: str | None = None
    client: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.query or not self.model:
            raise ValueError("query and model must be non-empty strings")
        if not (0.0 <= self.score <= 1.0):
            raise ValueError(f"score must be in [0, 1], got {self.score}")
        if not (math.isfinite(self.cost) and self.cost >= 0):
            raise ValueError(f"cost must be a finite number ≥ 0, got {self.cost}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"query": self.query, "model": self.model, "score": self.score, "cost": self.cost}
        if self.task is not None:
            data["task"] = self.task
        if self.client is not None:
            data["client"] = self.client
        return data | self.extra

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRecord:
        missing = [name for name in REQUIRED if name not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        known = {"query", "model", "score", "cost", "task", "client"}
        return cls(
            query=str(data["query"]),
            model=str(data["model"]),
            score=float(data["score"]),
            cost=float(data["cost"]),
            task=None if data.get("task") is None else str(data["task"]),
            client=None if data.get("client") is None else str(data["client"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


def write_eval_log(path: Path, records: Iterable[EvalRecord]) -> int:
    """Write atomically (a partial file never has the final name); returns the number of records."""
    lines = [json.dumps(record.to_json()) + "\n" for record in records]
    write_text_atomic(path, "".join(lines))
    return len(lines)


def read_eval_log(path: Path) -> Iterator[EvalRecord]:
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield EvalRecord.from_json(json.loads(line))
            except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
                raise EvalLogError(f"{path}:{number}: {exc}") from None
