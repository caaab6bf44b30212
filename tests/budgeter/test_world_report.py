"""The world's summaries: accuracies per budget and bucket, problem accuracy, the budget a bucket needs."""

from __future__ import annotations

from pathlib import Path

from thrifty.budgeter.world.evaluate import TurnResult
from thrifty.budgeter.world.report import budget_needed, plot, results_page, summarize


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
    assert "| 8 | 66.7 | 100.0 | – | 0.0 | 50.0 |" in page
    names = plot(summaries, tmp_path)
    assert all((tmp_path / name).stat().st_size > 10_000 for name in names)
