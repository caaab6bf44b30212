"""Which ladder levels a TAB artifact picks on the world's test table, and where that lands against the
static levels on the same problems.

The policy decides with the gateway's own code (``environment_policy``), so this is what the gateway
would do. Turns are grouped by their need: the oracle's level for the turn (the cheapest rung that
gets it right; "none" when no rung does). A policy that reads difficulty gives easy turns low levels
and hard turns high ones; a policy that learned one level for everything has one column.

    python benchmarks/budgeter/levels.py data/tab-llm/policy --world data/world --budget 128/turn \
        --problems 100
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from thrifty.budgeter.tab.compare import Point, play
from thrifty.budgeter.tab.job import TabJobOptions, load_world
from thrifty.budgeter.tab.serving import environment_policy
from thrifty.budgeter.tab.train import BudgetRule
from thrifty.budgeter.world.environment import oracle_allocation, run_episode, static


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="a TAB policy folder")
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--budget", default="128/turn", help="B, as `thrifty train budgeter --budget`")
    parser.add_argument("--problems", type=int, default=None, help="the first N test problems")
    args = parser.parse_args()

    rule = BudgetRule.parse(args.budget)
    world = load_world(TabJobOptions(world=args.world, out=Path("unused"), test_problems=args.problems))
    table = world.test.table
    problems = world.test_problems
    policy = environment_policy(args.artifact, rule)

    rows_of = table.problems()
    picks: dict[str, Counter[int | None]] = defaultdict(Counter)
    solved = thinking = tokens = 0
    for problem in problems:
        episode = run_episode(world.test, problem, policy)
        solved += episode.correct
        thinking += episode.thinking_tokens
        tokens += episode.tokens
        _, needs, _ = oracle_allocation(table, problem)
        for row, need, budget in zip(rows_of[problem], needs, episode.budgets, strict=True):
            reachable = any(row.outcome(level).correct for level in table.ladder)
            picks[str(need) if reachable else "none"][budget] += 1

    levels = sorted({b for counts in picks.values() for b in counts}, key=lambda b: -1 if b is None else b)
    print(f"{args.artifact}: {len(problems)} test problems, B = {rule.label()}")
    print("\n| turn's need | turns | " + " | ".join(f"picks {b}" for b in levels) + " |")
    print("|---|---:|" + "---:|" * len(levels))
    order = sorted(picks, key=lambda k: (k == "none", int(k) if k.isdigit() else 0))
    for need in order:
        counts = picks[need]
        cells = " | ".join(str(counts.get(b, 0)) for b in levels)
        print(f"| {need} | {sum(counts.values())} | {cells} |")

    points = [Point("policy", solved / len(problems), thinking / len(problems), tokens / len(problems))]
    points += [play(world.test, problems, static(level), f"static-{level}") for level in table.ladder]
    print("\n| policy | accuracy (%) | thinking per problem |")
    print("|---|---:|---:|")
    for point in points:
        print(f"| {point.name} | {100 * point.accuracy:.1f} | {point.thinking:.1f} |")


if __name__ == "__main__":
    main()
