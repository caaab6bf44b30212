"""How long each budget policy takes to decide, through the gateway's budgeter objects.

    .venv/bin/python benchmarks/budgeter/latency.py --world data/world \\
        --artifact tab=data/tab-bench/128-per-turn_lambda0.01/tab/policy \\
        --artifact tab-allsubq=data/tab-bench/128-per-turn_lambda0.01/tab-allsubq/policy

Each decision is one ``Budgeter.explain`` call on a request rebuilt from a test turn (its messages, a
session holding the earlier turns' ledger, the plan): what the budget stage awaits per request. The
policies are built from config as ``thrifty serve`` builds them; decisions are interleaved across
policies, round by round, so a busy machine slows all of them alike. Prints median and p99 per policy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from thrifty.budgeter.base import BudgetRequest
from thrifty.budgeter.registry import build_budgeter
from thrifty.budgeter.world.build import read_chains, table_path
from thrifty.budgeter.world.chat_format import messages_for
from thrifty.budgeter.world.outcomes import OutcomeTable
from thrifty.server.sessions.model import Session, Turn


def requests(world: Path, solver: str, count: int, budget_per_turn: int) -> list[BudgetRequest]:
    """Requests as the gateway sees them mid-problem: gold history, the session's ledger, the plan."""
    table = OutcomeTable.read(table_path(world, solver, "test"))
    chains = {c.id: c for c in read_chains(world / "data" / "test.jsonl")}
    made: list[BudgetRequest] = []
    for problem, rows in table.problems().items():
        chain = chains[problem]
        turns: list[Turn] = []
        for turn, row in enumerate(rows):
            session = Session(
                f"s-{problem}",
                0.0,
                budget_per_turn * len(rows),
                spent=sum(t.completion_tokens for t in turns),
                turn_count=turn,
                turns=list(turns),
            )
            plan = tuple(s.prompt for s in chain.steps)
            made.append(BudgetRequest(solver, {"messages": messages_for(chain, turn)}, session, plan))
            used = row.outcome(128)
            turns.append(Turn(solver, 128, row.prompt_tokens, used.tokens, used.thinking_tokens, 0.1, "stop", 0.0))
            if len(made) == count:
                return made
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--solver", default="dense-s")
    parser.add_argument("--artifact", action="append", default=[], help="NAME=FOLDER of a TAB policy")
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--budget-per-turn", type=int, default=128)
    args = parser.parse_args()

    configs: dict[str, tuple[str, dict[str, Any]]] = {"static": ("static", {"budget": 256})}
    for item in args.artifact:
        name, _, folder = item.partition("=")
        configs[name] = ("tab", {"artifact": folder})
    budgeters = {name: build_budgeter(kind, options) for name, (kind, options) in configs.items()}
    asked = requests(args.world, args.solver, args.decisions, args.budget_per_turn)
    timings: dict[str, list[float]] = {name: [] for name in budgeters}
    policies: dict[str, set[str]] = {name: set() for name in budgeters}

    async def run() -> None:
        for request in asked[:50]:  # warm-up: caches, lazy imports
            for budgeter in budgeters.values():
                await budgeter.explain(request)
        for request in asked:
            for name, budgeter in budgeters.items():
                started = time.perf_counter()
                decision = await budgeter.explain(request)
                timings[name].append(time.perf_counter() - started)
                policies[name].add(decision.policy)

    asyncio.run(run())
    print(f"{len(asked)} decisions per policy ({args.solver}'s test turns, B = {args.budget_per_turn}/turn)")
    print("| policy | decided as | median (µs) | p99 (µs) |")
    print("|---|---|---:|---:|")
    for name, values in timings.items():
        values.sort()
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        median = statistics.median(values)
        print(f"| {name} | {', '.join(sorted(policies[name]))} | {1e6 * median:.0f} | {1e6 * p99:.0f} |")


if __name__ == "__main__":
    main()
