"""Summaries, plots and the results page of a world build."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from thrifty.budgeter.world.chains import BUCKETS
from thrifty.budgeter.world.evaluate import UNLIMITED_THINKING, TurnResult

BUCKET_NAMES = [name for name, _ in BUCKETS]


def budget_label(budget: int | None) -> str:
    return "none" if budget is None else str(budget)


def summarize(results: Iterable[TurnResult]) -> dict[str, Any]:
    """Per budget: turn accuracy overall and per bucket, problem accuracy, mean thinking tokens and cost."""
    by_budget: dict[int | None, list[TurnResult]] = defaultdict(list)
    for result in results:
        by_budget[result.budget].append(result)
    summary: dict[str, Any] = {}
    for budget, rows in sorted(by_budget.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        problems: dict[str, bool] = {}
        for row in rows:
            problems[row.problem] = problems.get(row.problem, True) and row.correct
        buckets = {}
        for name in BUCKET_NAMES:
            picked = [r for r in rows if r.bucket == name]
            if picked:
                buckets[name] = {"accuracy": sum(r.correct for r in picked) / len(picked), "turns": len(picked)}
        summary[budget_label(budget)] = {
            "turn_accuracy": sum(r.correct for r in rows) / len(rows),
            "problem_accuracy": sum(problems.values()) / len(problems),
            "turns": len(rows),
            "problems": len(problems),
            "buckets": buckets,
            "mean_thinking_tokens": sum(r.thinking_tokens for r in rows) / len(rows),
            "mean_cost_per_turn": sum(r.cost for r in rows) / len(rows),
        }
    return summary


def _x(label: str) -> float:
    return float(UNLIMITED_THINKING if label == "none" else max(int(label), 1))


def plot(summaries: dict[str, dict[str, Any]], folder: Path) -> list[str]:
    """Write the PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True, squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        labels = list(summaries[name])
        xs = [_x(label) for label in labels]
        axis.plot(xs, [summaries[name][b]["turn_accuracy"] for b in labels], "k-o", label="all turns")
        for bucket, style in zip(BUCKET_NAMES, ("g--^", "b--s", "r--v"), strict=True):
            ys = [bucket_accuracy(summaries[name][b], bucket) for b in labels]
            axis.plot(xs, [float("nan") if y is None else y for y in ys], style, label=bucket, alpha=0.85)
        axis.set_xscale("log", base=2)
        axis.set_xticks(xs, labels)
        axis.set_title(name)
        axis.set_xlabel("thinking_token_budget")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("turn accuracy")
    axes[0][0].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "accuracy_vs_budget.png", dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for name in names:
        labels = list(summaries[name])
        axis.plot([_x(b) for b in labels], [summaries[name][b]["problem_accuracy"] for b in labels], "-o", label=name)
    axis.set_xscale("log", base=2)
    labels = list(summaries[names[0]])
    axis.set_xticks([_x(b) for b in labels], labels)
    axis.set_xlabel("thinking_token_budget (every turn)")
    axis.set_ylabel("problem accuracy (all turns right)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "problem_accuracy.png", dpi=120)
    plt.close(figure)
    return ["accuracy_vs_budget.png", "problem_accuracy.png"]


def bucket_accuracy(row: dict[str, Any], bucket: str) -> float | None:
    """A budget row's accuracy on one bucket, or None when the evaluated turns had none of it."""
    found = row["buckets"].get(bucket)
    return None if found is None else float(found["accuracy"])


def claims(summaries: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """What the world is meant to show, checked against this build: (claim, holds, evidence)."""
    found: list[tuple[str, bool, str]] = []
    easy, hardest = BUCKET_NAMES[0], BUCKET_NAMES[-1]
    for name, summary in summaries.items():
        accuracies = [row["turn_accuracy"] for row in summary.values()]
        steps = zip(accuracies, accuracies[1:], strict=False)
        found.append(
            (
                f"{name}: turn accuracy rises with the budget",
                accuracies[-1] > accuracies[0] and all(b >= a - 0.02 for a, b in steps),
                " → ".join(_pct(a) for a in accuracies),
            )
        )
        easy_needs, hard_needs = budget_needed(summary, easy), budget_needed(summary, hardest)
        if easy_needs and hard_needs:
            order = list(summary)
            found.append(
                (
                    f"{name}: {hardest} turns need a larger budget than {easy} turns",
                    order.index(hard_needs[0]) > order.index(easy_needs[0]),
                    f"{easy}: {easy_needs[0]}, {hardest}: {hard_needs[0]}",
                )
            )
        best_easy = max(bucket_accuracy(row, easy) or 0.0 for row in summary.values())
        found.append(
            (f"{name}: near-perfect (≥ 95%) on {easy} turns with enough budget", best_easy >= 0.95, _pct(best_easy))
        )
    if {"dense-s", "dense-m"} <= set(summaries):
        small, large = (bucket_accuracy(summaries[n]["none"], hardest) for n in ("dense-s", "dense-m"))
        if small is not None and large is not None:
            found.append(
                (
                    f"dense-m is more accurate than dense-s on {hardest} turns (thinking not limited)",
                    large > small,
                    f"{_pct(large)} vs {_pct(small)}",
                )
            )
    return found


def budget_needed(summary: dict[str, Any], bucket: str, slack: float = 0.02) -> tuple[str, float] | None:
    """The first budget (in the order evaluated) within ``slack`` of the bucket's unlimited accuracy."""
    rows = [(label, row["buckets"][bucket]["accuracy"]) for label, row in summary.items() if bucket in row["buckets"]]
    if not rows:
        return None
    best = rows[-1][1]  # thinking not limited is evaluated last
    return next((label, accuracy) for label, accuracy in rows if accuracy >= best - slack)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def figure(value: Any, spec: str = "") -> str:
    """A number for a table, or "–" where a record lacks it (an older build, an interrupted stage)."""
    return "–" if not isinstance(value, int | float) or isinstance(value, bool) else format(value, spec)


def results_page(
    summaries: dict[str, dict[str, Any]], training: dict[str, dict[str, Any]], header: Sequence[str]
) -> str:
    lines = list(header)
    lines += ["", "## Solvers", "", "| solver | architecture | parameters | steps | train time (s) | final loss |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for name, record in training.items():
        lines.append(
            f"| {name} | {record.get('architecture', '–')} | {figure(record.get('parameters'), ',')} "
            f"| {figure(record.get('steps'))} | {figure(record.get('train_seconds'), '.0f')} "
            f"| {figure(record.get('final_loss'), '.3f')} |"
        )
    for name, summary in summaries.items():
        lines += ["", f"## {name}: turn accuracy (%) by thinking budget", ""]
        lines.append(
            "| budget | all turns | "
            + " | ".join(BUCKET_NAMES)
            + " | problems | mean thinking tokens | cost per 1k turns (USD) |"
        )
        lines.append("|---|---:|" + "---:|" * len(BUCKET_NAMES) + "---:|---:|---:|")
        for label, row in summary.items():
            cells = [_pct(bucket_accuracy(row, b)) for b in BUCKET_NAMES]
            lines.append(
                f"| {label} | {_pct(row['turn_accuracy'])} | "
                + " | ".join(cells)
                + f" | {_pct(row['problem_accuracy'])} | {figure(row['mean_thinking_tokens'], '.1f')}"
                + f" | {figure(1000 * row['mean_cost_per_turn'], '.4f')} |"
            )
    lines += ["", "## What this build shows", "", "| claim | holds | evidence (accuracies in %) |", "|---|---|---|"]
    lines += [
        f"| {claim} | {'yes' if holds else '**no**'} | {evidence} |" for claim, holds, evidence in claims(summaries)
    ]
    lines += ["", "## The budget each bucket needs", ""]
    lines.append(
        "The smallest static budget whose turn accuracy is within 2 points of unlimited thinking, per bucket "
        "(and that accuracy):"
    )
    lines += ["", "| solver | " + " | ".join(BUCKET_NAMES) + " |", "|---|" + "---:|" * len(BUCKET_NAMES)]
    for name, summary in summaries.items():
        cells = []
        for bucket in BUCKET_NAMES:
            needed = budget_needed(summary, bucket)
            cells.append("–" if needed is None else f"{needed[0]} ({_pct(needed[1])})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if summaries:
        hardest = BUCKET_NAMES[-1]
        labels = list(next(iter(summaries.values())))
        lines += ["", f"## {hardest.capitalize()} turns (%) by solver", ""]
        lines += ["| budget | " + " | ".join(summaries) + " |", "|---|" + "---:|" * len(summaries)]
        for label in labels:
            cells = [_pct(bucket_accuracy(summaries[n][label], hardest)) for n in summaries]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Problem accuracy (%) at each static budget", ""]
    names = list(summaries)
    labels = list(summaries[names[0]]) if names else []
    lines.append("| budget | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(_pct(summaries[n][label]["problem_accuracy"]) for n in names) + " |")
    lines += ["", "![accuracy vs budget](accuracy_vs_budget.png)", "", "![problem accuracy](problem_accuracy.png)", ""]
    return "\n".join(lines)
