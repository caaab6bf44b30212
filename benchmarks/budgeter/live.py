"""TAB live: test problems as multi-turn sessions through the gateway, against the table's prediction.

    .venv/bin/python benchmarks/budgeter/live.py --world data/world \\
        --artifact data/tab-bench/128-per-turn_lambda0.01/tab/policy --problems 100 --static 256

Starts the solver the artifact was trained for (vLLM, as the world build serves it) and ``thrifty serve``
with ``budgeter: {tab: {artifact}}``, then plays each problem as one session with the openai SDK: an
``X-Session-ID`` per problem, ``thrifty.budget`` = B on the first turn (and ``thrifty.plan`` for an
All-SubQ policy), the solver's own answers as the history. The gateway's budget stage picks every turn's
budget from the session's ledger. The same problems are played again with a static level (the client's
own ``thinking_token_budget``, which wins over the policy). Each is compared with what the table
predicts: the artifact deciding with the gateway's code (:func:`thrifty.budgeter.tab.serving.environment_policy`)
on the outcome table. Writes live.json under --report and prints the table RESULTS.md holds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
from tqdm import tqdm

from thrifty.budgeter.tab.artifact import read_artifact
from thrifty.budgeter.tab.serving import environment_policy
from thrifty.budgeter.tab.train import BudgetRule
from thrifty.budgeter.world.build import read_chains, table_path
from thrifty.budgeter.world.chains import Chain
from thrifty.budgeter.world.chat_format import messages_for
from thrifty.budgeter.world.environment import TableEnv, run_episode, static
from thrifty.budgeter.world.evaluate import ANSWER_ALLOWANCE, serving
from thrifty.budgeter.world.live import gateway
from thrifty.budgeter.world.outcomes import OutcomeTable
from thrifty.budgeter.world.solvers import load_specs
from thrifty.budgeter.world.verify import verify


def play_session(
    url: str, model: str, chain: Chain, session: str, first: dict[str, Any], level: int | None
) -> dict[str, Any]:
    """One problem as one session; ``level``: the client's own budget every turn (None: the gateway decides)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    answers: list[str] = []
    turns = []
    for turn, step in enumerate(chain.steps):
        body: dict[str, Any] = {"thrifty": first} if turn == 0 and first else {}
        if level is not None:
            body["thinking_token_budget"] = level
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=messages_for(chain, turn, answers),  # type: ignore[arg-type]
            temperature=0.0,
            max_tokens=ANSWER_ALLOWANCE,
            extra_headers={"X-Session-ID": session},
            extra_body=body or None,
        )
        response = raw.parse()
        message = response.choices[0].message
        thinking = getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None) or ""
        content = message.content or ""
        assert response.usage is not None
        turns.append(
            {
                "budget": int(raw.headers["x-thrifty-thinking-budget"]),
                "policy": raw.headers.get("x-thrifty-budget-policy"),
                "thinking": len(thinking.encode()),  # the solvers' tokenizer: one token per byte
                "completion": response.usage.completion_tokens,
                "correct": verify(content, step.value),
            }
        )
        answers.append(content)
    ledger = httpx.get(f"{url}/v1/sessions/{session}", timeout=30).json()
    return {
        "problem": chain.id,
        "turns": turns,
        "correct": all(t["correct"] for t in turns),
        "thinking": sum(t["thinking"] for t in turns),
        "ledger_exact": ledger["spent"] == sum(t["completion"] for t in turns)
        and [t["thinking_budget"] for t in ledger["turns"]] == [t["budget"] for t in turns],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, required=True, help="a TAB policy folder (a job's policy/)")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--static", type=int, default=256, help="the static level played alongside")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--report", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()

    artifact = read_artifact(args.artifact)
    spec = artifact.spec
    rule = BudgetRule(tokens=spec.budget.tokens, per_turn=spec.budget.per_turn)
    (solver,) = spec.solvers[:1]
    table = OutcomeTable.read(table_path(args.world, solver, "test"))
    chains = {c.id: c for c in read_chains(args.world / "data" / "test.jsonl")}
    problems = list(table.problems())[: args.problems]
    env = TableEnv(table, [chains[p] for p in table.problems()])
    predicted = {
        "tab": [run_episode(env, p, environment_policy(args.artifact, rule)) for p in problems],
        f"static-{args.static}": [run_episode(env, p, static(args.static)) for p in problems],
    }
    solver_spec = load_specs().solvers[solver]
    budgeter = {"tab": {"artifact": str(args.artifact.resolve())}}
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        with serving({solver: (args.world / "solvers" / solver, solver_spec)}, folder) as servers:
            server = servers[solver]
            server.wait_ready()
            with gateway(solver_spec, server.base_url, folder, budgeter=budgeter) as url:
                jobs = []
                for p in problems:
                    chain = chains[p]
                    first: dict[str, Any] = {"budget": rule(p, len(chain.steps))}
                    if spec.all_subq:
                        first["plan"] = [s.prompt for s in chain.steps]
                    jobs.append(("tab", chain, f"tab-{p}", first, None))
                    jobs.append((f"static-{args.static}", chain, f"static-{p}", {}, args.static))
                with ThreadPoolExecutor(args.workers) as pool, tqdm(total=len(jobs), desc="live sessions") as bar:
                    futures = [pool.submit(play_session, url, solver, *job[1:]) for job in jobs]
                    live: dict[str, list[dict[str, Any]]] = {"tab": [], f"static-{args.static}": []}
                    for job, future in zip(jobs, futures, strict=True):
                        live[job[0]].append(future.result())
                        bar.update(1)
                metrics = httpx.get(f"{url}/metrics", timeout=30).text
    count = len(problems)
    report: dict[str, Any] = {"artifact": str(args.artifact), "solver": solver, "problems": count, "policies": {}}
    for name, episodes in predicted.items():
        seen = live[name]
        report["policies"][name] = {
            "accuracy_table": sum(e.correct for e in episodes) / count,
            "accuracy_live": sum(s["correct"] for s in seen) / count,
            "thinking_table": statistics.fmean(e.thinking_tokens for e in episodes),
            "thinking_live": statistics.fmean(s["thinking"] for s in seen),
            "same_outcome": sum(e.correct == s["correct"] for e, s in zip(episodes, seen, strict=True)) / count,
            "same_budgets": sum(
                list(e.budgets) == [t["budget"] for t in s["turns"]] for e, s in zip(episodes, seen, strict=True)
            )
            / count,
            "ledger_exact": sum(s["ledger_exact"] for s in seen) / count,
            "policy_header": sorted({t["policy"] for s in seen for t in s["turns"]}),
        }
    tab, fixed = report["policies"]["tab"], report["policies"][f"static-{args.static}"]
    report["saving_live"] = 1 - tab["thinking_live"] / fixed["thinking_live"]
    report["saving_table"] = 1 - tab["thinking_table"] / fixed["thinking_table"]
    report["decision_seconds"] = [line for line in metrics.splitlines() if "thrifty_budget_decision_seconds" in line]
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "live.json").write_text(json.dumps(report, indent=1))
    print(f"{count} problems of {solver}'s test table, B = {rule.label()}, through thrifty serve")
    print("| policy | accuracy live | accuracy table | thinking live | thinking table | same outcome | same budgets "
          "| ledger exact |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in report["policies"].items():
        print(
            f"| {name} | {100 * row['accuracy_live']:.1f} | {100 * row['accuracy_table']:.1f} | "
            f"{row['thinking_live']:.1f} | {row['thinking_table']:.1f} | {100 * row['same_outcome']:.0f} % | "
            f"{100 * row['same_budgets']:.0f} % | {100 * row['ledger_exact']:.0f} % |"
        )
    print(f"TAB saves {100 * report['saving_live']:.1f} % of static-{args.static}'s thinking live, "
          f"{100 * report['saving_table']:.1f} % on the table")  # fmt: skip


if __name__ == "__main__":
    main()
