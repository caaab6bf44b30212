"""Simulated organisations, drawn as in "Federate the Router" (arXiv 2601.22318).

Queries go to clients by a Dirichlet over task labels (α = 0.6: each task is spread unevenly over the
clients), and each client evaluated its own few models: a Dirichlet over models (α = 0.45) gives its
preferences and every training query keeps one observed model drawn from them. Each client's queries
split 75/25 into training and test; the training part gives up a validation share for model
selection. Test cells stay fully observed, because evaluation needs every model's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from thrifty.router.outcomes import OutcomeTable


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    clients: int = 10
    task_alpha: float = 0.6
    model_alpha: float = 0.45
    test_fraction: float = 0.25
    validation_fraction: float = 0.15  # of a client's training queries
    min_queries: int = 40  # a draw that leaves a client fewer queries is redrawn

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError("clients must be ≥ 1")
        if self.task_alpha <= 0 or self.model_alpha <= 0:
            raise ValueError("Dirichlet concentrations must be > 0")
        if not (0 <= self.test_fraction < 1 and 0 <= self.validation_fraction < 1):
            raise ValueError("the test and validation fractions must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class ClientData:
    """One organisation's private data: sparse training and validation cells, a fully observed test set."""

    name: str
    train: OutcomeTable
    validation: OutcomeTable
    test: OutcomeTable
    model_preference: np.ndarray  # the Dirichlet draw behind which models it evaluated


def _assign_queries(tasks: tuple[str, ...], plan: PartitionPlan, rng: np.random.Generator) -> list[np.ndarray]:
    labels = sorted(set(tasks))
    task_of = np.array(tasks)
    by_task = {label: np.flatnonzero(task_of == label) for label in labels}
    for _ in range(1000):
        owners: list[list[int]] = [[] for _ in range(plan.clients)]
        for label in labels:
            rows = rng.permutation(by_task[label])
            shares = rng.dirichlet(np.full(plan.clients, plan.task_alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, part in enumerate(np.split(rows, cuts)):
                owners[client].extend(part.tolist())
        if min(len(o) for o in owners) >= plan.min_queries:
            return [np.sort(np.array(o, dtype=np.int64)) for o in owners]
    raise ValueError(
        f"could not give each of {plan.clients} clients {plan.min_queries} queries from {len(tasks)}: "
        "use fewer clients or a lower min_queries"
    )


def _one_model_per_query(table: OutcomeTable, preference: np.ndarray, rng: np.random.Generator) -> OutcomeTable:
    """Keep one observed cell per query, drawn from the client's preference over the models it has."""
    keep = np.zeros(table.scores.shape, dtype=bool)
    for i, available in enumerate(table.observed):
        weights = preference * available
        if weights.sum() == 0:
            continue
        keep[i, rng.choice(len(weights), p=weights / weights.sum())] = True
    return table.masked(keep)


def partition(table: OutcomeTable, plan: PartitionPlan, seed: int) -> list[ClientData]:
    rng = np.random.default_rng(seed)
    clients = []
    for number, rows in enumerate(_assign_queries(table.tasks, plan, rng)):
        name = f"client-{number}"
        mine = table.subset(rng.permutation(rows))
        mine = replace(mine, clients=(name,) * len(mine))
        n_test = max(1, round(len(mine) * plan.test_fraction)) if plan.test_fraction > 0 else 0
        n_validation = round((len(mine) - n_test) * plan.validation_fraction)
        preference = rng.dirichlet(np.full(len(table.models), plan.model_alpha))
        positions = np.arange(len(mine))
        clients.append(
            ClientData(
                name=name,
                train=_one_model_per_query(mine.subset(positions[n_test + n_validation :]), preference, rng),
                validation=_one_model_per_query(
                    mine.subset(positions[n_test : n_test + n_validation]), preference, rng
                ),
                test=mine.subset(positions[:n_test]),
                model_preference=preference,
            )
        )
    return clients
