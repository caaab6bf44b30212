"""``thrifty train budgeter``: GRPO training of a TAB policy on a world's outcome table, as a resumable job.

Stages (the kit's :class:`~thrifty.server.kit.jobs.Job`: a rerun skips what is done and continues an
interrupted stage from its checkpoint):

- ``train:seed<k>`` for each seed: train on the serving solver's table of training problems (a tenth of
  them held out for validation), evaluate greedily on the test table, write that seed's artifact under
  ``seeds/seed<k>``;
- ``artifact``: the seed with the best validation reward becomes ``policy/``, its manifest holding
  every seed's test metrics and their mean and spread.

With ``price_grid`` (``--choose-price-from 0,3e-4,1e-3``) the thinking price μ is chosen, not given:
every μ of the grid is trained for every seed (stages ``train:mu<μ>-seed<k>``), and the ``price`` stage
keeps the largest μ whose greedy policy, averaged over the seeds, still solves as many validation
problems as the best static level does there, less ``accuracy_tolerance``: the cheapest policy at
*maintained* accuracy, decided on problems the test never sees. When no μ keeps that accuracy, the
most accurate one is kept. The ``artifact`` stage then picks among that μ's seeds as above.

The world folder is a ``thrifty world build`` output: its manifest names the solver(s) a budget policy
serves, and ``tables/<solver>/{train,test}.jsonl`` and ``data/{train,test}.jsonl`` are what is read.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from thrifty.budgeter.tab.artifact import ADAPTER_DIR, PolicySpec, ProblemBudget, read_artifact, write_fast
from thrifty.budgeter.tab.grpo import GrpoSettings
from thrifty.budgeter.tab.train import BudgetRule, RunSettings, evaluate, train
from thrifty.budgeter.world.build import read_chains, table_path
from thrifty.budgeter.world.environment import TableEnv
from thrifty.budgeter.world.outcomes import OutcomeTable
from thrifty.server.kit.artifacts import ArtifactError, ArtifactWriter, sha256
from thrifty.server.kit.jobs import Job, JobError, StageContext

KIND = "tab training"
LORA = (64, 128)  # the paper's rank and alpha


@dataclass(frozen=True, slots=True)
class TabJobOptions:
    world: Path
    out: Path
    policy: Literal["fast", "llm"] = "fast"
    all_subq: bool = False
    budget: BudgetRule = field(default_factory=lambda: BudgetRule(tokens=320))
    penalty: float = 0.01
    thinking_price: float = 0.0  # μ: reward lost per thinking token used (0: TAB's reward)
    price_grid: tuple[float, ...] = ()  # choose μ among these on validation (overrides thinking_price)
    accuracy_tolerance: float = 0.01  # with price_grid: validation accuracy a larger μ may give up
    seeds: tuple[int, ...] = (0, 1, 2)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    eval_every: int = 25
    embedder: Path | None = None  # fast: a static embedder folder whose vectors join the features
    model_dir: Path | None = None  # llm: the base model (the bundled SmolLM2 folder)
    train_problems: int | None = None  # use only the first N training problems of the table
    validation_problems: int | None = None  # held out of those (default: a tenth, at least one)
    test_problems: int | None = None  # evaluate on the first N test problems (default: all)
    solver: str | None = None  # default: the world's (first) serving solver

    def settings(self) -> dict[str, Any]:
        data = asdict(self)
        data["world"], data["out"] = str(self.world.resolve()), str(self.out.resolve())
        data["embedder"] = None if self.embedder is None else str(self.embedder.resolve())
        data["model_dir"] = None if self.model_dir is None else str(self.model_dir.resolve())
        data["seeds"] = list(self.seeds)
        if not self.price_grid:  # recorded only when set: older job folders still resume
            del data["price_grid"], data["accuracy_tolerance"]
        else:
            data["price_grid"] = list(self.price_grid)
        if self.grpo.scale_rewards:  # the default, recorded only when off: older job folders still resume
            del data["grpo"]["scale_rewards"]
        return data


@dataclass(frozen=True)
class World:
    solver: str
    ladder: tuple[int, ...]
    train: TableEnv
    train_problems: list[str]
    validation_problems: list[str]
    test: TableEnv
    test_problems: list[str]
    inputs: dict[str, Any]


def load_world(options: TabJobOptions) -> World:
    manifest_path = options.world / "manifest.json"
    if not manifest_path.is_file():
        raise JobError(f"{options.world} is not a world build (no manifest.json); run `thrifty world build`")
    manifest = json.loads(manifest_path.read_text())
    serving = manifest.get("environment", {}).get("serving") or manifest.get("environment", {}).get("solvers")
    solver = options.solver or (serving[0] if serving else None)
    if solver is None:
        raise JobError(f"{options.world}: the world's manifest names no solver a budget policy serves")
    paths = {split: table_path(options.world, solver, split) for split in ("train", "test")}
    for split, path in paths.items():
        if not path.is_file():
            raise JobError(f"{options.world} has no {split} outcome table for {solver} ({path})")
    train_table, test_table = OutcomeTable.read(paths["train"]), OutcomeTable.read(paths["test"])
    train_env = TableEnv(train_table, read_chains(options.world / "data" / "train.jsonl"))
    test_env = TableEnv(test_table, read_chains(options.world / "data" / "test.jsonl"))
    problems = train_env.problems[: options.train_problems]
    shuffled = random.Random(0).sample(problems, len(problems))  # the same split for every seed
    held = options.validation_problems or max(1, len(problems) // 10)
    if held >= len(problems):
        raise JobError(f"{len(problems)} training problems cannot spare {held} for validation")
    inputs = {f"table_{split}": {"path": str(path), "sha256": sha256(path)} for split, path in paths.items()}
    return World(
        solver=solver,
        ladder=train_table.ladder,
        train=train_env,
        train_problems=sorted(shuffled[held:], key=problems.index),
        validation_problems=sorted(shuffled[:held], key=problems.index),
        test=test_env,
        test_problems=test_env.problems[: options.test_problems],
        inputs=inputs,
    )


def _learner(options: TabJobOptions, ladder: tuple[int, ...], seed: int) -> tuple[Any, dict[str, Any] | None]:
    if options.policy == "llm":
        from thrifty.budgeter.tab.llm import LlmScorer, View

        if options.model_dir is None:
            raise JobError("an llm policy needs --model-dir (the bundled SmolLM2: `thrifty models prepare`)")
        view: View = "all" if options.all_subq else "history"
        return LlmScorer(options.model_dir, ladder, view, options.all_subq, lora=LORA, seed=seed, batch_size=8), None
    from thrifty.budgeter.tab.fast import FastLearner

    if options.embedder is None:
        return FastLearner(ladder, options.all_subq, seed=seed), None
    from thrifty.router.embedding import StaticEmbedder

    embedder = StaticEmbedder(options.embedder)
    learner = FastLearner(ladder, options.all_subq, embed=embedder.encode, embedding_dim=embedder.dim, seed=seed)
    return learner, embedder.identity


def _spec(
    options: TabJobOptions, world: World, learner: Any, embedder: dict[str, Any] | None, seed: int, price: float
) -> PolicySpec:
    base = None
    if options.policy == "llm":
        assert options.model_dir is not None
        weights = options.model_dir / "model.safetensors"
        base = {"path": str(options.model_dir.resolve()), "sha256": sha256(weights) if weights.is_file() else None}
    return PolicySpec(
        policy=options.policy,
        ladder=world.ladder,
        all_subq=options.all_subq,
        solvers=(world.solver,),
        budget=ProblemBudget(tokens=options.budget.tokens, per_turn=options.budget.per_turn),
        penalty=options.penalty,
        thinking_price=price,
        features=tuple(getattr(learner, "names", ())),
        hidden=int(getattr(learner, "hidden", 0)),
        embedder=embedder,
        base_model=base,
        seed=seed,
    )


def _write_seed(
    options: TabJobOptions,
    world: World,
    learner: Any,
    embedder: dict[str, Any] | None,
    seed: int,
    price: float,
    name: str,
    metrics: dict[str, Any],
) -> Path:
    target = options.out / "seeds" / name
    spec = _spec(options, world, learner, embedder, seed, price)
    inputs = world.inputs | {"settings": options.settings()}
    if options.policy == "fast":
        return write_fast(
            target,
            spec,
            learner.export(),
            embedder_folder=options.embedder,
            inputs=inputs,
            metrics=metrics,
            replace=True,
        )
    with ArtifactWriter(target, "thrifty.tab_policy", 1, replace=True) as writer:
        (writer.staging / "policy.json").write_text(spec.model_dump_json(indent=1))
        learner.save_adapter(writer.staging / ADAPTER_DIR)
        return writer.commit(inputs=inputs, metrics=metrics)


def run_name(seed: int, price: float, grid: bool) -> str:
    """A run's stage and folder name: ``seed<k>``, or ``mu<μ>-seed<k>`` when μ is chosen from a grid."""
    return f"mu{price:g}-seed{seed}" if grid else f"seed{seed}"


