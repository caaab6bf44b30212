"""TAB against every baseline on the reasoning world's test table: accuracy against thinking tokens.

For each problem budget B (and penalty λ), train TAB and TAB All-SubQ with ``thrifty train budgeter``'s
job (one per seed, resumable under --work), then play every policy greedily on the test problems
(never trained on): the static levels, the uniform split of B, the difficulty heuristic, the LLM judge
(SmolLM2 zero-shot, three views), TAB, TAB All-SubQ and the oracle. Savings are against the static
frontier at equal accuracy (:mod:`thrifty.budgeter.tab.compare`).

    .venv/bin/python benchmarks/budgeter/run.py --world data/world --work data/tab-bench \\
        --budgets 64/turn 128/turn 256/turn --lambdas 0.01 --seeds 0 1 2 --jobs 2

``--thinking-prices 0 1e-4`` also trains both TAB variants with a price μ on the thinking tokens used
(``thrifty train budgeter --thinking-price``; 0 is TAB's own reward) and plays them in the same tables.

``--choose-price-from 0 3e-4 1e-3`` trains both variants under every μ of that grid instead, lets the
job choose μ on its validation problems (the largest that keeps the best static level's validation
accuracy, less ``--accuracy-tolerance``), and plays every μ of the grid and the chosen one: a row per μ
("tab μ=3e-4") and "tab μ chosen". With 0 in the grid, the plain TAB rows are its μ = 0 runs
(not trained twice). ``--price-budgets`` limits the grid to some B (the others train plain TAB).

``--jobs N`` trains N jobs at once first, each in its own process on one thread (GRPO on the fast
policy is mostly Python: on a 2-core machine two jobs take about as long as one).

Writes results.json, curves.png and training.png under --report and prints the tables RESULTS.md holds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from thrifty.budgeter.tab import baselines
from thrifty.budgeter.tab.compare import Point, frontier, over_seeds, play, saving
from thrifty.budgeter.tab.grpo import GrpoSettings, rollout
from thrifty.budgeter.tab.job import TabJobOptions, load_world, run_job, run_name
from thrifty.budgeter.tab.train import BudgetRule, summarize
from thrifty.budgeter.world.build import read_chains
from thrifty.budgeter.world.chat_format import messages_for
from thrifty.budgeter.world.environment import oracle_allocation, static

VARIANTS = {"tab": False, "tab-allsubq": True}


def judge_point(world: Any, scorer: Any, rule: BudgetRule, name: str) -> Point:
    """The LLM judge played greedily: its letter among the levels that fit, as the gateway would pick it.

    The problems advance in lockstep, turn by turn (GRPO's rollout with one greedy trajectory each), so
    every turn's prompts go through the model in batches instead of one forward per decision.
    """
    played = rollout(world.test, scorer, world.test_problems, 1, rule, 0.0, 1.0, None)
    found = summarize(played)
    return Point(name, found["accuracy"], found["thinking"], found["tokens"])


def oracle_point(world: Any, problems: list[str]) -> Point:
    table = world.test.table
    solved = thinking = tokens = 0.0
    for problem in problems:
        ok, budgets, used = oracle_allocation(table, problem)
        rows = table.problems()[problem]
        solved += ok
        thinking += sum(r.outcome(b).thinking_tokens for r, b in zip(rows, budgets, strict=True))
        tokens += used
    return Point("oracle", solved / len(problems), thinking / len(problems), tokens / len(problems))


def baseline_points(world: Any, folder: Path, rule: BudgetRule, judges: dict[str, Any]) -> list[Point]:
    """The heuristic (calibrated on the training table), the uniform split and the judges, under B."""
    problems = world.test_problems
    chains = {c.id: c for c in read_chains(folder / "data" / "train.jsonl")}
    heuristic = baselines.calibrate_heuristic(world.train.table, lambda p, t: messages_for(chains[p], t))
    ladder = world.ladder
    points = [
        play(world.test, problems, baselines.budgeted(heuristic, ladder, rule), "heuristic"),
        play(
            world.test,
            problems,
            baselines.budgeted(baselines.uniform(ladder, lambda c: len(c.plan or ())), ladder, rule, all_subq=True),
            "uniform",
        ),
    ]
    for view, scorer in judges.items():
        started = time.monotonic()
        points.append(judge_point(world, scorer, rule, f"judge-{view}"))
        print(f"  judge-{view}: {time.monotonic() - started:.0f} s", flush=True)
    return points


def variants(prices: list[float], scaled: bool = True) -> list[tuple[str, str, float]]:
    """(name, TAB variant, μ) for every variant under every thinking price (μ = 0 keeps the plain name;
    unscaled advantages add " unscaled")."""
    tail = "" if scaled else " unscaled"
    return [((v if price == 0 else f"{v} μ={price:g}") + tail, v, price) for price in prices for v in VARIANTS]


def job_options(
    base: TabJobOptions, work: Path, rule: BudgetRule, penalty: float, variant: str, price: float = 0.0
) -> TabJobOptions:
    folder = (
        work
        / f"{rule.label().replace('/', '-per-')}_lambda{penalty:g}"
        / ((variant if price == 0 else f"{variant}_mu{price:g}") + ("" if base.grpo.scale_rewards else "_unscaled"))
    )
    return replace(base, out=folder, budget=rule, penalty=penalty, all_subq=VARIANTS[variant], thinking_price=price)


def grid_options(
    base: TabJobOptions, work: Path, rule: BudgetRule, penalty: float, variant: str, grid: list[float], tolerance: float
) -> TabJobOptions:
    """A job that chooses μ from ``grid`` on validation (``thrifty train budgeter --choose-price-from``)."""
    plain = job_options(base, work, rule, penalty, variant)
    folder = plain.out.with_name(f"{variant}_mu-chosen" + ("" if base.grpo.scale_rewards else "_unscaled"))
    return replace(plain, out=folder, price_grid=tuple(grid), accuracy_tolerance=tolerance)


def jobs_for(
    base: TabJobOptions, args: argparse.Namespace, rule: BudgetRule, penalty: float
) -> tuple[list[tuple[str, TabJobOptions]], list[tuple[str, TabJobOptions]]]:
    """The plain jobs ((row name, options) per variant and μ) and the μ-choosing ones under one B."""
    gridded = args.choose_price_from and (
        args.price_budgets is None or rule in {BudgetRule.parse(b) for b in args.price_budgets}
    )
    grid = (
        [
            (v, grid_options(base, args.work, rule, penalty, v, args.choose_price_from, args.accuracy_tolerance))
            for v in VARIANTS
        ]
        if gridded
        else []
    )
    plain = [
        (label, job_options(base, args.work, rule, penalty, v, mu))
        for label, v, mu in variants(args.thinking_prices, base.grpo.scale_rewards)
        if not (gridded and mu in args.choose_price_from)  # the grid's runs of that μ give the row
    ]
    return plain, grid


def grid_points(
    variant: str, record: dict[str, Any], seeds: tuple[int, ...], scaled: bool
) -> tuple[list[Point], dict[str, Any]]:
    """Rows of a μ-choosing job: every μ of its grid over seeds, then the chosen μ; and the histories."""
    tail = "" if scaled else " unscaled"
    choice = record["price"]
    points, histories = [], {}
    for summary in choice["prices"].values():
        price = summary["price"]
        label = (variant if price == 0 else f"{variant} μ={price:g}") + tail
        runs = {name: record["runs"][name] for name in (run_name(seed, price, True) for seed in seeds)}
        points.append(_over(label, runs))
        histories[label] = {name: run["history"] for name, run in runs.items()}
    points.append(_over(f"{variant} μ chosen ({choice['chosen']:g}){tail}", record["seeds"]))
    return points, histories


def _over(label: str, runs: dict[str, Any]) -> Point:
    return over_seeds(
        label,
        [
            Point(f"{label} {name}", **{k: run["test"][k] for k in ("accuracy", "thinking", "tokens")})
            for name, run in runs.items()
        ],
    )


def _train_alone(options: TabJobOptions) -> str:
    """One job in a worker process, on one thread (the workers share the machine's cores)."""
    import torch

    torch.set_num_threads(1)
    run_job(options, progress=False)
    return str(options.out)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def table_lines(config: str, points: list[Point], statics: list[Point]) -> list[str]:
    curve = frontier(statics)
    best = max(statics, key=lambda p: (p.accuracy, -p.thinking))
    lines = [
        f"### {config}",
        "",
        "| policy | problem accuracy (%) | thinking per problem | saving vs static at equal accuracy "
        "| vs best static (accuracy, thinking) |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in [*statics, *points]:
        accuracy = _pct(p.accuracy) + (f" ± {_pct(p.accuracy_std)}" if p.runs > 1 else "")
        thinking = f"{p.thinking:.1f}" + (f" ± {p.thinking_std:.1f}" if p.runs > 1 else "")
        versus = f"{100 * (p.accuracy - best.accuracy):+.1f} pts, {100 * (p.thinking / best.thinking - 1):+.1f} %"
        lines.append(f"| {p.name} | {accuracy} | {thinking} | {100 * saving(p, curve):.1f} % | {versus} |")
    return [*lines, ""]


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.4), squeeze=False)
    # One colour per policy across the panels (a panel may lack some, e.g. the judge under some B).
    names = list(dict.fromkeys(raw["name"] for result in results for raw in result["policies"]))
    palette = plt.get_cmap("tab10")
    colours = {name: palette(i % 10) for i, name in enumerate(names)}
    for ax, result in zip(axes[0], results, strict=True):
        statics = [Point(**p) for p in result["static"]]
        curve = frontier(statics)
        ax.plot([p.thinking for p in curve], [100 * p.accuracy for p in curve], "k-", lw=1, label="static frontier")
        for p in statics:
            ax.annotate(p.name.removeprefix("static-"), (p.thinking, 100 * p.accuracy), fontsize=7, alpha=0.7)
        ax.scatter([p.thinking for p in statics], [100 * p.accuracy for p in statics], c="k", s=12)
        for raw in result["policies"]:
            p = Point(**raw)
            ax.errorbar(
                p.thinking,
                100 * p.accuracy,
                xerr=p.thinking_std or None,
                yerr=100 * p.accuracy_std or None,
                fmt="o" if p.name.startswith("tab") else "s",
                ms=6 if p.name.startswith("tab") else 4,
                label=p.name,
                color=colours[p.name],
                capsize=2,
            )
        ax.set_title(f"B = {result['budget']}, λ = {result['penalty']:g}")
        ax.set_xlabel("thinking tokens used per problem")
        ax.set_ylabel("problems solved (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.6), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        for variant, seeds in result["histories"].items():
            for seed, history in seeds.items():
                ax.plot(
                    [h["step"] for h in history],
                    [h["reward"] for h in history],
                    "--" if "allsubq" in variant else "-",
                    lw=1,
                    label=f"{variant} {seed}",
                )
        ax.set_title(f"validation reward, B = {result['budget']}, λ = {result['penalty']:g}")
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="job folders (resumed when rerun)")
    parser.add_argument("--report", type=Path, default=Path(__file__).parent)
    parser.add_argument("--budgets", nargs="+", default=["64/turn", "128/turn", "256/turn"])
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.01])
    parser.add_argument(
        "--thinking-prices", nargs="+", type=float, default=[0.0], help="μ per thinking token used (0: TAB's reward)"
    )
    parser.add_argument(
        "--choose-price-from", nargs="+", type=float, default=None, help="a μ grid each TAB job chooses from"
    )
    parser.add_argument("--accuracy-tolerance", type=float, default=0.01, help="validation accuracy μ may cost")
    parser.add_argument("--price-budgets", nargs="+", default=None, help="train the μ grid only under these B")
    parser.add_argument("--validation-problems", type=int, default=None, help="held out of the training problems")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=GrpoSettings().steps)
    parser.add_argument("--problems-per-step", type=int, default=GrpoSettings().problems_per_step)
    parser.add_argument("--group", type=int, default=GrpoSettings().group)
    parser.add_argument("--lr", type=float, default=GrpoSettings().learning_rate)
    parser.add_argument("--beta", type=float, default=GrpoSettings().beta)
    parser.add_argument(
        "--no-scale-rewards",
        action="store_true",
        help="advantages centred in each group, not divided by its std (Dr. GRPO), for every TAB variant",
    )
    parser.add_argument("--judge-model", type=Path, default=None, help="SmolLM2 folder: adds the LLM judge")
    parser.add_argument(
        "--judge-budgets", nargs="+", default=None, help="play the judge only under these B (default: every B)"
    )
    parser.add_argument("--test-problems", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=1, help="training jobs run at once (processes)")
    args = parser.parse_args()

    grpo = GrpoSettings(
        steps=args.steps,
        problems_per_step=args.problems_per_step,
        group=args.group,
        learning_rate=args.lr,
        beta=args.beta,
        scale_rewards=not args.no_scale_rewards,
    )
    rules = [BudgetRule.parse(text) for text in args.budgets]
    base = TabJobOptions(
        world=args.world,
        out=args.work,
        budget=rules[0],
        seeds=tuple(args.seeds),
        grpo=grpo,
        test_problems=args.test_problems,
        validation_problems=args.validation_problems,
    )
    if args.jobs > 1:
        every = []
        for r in rules:
            for p in args.lambdas:
                plain, grid = jobs_for(base, args, r, p)
                every += [options for _, options in grid + plain]  # the long μ-grid jobs first
        print(f"training {len(every)} jobs, {args.jobs} at a time", flush=True)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_train_alone, every):
                print(f"  trained {done}", flush=True)
    world = load_world(base)  # the tables and splits: the same for every B and λ
    results: list[dict[str, Any]] = []
    judges: dict[str, Any] = {}
    text: list[str] = []
    for rule in rules:
        for penalty in args.lambdas:
            config = f"B = {rule.label()}, λ = {penalty:g}"
            print(f"== {config}", flush=True)
            if args.judge_model is not None and not judges:
                from thrifty.budgeter.tab.llm import VIEWS, LlmScorer

                judges = {v: LlmScorer(args.judge_model, world.ladder, v, all_subq=v == "all") for v in VIEWS}
            problems = world.test_problems
            statics = [play(world.test, problems, static(b), f"static-{b}") for b in world.ladder]
            judged = args.judge_budgets is None or rule in {BudgetRule.parse(b) for b in args.judge_budgets}
            policies = baseline_points(world, args.world, rule, judges if judged else {})
            histories: dict[str, Any] = {}
            choices: dict[str, Any] = {}
            plain, grid = jobs_for(base, args, rule, penalty)
            for variant, options in grid:  # resumed: trained above (or here, one at a time, without --jobs)
                record = run_job(options)
                found, traced = grid_points(variant, record, options.seeds, grpo.scale_rewards)
                policies += found
                histories |= traced
                choices[variant] = record["price"]
            for label, options in plain:
                record = run_job(options)
                policies.append(_over(label, record["seeds"]))
                histories[label] = {name: seed["history"] for name, seed in record["seeds"].items()}
            policies.append(oracle_point(world, problems))
            results.append(
                {
                    "budget": rule.label(),
                    "penalty": penalty,
                    "problems": len(problems),
                    "static": [p.to_json() for p in statics],
                    "policies": [p.to_json() for p in policies],
                    "histories": histories,
                    "price_choices": choices,
                }
            )
            lines = table_lines(config, policies, statics)
            for variant, choice in choices.items():
                seen = ", ".join(f"μ={k}: {100 * v['validation_accuracy']:.1f} %" for k, v in choice["prices"].items())
                lines.append(
                    f"{variant}: μ = {choice['chosen']:g} chosen ({choice['why']}; best static level "
                    f"{100 * choice['reference']:.1f} % on validation; {seen})"
                )
            if choices:
                lines.append("")
            print("\n".join(lines), flush=True)
            text += lines
    args.report.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.report / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    (args.report / "tables.md").write_text("\n".join(text))
    plot(results, args.report / "curves.png")
    plot_training(results, args.report / "training.png")
    print(f"wrote {args.report}/results.json, tables.md, curves.png, training.png")


if __name__ == "__main__":
    main()
