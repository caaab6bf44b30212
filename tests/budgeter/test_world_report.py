"""The world's summaries: accuracies per budget and bucket, problem accuracy, the budget a bucket needs."""

from __future__ import annotations

from pathlib import Path

from tests.budgeter import world_tables
from thrifty.budgeter.world.evaluate import TurnResult
from thrifty.budgeter.world.report import (
    budget_needed,
    claims,
    plot,
    results_page,
    summarize,
    summarize_environment,
)


def _turn(problem: str, turn: int, bucket: str, budget: int | None, correct: bool, thinking: int) -> TurnResult:
    return TurnResult(
        solver="dense-s",
        problem=problem,
        turn=turn,
        bucket=bucket,
        task="add",
        query=f"x{turn + 1} = 1+1",
        budget=budget,
        correct=correct,
        thinking_tokens=thinking,
        prompt_tokens=10,
        completion_tokens=thinking + 2,
        cost=1e-6,
        latency_s=0.01,
        reply="2",
    )


def _results() -> list[TurnResult]:
    # p1: an easy turn then a hard one; p2: one easy turn. Easy turns are right from budget 8 on,
    # the hard turn only without a limit.
    rows = []
    for budget in (0, 8, 64, None):
        thinking = 0 if budget == 0 else (budget or 200)
        rows.append(_turn("p1", 0, "easy", budget, budget != 0, min(thinking, 20)))
        rows.append(_turn("p1", 1, "hard", budget, budget is None, thinking))
        rows.append(_turn("p2", 0, "easy", budget, budget != 0, min(thinking, 20)))
    return rows


def test_summary_counts_turns_problems_and_buckets() -> None:
    summary = summarize(_results())
    assert list(summary) == ["0", "8", "64", "none"]
    assert summary["0"]["turn_accuracy"] == 0.0 and summary["0"]["problem_accuracy"] == 0.0
    assert summary["8"]["turn_accuracy"] == 2 / 3
    assert summary["8"]["problem_accuracy"] == 0.5  # p2 solved, p1's hard turn wrong
    assert summary["none"]["problem_accuracy"] == 1.0
    assert summary["8"]["buckets"] == {"easy": {"accuracy": 1.0, "turns": 2}, "hard": {"accuracy": 0.0, "turns": 1}}
    assert summary["64"]["mean_thinking_tokens"] == (20 + 64 + 20) / 3


def test_budget_needed_per_bucket() -> None:
    summary = summarize(_results())
    assert budget_needed(summary, "easy") == ("8", 1.0)
    assert budget_needed(summary, "hard") == ("none", 1.0)
    assert budget_needed(summary, "medium") is None  # no medium turns


def test_results_page_and_plots(tmp_path: Path) -> None:
    summaries = {"dense-s": summarize(_results())}
    training = {
        "dense-s": {"architecture": "qwen3", "parameters": 1000, "steps": 10, "train_seconds": 1.0, "final_loss": 0.5}
    }
    page = results_page(summaries, training, ["# title"])
    assert "| dense-s | 8 (100.0) | – | none (100.0) |" in page
    assert "| 8 | 66.7 | 100.0 | – | – | – | 0.0 | – | 50.0 | – |" in page
    names = plot(summaries, {}, tmp_path)
    assert all((tmp_path / name).stat().st_size > 10_000 for name in names)