def run_job(options: TabJobOptions, progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) the job; returns the artifact stage's record and, under ``seeds``, each seed's
    (validation history, last training step, validation and test metrics). With a price grid, also
    ``price`` (the choice and every μ's validation and test summary) and ``runs`` (every μ's seeds);
    ``seeds`` then holds the chosen μ's."""
    if options.price_grid and len(set(options.price_grid)) != len(options.price_grid):
        raise JobError("--choose-price-from names a price twice")
    job = Job(options.out, kind=KIND, settings=options.settings(), progress=progress)
    if fresh:
        job.fresh()
    world = load_world(options)
    grid = bool(options.price_grid)
    prices = options.price_grid or (options.thinking_price,)
    runs: dict[str, Any] = {}
    for price in prices:
        for seed in options.seeds:
            name = run_name(seed, price, grid)

            def run_seed(
                context: StageContext, seed: int = seed, price: float = price, name: str = name
            ) -> dict[str, Any]:
                learner, embedder = _learner(options, world.ladder, seed)
                settings = RunSettings(
                    options.budget,
                    options.penalty,
                    seed,
                    options.grpo,
                    options.eval_every,
                    checkpoint_every=options.eval_every,  # a checkpoint at every validation point
                    thinking_price=price,
                )
                label = f"GRPO μ={price:g} seed {seed}" if grid else f"GRPO seed {seed}"
                with context.progress(options.grpo.steps, label) as bar:
                    history = train(
                        learner,
                        world.train,
                        world.train_problems,
                        (world.train, world.validation_problems),
                        settings,
                        context.checkpoint,
                        bar,
                    )
                test = evaluate(world.test, learner, world.test_problems, options.budget, options.penalty, price)
                metrics = {"validation": history["history"][-1], "test": test}
                _write_seed(options, world, learner, embedder, seed, price, name, metrics)
                return {"history": history["history"], "train": history["train"][-1:], "folder": name, **metrics}

            runs[name] = job.stage(f"train:{name}", run_seed)
    extra: dict[str, Any] = {}
    records = runs
    if grid:
        choice = job.stage("price", lambda context: choose_price(options, world, runs))
        chosen = float(choice["chosen"])
        records = {f"seed{seed}": runs[run_name(seed, chosen, True)] for seed in options.seeds}
        extra = {"price": choice, "runs": runs}
    artifact = job.stage("artifact", lambda context: _choose(options, records, extra.get("price")))
    return artifact | {"seeds": records} | extra


