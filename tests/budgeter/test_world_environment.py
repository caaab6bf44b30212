"""The budget environment over an outcome table: reset/step, episodes, the oracle, the live comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.budgeter import world_tables
from thrifty.budgeter.world.environment import (
    EnvError,
    TableEnv,
    compare_live,
    oracle_allocation,
    run_episode,
    static,
)
from thrifty.budgeter.world.outcomes import UNLIMITED, OutcomeTable, first_working_end
from thrifty.budgeter.world.solvers import load_specs


def _env(**kwargs: bool) -> TableEnv:
    return TableEnv(world_tables.table(**kwargs), world_tables.chains())


def test_reset_shows_the_problem_and_step_answers_from_the_table() -> None:
    env = _env()
    first = env.reset("p1")
    assert (first.problem, first.turn, first.turns, first.spent) == ("p1", 0, 2, 0)
    assert first.sub_question == "x1 = 2+3" and first.sub_questions == ("x1 = 2+3", "x2 = x1*123456")
    assert first.messages == ({"role": "user", "content": "x1 = 2+3"},)
    result = env.step(16)
    assert (result.correct, result.thinking_tokens, result.answer_tokens, result.done) == (True, 15, 3, False)
    second = result.observation
    assert second is not None and second.turn == 1 and second.spent == 18 and second.spent_thinking == 15
    assert second.budgets == (16,) and second.thinking == (15,)  # what the earlier turns had and used
    assert second.messages[-2:] == (
        {"role": "assistant", "content": "x1 is 5"},  # the gold history the table was measured with
        {"role": "user", "content": "x2 = x1*123456"},
    )
    last = env.step(None)
    assert last.correct and last.thinking_tokens == 200 and last.done and last.problem_correct is True
    assert last.observation is None


def test_a_budget_at_or_past_the_thinking_is_the_unlimited_outcome() -> None:
    env = _env()
    env.reset("p2")
    result = env.step(64)  # p2 thinks 20 tokens: a budget of 64 never cuts it
    assert result.thinking_tokens == 20 and result.done and result.problem_correct


def test_wrong_calls_are_refused_clearly() -> None:
    env = _env()
    with pytest.raises(EnvError, match="reset"):
        env.step(16)
    with pytest.raises(EnvError, match="no problem 'nope'"):
        env.reset("nope")
    env.reset("p2")
    with pytest.raises(EnvError, match="not on the ladder"):
        env.step(32)
    env.step(0)
    with pytest.raises(EnvError, match="reset"):
        env.step(16)  # the problem is over


def test_episodes_oracle_and_static_budgets() -> None:
    env = _env()
    at_64 = run_episode(env, "p1", static(64))
    assert not at_64.correct and at_64.turns_correct == (True, False) and at_64.tokens == 33 + 67
    unlimited = run_episode(env, "p1", static(None))
    assert unlimited.correct and unlimited.tokens == 33 + 204 and unlimited.thinking_tokens == 230
    solved, budgets, tokens = oracle_allocation(env.table, "p1")
    assert solved and budgets == (16, None) and tokens == 18 + 204


def test_the_live_comparison_agrees_with_itself_and_sees_a_difference() -> None:
    same = compare_live(_env(), _env, ["p1", "p2"], [16, 64, None], workers=2)
    assert set(same) == {"16", "64", "none"}
    assert all(row["same_outcome"] == row["same_tokens"] == 1.0 for row in same.values())
    assert same["none"]["accuracy_table"] == same["none"]["accuracy_live"] == 1.0
    other = compare_live(_env(), lambda: _env(hard_right_at_64=True), ["p1", "p2"], [64], workers=2)
    assert other["64"]["accuracy_table"] == 0.5 and other["64"]["accuracy_live"] == 1.0
    assert other["64"]["same_outcome"] == 0.5


def test_tables_round_trip_and_know_their_rungs(tmp_path: Path) -> None:
    table = world_tables.table()
    table.write(tmp_path / "t.jsonl")
    again = OutcomeTable.read(tmp_path / "t.jsonl")
    assert again == table
    row = again.rows[0]
    assert row.outcome(64) is row.levels[UNLIMITED]
    assert row.outcome(31) is row.levels[UNLIMITED]  # it thinks 30 tokens, and a budget of 31 leaves 30
    with pytest.raises(KeyError, match="ladder"):
        row.outcome(30)  # leaves 29: it would be cut, and the table has no such rung
    with pytest.raises(KeyError, match="ladder"):
        again.rows[1].outcome(32)
    assert first_working_end("x1 is 2\n2+3: 2+3=5 =5\ncheck 1\n5-3: 5-3=2 =2 ok") == len("x1 is 2\n2+3: 2+3=5 =5")
    assert first_working_end("2+3: 2+3=5 =5") is None
    results = again.turn_results(load_specs().solvers["dense-s"])
    assert len(results) == 3 * 4 and {r.budget for r in results} == {0, 16, 64, None}
