"""Summaries, plots and the results page of a world build."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from thrifty.budgeter.world.chains import BUCKETS
from thrifty.budgeter.world.environment import allocate
from thrifty.budgeter.world.evaluate import TurnResult
from thrifty.budgeter.world.outcomes import FIRST_WORKING, UNLIMITED, OutcomeTable
from thrifty.budgeter.world.thinking import REDO

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


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_environment(table: OutcomeTable) -> dict[str, Any]:
    """What the outcome table says about budgets: per bucket and rung, per problem, and the oracle.

    ``buckets[b][level]``: turn accuracy, mean thinking tokens and mean tokens at each rung (0, the
    ladder, unlimited). ``overthinking[b]``: on turns where the solver checks, its own first working's
    tokens against its unlimited thinking, and accuracy at a budget that just covers the first working
    against unlimited; how often it redoes. ``problems[level]``: problem accuracy and tokens per
    problem with that static budget every turn; ``oracle``: each turn its cheapest rung that is right.
    """
    labels = [budget_label(b) for b in (0, *table.ladder, None)]
    budgets: list[int | None] = [0, *table.ladder, None]
    buckets: dict[str, Any] = {}
    overthinking: dict[str, Any] = {}
    for name in BUCKET_NAMES:
        rows = [r for r in table.rows if r.bucket == name]
        if not rows:
            continue
        buckets[name] = {
            label: {
                "turns": len(rows),
                "accuracy": sum(r.outcome(b).correct for r in rows) / len(rows),
                "thinking_tokens": sum(r.outcome(b).thinking_tokens for r in rows) / len(rows),
                "tokens": sum(r.outcome(b).tokens for r in rows) / len(rows),
            }
            for label, b in zip(labels, budgets, strict=True)
        }
        checked = [r for r in rows if r.first_working is not None and FIRST_WORKING in r.levels]
        first = [float(r.first_working or 0) for r in checked]
        unlimited = [float(r.levels[UNLIMITED].thinking_tokens) for r in checked]
        overthinking[name] = {
            "turns": len(rows),
            "checked_turns": len(checked),
            "redo_share": sum(("\n" + REDO + "\n") in r.thinking for r in rows) / len(rows),
            "first_working_tokens": _mean(first),
            "unlimited_thinking_tokens": _mean(unlimited),
            "ratio": (sum(unlimited) / sum(first)) if checked and sum(first) else None,
            "accuracy_first_working": _mean([float(r.levels[FIRST_WORKING].correct) for r in checked]),
            "accuracy_unlimited": _mean([float(r.levels[UNLIMITED].correct) for r in checked]),
            "accuracy_unlimited_all": sum(r.levels[UNLIMITED].correct for r in rows) / len(rows),
        }
    problems = table.problems()
    per_level: dict[str, Any] = {}
    for label, b in zip(labels, budgets, strict=True):
        per_level[label] = {
            "accuracy": sum(all(r.outcome(b).correct for r in turns) for turns in problems.values()) / len(problems),
            "tokens": sum(sum(r.outcome(b).tokens for r in turns) for turns in problems.values()) / len(problems),
            "thinking_tokens": sum(sum(r.outcome(b).thinking_tokens for r in turns) for turns in problems.values())
            / len(problems),
        }
    oracle = [allocate(turns, table.ladder)[0::2] for turns in problems.values()]
    best_label = max(labels, key=lambda label: (per_level[label]["accuracy"], -per_level[label]["tokens"]))
    oracle_tokens = sum(t for _, t in oracle) / len(oracle)
    return {
        "ladder": list(table.ladder),
        "problems_count": len(problems),
        "buckets": buckets,
        "overthinking": overthinking,
        "problems": per_level,
        "oracle": {
            "accuracy": sum(ok for ok, _ in oracle) / len(oracle),
            "tokens": oracle_tokens,
            "best_static": best_label,
            "saved_vs_best_static": 1 - oracle_tokens / per_level[best_label]["tokens"]
            if per_level[best_label]["tokens"]
            else None,
        },
    }


def _x(label: str, labels: Sequence[str]) -> float:
    """Where a budget sits on a log axis: 0 at 1, unlimited one doubling beyond the largest rung."""
    if label == "none":
        return 2.0 * max((int(b) for b in labels if b != "none"), default=1)
    return float(max(int(label), 1))


def plot(summaries: dict[str, dict[str, Any]], environment: dict[str, dict[str, Any]], folder: Path) -> list[str]:
    """Write the PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    styles = dict(zip(BUCKET_NAMES, ("g--^", "b--s", "r--v"), strict=True))
    figure, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.8), sharex=True, squeeze=False)
    for column, name in enumerate(names):
        labels = list(summaries[name])
        xs = [_x(label, labels) for label in labels]
        top, bottom = axes[0][column], axes[1][column]
        top.plot(xs, [summaries[name][b]["turn_accuracy"] for b in labels], "k-o", label="all turns")
        for bucket, style in styles.items():
            ys = [bucket_accuracy(summaries[name][b], bucket) for b in labels]
            top.plot(xs, [float("nan") if y is None else y for y in ys], style, label=bucket, alpha=0.85)
            rows = environment.get(name, {}).get("buckets", {}).get(bucket)
            if rows:
                bottom.plot(xs, [rows[b]["thinking_tokens"] for b in labels], style, label=bucket, alpha=0.85)
        bottom.plot(xs[:-1], xs[:-1], ":", color="grey", label="the budget")
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_xticks(xs, labels)
            axis.grid(alpha=0.3)
        top.set_title(name)
        bottom.set_yscale("symlog", linthresh=16)
        bottom.set_ylim(bottom=0)  # tokens are never negative: no mirrored half below the axis
        bottom.set_xlabel("thinking_token_budget")
    axes[0][0].set_ylabel("turn accuracy")
    axes[1][0].set_ylabel("thinking tokens used per turn")
    axes[0][0].legend(loc="lower right", fontsize=8)
    axes[1][0].legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "accuracy_vs_budget.png", dpi=120)
    plt.close(figure)
    if not environment:
        return ["accuracy_vs_budget.png"]

    figure, axis = plt.subplots(figsize=(6.2, 4.2))
    for index, name in enumerate(names):
        found = environment.get(name)
        if not found:
            continue
        color = f"C{index}"
        levels = found["problems"]
        spent: list[float] = [levels[label]["tokens"] for label in levels]
        solved: list[float] = [levels[label]["accuracy"] for label in levels]
        axis.plot(spent, solved, "-o", color=color, label=f"{name}: static budgets")
        for label, x, y in zip(levels, spent, solved, strict=True):
            axis.annotate(label, (x, y), textcoords="offset points", xytext=(3, -9), fontsize=7, color=color)
        oracle = found["oracle"]
        axis.plot([oracle["tokens"]], [oracle["accuracy"]], "*", color=color, markersize=13, label=f"{name}: oracle")
    axis.set_xscale("log")
    axis.set_xlabel("tokens per problem (thinking + answers)")
    axis.set_ylabel("problem accuracy (all turns right)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "problem_tokens.png", dpi=120)
    plt.close(figure)
    return ["accuracy_vs_budget.png", "problem_tokens.png"]


def bucket_accuracy(row: dict[str, Any], bucket: str) -> float | None:
    """A budget row's accuracy on one bucket, or None when the evaluated turns had none of it."""
    found = row["buckets"].get(bucket)
    return None if found is None else float(found["accuracy"])


def claims(
    summaries: dict[str, dict[str, Any]], environment: dict[str, dict[str, Any]] | None = None
) -> list[tuple[str, bool, str]]:
    """What the world is meant to show, checked against this build: (claim, holds, evidence)."""
    found: list[tuple[str, bool, str]] = []
    easy, hardest = BUCKET_NAMES[0], BUCKET_NAMES[-1]
    for name, over in (environment or {}).items():
        stats = over.get("overthinking", {})
        if easy in stats and stats[easy]["ratio"] is not None:
            row = stats[easy]
            found.append(
                (
                    f"{name}: on {easy} turns, unlimited thinking uses ≥ 2× the tokens of the first working",
                    row["ratio"] >= 2,
                    f"{figure(row['unlimited_thinking_tokens'], '.1f')} vs {figure(row['first_working_tokens'], '.1f')}"
                    f" tokens ({figure(row['ratio'], '.2f')}×)",
                )
            )
            first, unlimited = row["accuracy_first_working"], row["accuracy_unlimited"]
            found.append(
                (
                    f"{name}: on {easy} turns, accuracy is flat after the first working (within 2 points)",
                    first is not None and unlimited is not None and abs(unlimited - first) <= 0.02,
                    f"{_pct(first)} at the first working, {_pct(unlimited)} unlimited",
                )
            )
        if hardest in stats:
            row = stats[hardest]
            first, unlimited = row["accuracy_first_working"], row["accuracy_unlimited"]
            found.append(
                (
                    f"{name}: on {hardest} turns, checking pays: unlimited ≥ 5 points above the first working",
                    first is not None and unlimited is not None and unlimited - first >= 0.05,
                    f"{_pct(unlimited)} unlimited vs {_pct(first)} at the first working "
                    f"(redone on {_pct(row['redo_share'])} of {hardest} turns)",
                )
            )
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


def _minutes(seconds: Any) -> str:
    return figure(seconds / 60 if isinstance(seconds, int | float) else None, ".1f")


def results_page(
    summaries: dict[str, dict[str, Any]],
    training: dict[str, dict[str, Any]],
    header: Sequence[str],
    environment: dict[str, dict[str, Any]] | None = None,
    checks: dict[str, dict[str, Any]] | None = None,
    stage_times: dict[str, Any] | None = None,
) -> str:
    environment = environment or {}
    checks = checks or {}
    lines = list(header)
    if stage_times:
        total = sum(v for v in stage_times.values() if isinstance(v, int | float))
        lines += ["", "## Build stages", "", "| stage | minutes |", "|---|---:|"]
        lines += [f"| {stage} | {_minutes(seconds)} |" for stage, seconds in stage_times.items()]
        lines.append(f"| **all recorded stages** | **{_minutes(total)}** |")
    lines += ["", "## Solvers", "", "| solver | architecture | parameters | steps | train time (s) | final loss |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for name, record in training.items():
        lines.append(
            f"| {name} | {record.get('architecture', '–')} | {figure(record.get('parameters'), ',')} "
            f"| {figure(record.get('steps'))} | {figure(record.get('train_seconds'), '.0f')} "
            f"| {figure(record.get('final_loss'), '.3f')} |"
        )
    for name, summary in summaries.items():
        over = environment.get(name, {})
        lines += ["", f"## {name}: accuracy (%) and thinking tokens used, by budget and bucket", ""]
        lines.append(
            "| budget | all turns | "
            + " | ".join(f"{b} acc | {b} thinking" for b in BUCKET_NAMES)
            + " | problems | tokens per problem | cost per 1k turns (USD) |"
        )
        lines.append("|---|---:|" + "---:|---:|" * len(BUCKET_NAMES) + "---:|---:|---:|")
        for label, row in summary.items():
            cells = []
            for bucket in BUCKET_NAMES:
                used = over.get("buckets", {}).get(bucket, {}).get(label, {}).get("thinking_tokens")
                cells.append(f"{_pct(bucket_accuracy(row, bucket))} | {figure(used, '.1f')}")
            per_problem = over.get("problems", {}).get(label, {}).get("tokens")
            lines.append(
                f"| {label} | {_pct(row['turn_accuracy'])} | "
                + " | ".join(cells)
                + f" | {_pct(row['problem_accuracy'])} | {figure(per_problem, '.1f')}"
                + f" | {figure(1000 * row['mean_cost_per_turn'], '.4f')} |"
            )
    if environment:
        lines += ["", "## Overthinking: the first working, then checks", ""]
        lines.append(
            "Per bucket, on the turns where the solver checks its work: the tokens of its own first working "
            "(up to its first `check 1`), its unlimited thinking, and turn accuracy at a budget that just covers "
            "the first working against unlimited; and how often its thinking holds a `redo`."
        )
        lines += [
            "",
            "| solver | bucket | turns (checked) | first working | unlimited thinking | × | acc. at first working "
            "| acc. unlimited | redo |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, over in environment.items():
            for bucket, row in over.get("overthinking", {}).items():
                lines.append(
                    f"| {name} | {bucket} | {row['turns']} ({row['checked_turns']}) "
                    f"| {figure(row['first_working_tokens'], '.1f')} "
                    f"| {figure(row['unlimited_thinking_tokens'], '.1f')} "
                    f"| {figure(row['ratio'], '.2f')} | {_pct(row['accuracy_first_working'])} "
                    f"| {_pct(row['accuracy_unlimited'])} | {_pct(row['redo_share'])} |"
                )
    lines += ["", "## What this build shows", "", "| claim | holds | evidence (accuracies in %) |", "|---|---|---|"]
    lines += [
        f"| {claim} | {'yes' if holds else '**no**'} | {evidence} |"
        for claim, holds, evidence in claims(summaries, environment)
    ]
    if environment:
        lines += ["", "## Per problem: static budgets and the oracle allocation", ""]
        lines.append(
            "Problem accuracy (%) / tokens per problem (thinking + answers) with the same budget every turn, and "
            "with the **oracle allocation** (each turn its cheapest budget that gets it right): the headroom a "
            "budget policy can win. *Saved* is the oracle's tokens against the best static budget (highest "
            "accuracy, then fewest tokens), at the oracle's accuracy, which is never lower."
        )
        labels = list(next(iter(environment.values()))["problems"])
        lines += [
            "",
            "| solver | " + " | ".join(labels) + " | oracle | best static | saved |",
            "|---|" + "---:|" * (len(labels) + 3),
        ]
        for name, over in environment.items():
            cells = [
                f"{_pct(over['problems'][label]['accuracy'])} / {figure(over['problems'][label]['tokens'], '.0f')}"
                for label in labels
            ]
            oracle = over["oracle"]
            lines.append(
                f"| {name} | "
                + " | ".join(cells)
                + f" | {_pct(oracle['accuracy'])} / {figure(oracle['tokens'], '.0f')} | {oracle['best_static']} "
                + f"| {_pct(oracle['saved_vs_best_static'])} % |"
            )
    shortcut = {name: found["shortcut"] for name, found in checks.items() if "shortcut" in found}
    if shortcut:
        lines += ["", "## The tables' shortcut against direct runs", ""]
        lines.append(
            "Tables are measured with one unlimited generation per turn and, per rung *b*, the answer continued "
            "from the first *b* − 1 thinking tokens (vLLM counts the newline after `<think>` in the prompt "
            "against the budget); a sample of turns was also asked directly (chat, `thinking_token_budget` = "
            "*b*) at every rung. Agreement:"
        )
        lines += ["", "| solver | requests | same right/wrong | same tokens | same answer |"]
        lines.append("|---|---:|---:|---:|---:|")
        for name, found in shortcut.items():
            lines.append(
                f"| {name} | {found['requests']} | {_pct(found['agreement_correct'])} % "
                f"| {_pct(found['agreement_tokens'])} % | {_pct(found['agreement_answer'])} % |"
            )
    live = {name: found["live"] for name, found in checks.items() if "live" in found}
    for name, found in live.items():
        lines += ["", f"## {name}: the table against the live solver", ""]
        lines.append(
            f"The first {found['problems']} test problems played turn by turn through `{found['through']}` with "
            "the solver's own history, at three static budgets, against the table's prediction (gold history):"
        )
        lines += [
            "",
            "| budget | problem acc. table | live | tokens/problem table | live | same solved | same tokens |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for budget, row in found["budgets"].items():
            lines.append(
                f"| {budget} | {_pct(row['accuracy_table'])} | {_pct(row['accuracy_live'])} "
                f"| {figure(row['tokens_table'], '.1f')} | {figure(row['tokens_live'], '.1f')} "
                f"| {_pct(row['same_outcome'])} % | {_pct(row['same_tokens'])} % |"
            )
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
    lines += ["", "![accuracy and thinking tokens vs budget](accuracy_vs_budget.png)", ""]
    if environment:
        lines += ["![problem accuracy vs tokens, static budgets and the oracle](problem_tokens.png)", ""]
    return "\n".join(lines)
