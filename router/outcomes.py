"""Evaluation outcomes as a (query × model) table, and importers that turn known datasets into logs.

A router learns from cells (query, model) → score, cost. Evaluation logs list observed cells one per
line (:mod:`thrifty.router.eval_log`); :class:`OutcomeTable` gathers them into dense arrays where an
unobserved cell is NaN, which is the form the routers, the partitioner and the evaluation share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thrifty.router.eval_log import EvalRecord

# The llmrouter data carry scores but no token counts; costs are estimated from the prompt's length and
# an assumed answer length (see README "Routing data"). Four characters per token is the usual rule of
# thumb for English text with BPE tokenizers of this generation.
CHARS_PER_TOKEN = 4.0
ASSUMED_COMPLETION_TOKENS = 256


@dataclass(frozen=True, slots=True)
class OutcomeTable:
    """Queries × models; NaN marks a cell nobody evaluated."""

    queries: tuple[str, ...]
    models: tuple[str, ...]
    scores: np.ndarray  # (Q, M) float64, in [0, 1] or NaN
    costs: np.ndarray  # (Q, M) float64, USD ≥ 0 or NaN
    tasks: tuple[str, ...]  # "" where a record had no task
    clients: tuple[str, ...]  # "" where a record had no client

    def __post_init__(self) -> None:
        shape = (len(self.queries), len(self.models))
        if self.scores.shape != shape or self.costs.shape != shape:
            raise ValueError(f"scores and costs must be {shape}")
        if len(self.tasks) != shape[0] or len(self.clients) != shape[0]:
            raise ValueError("one task and one client label per query")
        if not np.array_equal(np.isnan(self.scores), np.isnan(self.costs)):
            raise ValueError("a cell has a score without a cost or the reverse")

    @property
    def observed(self) -> np.ndarray:
        return np.asarray(~np.isnan(self.scores))

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, rows: Sequence[int] | np.ndarray) -> OutcomeTable:
        index = np.asarray(rows, dtype=np.int64)
        return OutcomeTable(
            queries=tuple(self.queries[i] for i in index),
            models=self.models,
            scores=self.scores[index],
            costs=self.costs[index],
            tasks=tuple(self.tasks[i] for i in index),
            clients=tuple(self.clients[i] for i in index),
        )

    def masked(self, keep: np.ndarray) -> OutcomeTable:
        """The same queries with only the cells where ``keep`` is true still observed."""
        scores = np.where(keep, self.scores, np.nan)
        costs = np.where(keep, self.costs, np.nan)
        return OutcomeTable(self.queries, self.models, scores, costs, self.tasks, self.clients)

    @classmethod
    def from_records(cls, records: Iterable[EvalRecord], models: Sequence[str] | None = None) -> OutcomeTable:
        """One row per distinct query (first-seen order); a repeated (query, model) cell is averaged.

        ``models`` fixes the columns and their order; records of other models are left out.
        """
        rows: dict[str, int] = {}
        cells: dict[tuple[int, str], list[tuple[float, float]]] = {}
        tasks: list[str] = []
        clients: list[str] = []
        for record in records:
            row = rows.setdefault(record.query, len(rows))
            if row == len(tasks):
                tasks.append(record.task or "")
                clients.append(record.client or "")
            cells.setdefault((row, record.model), []).append((record.score, record.cost))
        names = tuple(models) if models is not None else tuple(sorted({m for _, m in cells}))
        column = {name: j for j, name in enumerate(names)}
        scores = np.full((len(rows), len(names)), np.nan)
        costs = np.full((len(rows), len(names)), np.nan)
        for (row, model), values in cells.items():
            if model not in column:
                continue
            scores[row, column[model]] = sum(s for s, _ in values) / len(values)
            costs[row, column[model]] = sum(c for _, c in values) / len(values)
        return cls(tuple(rows), names, scores, costs, tuple(tasks), tuple(clients))

    def to_records(self) -> list[EvalRecord]:
        out = []
        for i, query in enumerate(self.queries):
            for j, model in enumerate(self.models):
                if not math.isnan(self.scores[i, j]):
                    out.append(
                        EvalRecord(
                            query=query,
                            model=model,
                            score=float(self.scores[i, j]),
                            cost=float(self.costs[i, j]),
                            task=self.tasks[i] or None,
                            client=self.clients[i] or None,
                        )
                    )
        return out


def concat(tables: list[OutcomeTable]) -> OutcomeTable:
    """The rows of several tables over the same models, in order."""
    models = tables[0].models
    if any(t.models != models for t in tables):
        raise ValueError("tables list different models")
    return OutcomeTable(
        queries=tuple(q for t in tables for q in t.queries),
        models=models,
        scores=np.concatenate([t.scores for t in tables]),
        costs=np.concatenate([t.costs for t in tables]),
        tasks=tuple(x for t in tables for x in t.tasks),
        clients=tuple(x for t in tables for x in t.clients),
    )


def estimated_cost(query: str, input_price: float, output_price: float) -> float:
    """USD for one answer: prompt tokens from the query's length, an assumed completion length."""
    prompt_tokens = math.ceil(len(query) / CHARS_PER_TOKEN)
    return (prompt_tokens * input_price + ASSUMED_COMPLETION_TOKENS * output_price) / 1e6


def import_llmrouter(folder: Path, splits: Sequence[str] = ("train",)) -> list[EvalRecord]:
    """LLMRouter's query × model outcomes (every model answered every query) as evaluation records.

    ``task`` is the dataset's ``cluster_id`` (``cluster-0`` …), the only task label it carries; its
    ``test.json`` has none (and shares 119 of its 500 questions with ``train.json``), so by default
    only ``train.json`` is read and partitions make their own test sets from it.
    """
    prices = json.loads((folder / "llm_candidates.json").read_text())
    records = []
    for split in splits:
        rows = json.loads((folder / f"{split}.json").read_text())
        for row in rows:
            for model, score in row["scores"].items():
                if model not in prices:
                    raise ValueError(f"{folder}/{split}.json: model '{model}' has no price in llm_candidates.json")
                price = prices[model]
                records.append(
                    EvalRecord(
                        query=row["question"],
                        model=model,
                        score=min(1.0, max(0.0, float(score))),
                        cost=estimated_cost(row["question"], price["input_price"], price["output_price"]),
                        task=f"cluster-{row['cluster_id']}" if "cluster_id" in row else None,
                        extra={"split": split},
                    )
                )
    return records