def test_the_environment_summary_shows_overthinking_and_the_oracle(tmp_path: Path) -> None:
    table = world_tables.table()
    found = summarize_environment(table)
    easy, hard = found["overthinking"]["easy"], found["overthinking"]["hard"]
    assert easy["ratio"] == (30 + 20) / (10 + 8) and easy["accuracy_first_working"] == easy["accuracy_unlimited"] == 1
    assert hard["accuracy_first_working"] == 0 and hard["accuracy_unlimited"] == 1
    assert found["buckets"]["easy"]["16"]["thinking_tokens"] == 15 and found["buckets"]["easy"]["none"]["tokens"] == 28
    assert found["problems"]["16"] == {"accuracy": 0.5, "tokens": (18 + 19 + 18) / 2, "thinking_tokens": 22.5}
    assert found["problems"]["none"]["accuracy"] == 1.0
    oracle = found["oracle"]
    assert oracle["accuracy"] == 1.0 and oracle["best_static"] == "none"
    assert oracle["tokens"] == ((18 + 204) + 18) / 2
    assert oracle["saved_vs_best_static"] == 1 - oracle["tokens"] / found["problems"]["none"]["tokens"]
    summaries = {"dense-s": summarize(table.turn_results(_spec()))}
    verdicts = {claim: holds for claim, holds, _ in claims(summaries, {"dense-s": found})}
    assert verdicts["dense-s: on easy turns, unlimited thinking uses ≥ 2× the tokens of the first working"]
    assert verdicts["dense-s: on easy turns, accuracy is flat after the first working (within 2 points)"]
    assert verdicts["dense-s: on hard turns, checking pays: unlimited ≥ 5 points above the first working"]
    checks = {
        "dense-s": {
            "shortcut": {"requests": 8, "agreement_correct": 1.0, "agreement_tokens": 0.875, "agreement_answer": 1.0},
            "live": {
                "problems": 2,
                "through": "thrifty serve",
                "budgets": {
                    "64": {
                        "accuracy_table": 0.5,
                        "accuracy_live": 1.0,
                        "tokens_table": 50.5,
                        "tokens_live": 51.0,
                        "same_outcome": 0.5,
                        "same_tokens": 0.5,
                    }
                },
            },
        }
    }
    page = results_page(summaries, {}, ["# t"], {"dense-s": found}, checks, {"data": 6.0, "train:dense-s": 600.0})
    assert "| **all recorded stages** | **10.1** |" in page
    assert "| dense-s | easy | 2 (2) | 9.0 | 25.0 | 2.78 | 100.0 | 100.0 | 0.0 |" in page
    assert "| 8 | 100.0 % | 87.5 % | 100.0 % |" in page
    assert "| 64 | 50.0 | 100.0 | 50.5 | 51.0 | 50.0 % | 50.0 % |" in page
    assert "| oracle | best static | saved |" in page
    assert set(plot(summaries, {"dense-s": found}, tmp_path)) == {"accuracy_vs_budget.png", "problem_tokens.png"}


def _spec():  # type: ignore[no-untyped-def]
    from thrifty.budgeter.world.solvers import load_specs

    return load_specs().solvers["dense-s"]


def test_claims_are_checked_against_the_numbers() -> None:
    small = summarize(_results())
    # dense-m: the same, but its hard turn is wrong even without a limit, and easy turns never rise.
    weak = summarize(
        [r for r in _results() if r.bucket == "easy"]
        + [_turn("p1", 1, "hard", budget, False, 5) for budget in (0, 8, 64, None)]
    )
    found = {claim: (holds, evidence) for claim, holds, evidence in claims({"dense-s": small, "dense-m": weak})}
    assert found["dense-s: turn accuracy rises with the budget"] == (True, "0.0 → 66.7 → 66.7 → 100.0")
    assert found["dense-s: hard turns need a larger budget than easy turns"] == (True, "easy: 8, hard: none")
    assert found["dense-s: near-perfect (≥ 95%) on easy turns with enough budget"][0]
    assert found["dense-m: turn accuracy rises with the budget"][0]  # 0 → 66.7 for the easy turns
    assert "dense-m: hard turns need a larger budget than easy turns" in found
    assert found["dense-m is more accurate than dense-s on hard turns (thinking not limited)"] == (
        False,
        "0.0 vs 100.0",
    )
    page = results_page({"dense-s": small, "dense-m": weak}, {}, ["# t"])
    assert "## What this build shows" in page and "| dense-m is more accurate" in page


def test_a_results_page_never_crashes_on_a_missing_figure() -> None:
    # A solver whose training logged no loss point (or a record from an older build) shows "–".
    training = {"dense-s": {"architecture": "qwen3", "parameters": 1000, "steps": 3, "final_loss": None}}
    page = results_page({"dense-s": summarize(_results())}, training, ["# title"])
    assert "| dense-s | qwen3 | 1,000 | 3 | – | – |" in page
