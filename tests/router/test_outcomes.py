"""Evaluation records ↔ the (query × model) table, and the LLMRouter importer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from thrifty.router.eval_log import EvalRecord
from thrifty.router.outcomes import (
    ASSUMED_COMPLETION_TOKENS,
    OutcomeTable,
    concat,
    estimated_cost,
    import_llmrouter,
)

LLMROUTER = Path(__file__).parents[2].parent / "shared" / "data" / "routing" / "llmrouter"


def test_table_from_records_marks_unobserved_cells_and_averages_repeats() -> None:
    records = [
        EvalRecord("q1", "a", 1.0, 0.1, task="t1", client="c1"),
        EvalRecord("q1", "b", 0.0, 0.3),
        EvalRecord("q2", "a", 0.0, 0.2, task="t2"),
        EvalRecord("q2", "a", 1.0, 0.4, task="t2"),
    ]
    table = OutcomeTable.from_records(records)
    assert table.queries == ("q1", "q2") and table.models == ("a", "b")
    assert table.tasks == ("t1", "t2") and table.clients == ("c1", "")
    assert table.scores[1, 0] == 0.5 and math.isclose(table.costs[1, 0], 0.3)
    assert np.isnan(table.scores[1, 1]) and np.isnan(table.costs[1, 1])
    assert table.observed.tolist() == [[True, True], [True, False]]
    again = OutcomeTable.from_records(table.to_records())
    assert np.array_equal(again.scores, table.scores, equal_nan=True)


def test_table_rejects_a_score_without_a_cost() -> None:
    with pytest.raises(ValueError, match="score without a cost"):
        OutcomeTable(("q",), ("a",), np.array([[1.0]]), np.array([[np.nan]]), ("",), ("",))


def test_llmrouter_import_prices_every_cell_with_the_documented_token_assumption() -> None:
    records = import_llmrouter(LLMROUTER)
    table = OutcomeTable.from_records(records)
    assert len(table) == 5608 and len(table.models) == 9
    assert table.observed.all()
    assert {t for t in table.tasks} == {"cluster-0", "cluster-1", "cluster-2"}
    small_record = next(r for r in records if r.model == "llama3-chatqa-1.5-8b")
    # llm_candidates.json: 0.2 USD per million tokens, in and out, for this model
    expected = (math.ceil(len(small_record.query) / 4) + ASSUMED_COMPLETION_TOKENS) * 0.2 / 1e6
    assert math.isclose(small_record.cost, expected)
    big = table.models.index("llama-3.1-nemotron-51b-instruct")
    small = table.models.index("qwen2.5-7b-instruct")
    assert (table.costs[:, big] > table.costs[:, small]).all()
    assert estimated_cost("abcd", 1.0, 0.0) == 1e-6


def test_concat_keeps_rows_in_order() -> None:
    table = OutcomeTable(
        tuple(f"q{i}" for i in range(10)),
        ("a", "b"),
        np.arange(20.0).reshape(10, 2) / 20,
        np.ones((10, 2)),
        ("",) * 10,
        ("",) * 10,
    )
    joined = concat([table.subset([0, 1]), table.subset([5])])
    assert joined.queries == ("q0", "q1", "q5")
    assert np.array_equal(joined.scores, table.scores[[0, 1, 5]])