def static_validation(world: World) -> dict[str, float]:
    """Problem accuracy of every static ladder level on the validation problems (B not applied, as
    the benchmark's static points): what maintained accuracy is measured against."""
    from thrifty.budgeter.tab.compare import play
    from thrifty.budgeter.world.environment import static

    return {
        str(level): play(world.train, world.validation_problems, static(level), f"static-{level}").accuracy
        for level in world.ladder
    }


def choose_price(options: TabJobOptions, world: World, runs: dict[str, Any]) -> dict[str, Any]:
    """The largest μ of the grid whose mean validation accuracy over seeds is within the tolerance of the
    best static level's on the same problems; the most accurate μ when none is."""
    statics = static_validation(world)
    reference = max(statics.values())
    summary: dict[str, dict[str, Any]] = {}
    for price in options.price_grid:
        seeds = [runs[run_name(seed, price, True)] for seed in options.seeds]
        summary[f"{price:g}"] = {
            "price": price,
            "validation_accuracy": statistics.fmean(s["validation"]["accuracy"] for s in seeds),
            "validation_thinking": statistics.fmean(s["validation"]["thinking"] for s in seeds),
            "test_accuracy": statistics.fmean(s["test"]["accuracy"] for s in seeds),
            "test_thinking": statistics.fmean(s["test"]["thinking"] for s in seeds),
        }
    keeping = [s for s in summary.values() if s["validation_accuracy"] >= reference - options.accuracy_tolerance - 1e-9]
    if keeping:
        chosen, why = max(keeping, key=lambda s: s["price"]), "the largest μ keeping validation accuracy"
    else:
        chosen = max(summary.values(), key=lambda s: (s["validation_accuracy"], -s["price"]))
        why = "no μ kept validation accuracy: the most accurate"
    return {
        "chosen": chosen["price"],
        "why": why,
        "reference": reference,
        "tolerance": options.accuracy_tolerance,
        "static_validation": statics,
        "prices": summary,
    }


def _choose(options: TabJobOptions, records: dict[str, Any], price: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seed with the best validation reward (``records`` by seed name) becomes ``policy/``; its
    manifest also keeps how μ was chosen (``price``), when it was."""
    best = max(records, key=lambda name: records[name]["validation"]["reward"])
    folder = records[best].get("folder") or best
    source = options.out / "seeds" / folder
    try:
        read_artifact(source)
    except ArtifactError as exc:
        raise JobError(f"the artifact of {best} is damaged ({exc}); run with --fresh") from None
    test = {name: record["test"] for name, record in records.items()}
    spread = {
        key: {
            "mean": statistics.fmean(t[key] for t in test.values()),
            "std": statistics.stdev(t[key] for t in test.values()) if len(test) > 1 else 0.0,
        }
        for key in ("reward", "accuracy", "thinking", "tokens")
    }
    target = options.out / "policy"
    manifest = json.loads((source / "manifest.json").read_text())
    with ArtifactWriter(target, "thrifty.tab_policy", 1, replace=True) as writer:
        shutil.copytree(source, writer.staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json"))
        metrics = {"chosen_seed": best, "seeds": test, "test_over_seeds": spread}
        if price is not None:
            metrics["thinking_price"] = price
        writer.commit(inputs=manifest.get("inputs", {}), metrics=metrics)
    return {"chosen": best, "policy": str(target), "test_over_seeds": spread}
