"""The simulated organisations: Dirichlet shares, one observed model per training query, full test cells."""

from __future__ import annotations

import numpy as np
import pytest

from thrifty.router.outcomes import OutcomeTable
from thrifty.router.partition import PartitionPlan, partition


def _table(queries: int = 600, models: int = 5, seed: int = 0) -> OutcomeTable:
    rng = np.random.default_rng(seed)
    return OutcomeTable(
        queries=tuple(f"q{i}" for i in range(queries)),
        models=tuple(f"m{j}" for j in range(models)),
        scores=rng.integers(0, 2, (queries, models)).astype(float),
        costs=np.tile(np.linspace(1.0, 5.0, models), (queries, 1)),
        tasks=tuple(f"t{i % 3}" for i in range(queries)),
        clients=("",) * queries,
    )


def test_every_query_lands_in_exactly_one_client_split() -> None:
    table = _table()
    clients = partition(table, PartitionPlan(clients=5, min_queries=20), seed=1)
    seen = [q for c in clients for part in (c.train, c.validation, c.test) for q in part.queries]
    assert sorted(seen) == sorted(table.queries)
    for c in clients:
        total = len(c.train) + len(c.validation) + len(c.test)
        assert abs(len(c.test) - 0.25 * total) <= 1
        assert set(c.train.clients) == {c.name}
        assert (c.train.observed.sum(1) == 1).all() and (c.validation.observed.sum(1) == 1).all()
        assert c.test.observed.all()


def test_dirichlet_shares_are_uneven_and_the_seed_redraws_them() -> None:
    table = _table(queries=3000)
    plan = PartitionPlan(clients=10, min_queries=20)
    first = partition(table, plan, seed=0)
    second = partition(table, plan, seed=1)
    sizes = [len(c.train) + len(c.validation) + len(c.test) for c in first]
    assert max(sizes) > 2 * min(sizes)  # α = 0.6 over tasks: far from an even split
    assert sizes != [len(c.train) + len(c.validation) + len(c.test) for c in second]
    # α = 0.45 over models: a client's training cells concentrate on a few models
    top_share = [np.sort(c.train.observed.sum(0))[-2:].sum() / len(c.train) for c in first]
    assert np.mean(top_share) > 0.6
    again = partition(table, plan, seed=0)
    assert [c.train.queries for c in again] == [c.train.queries for c in first]


def test_impossible_partitions_are_refused() -> None:
    with pytest.raises(ValueError, match="could not give"):
        partition(_table(queries=50), PartitionPlan(clients=10, min_queries=40), seed=0)
    with pytest.raises(ValueError):
        PartitionPlan(task_alpha=0)
