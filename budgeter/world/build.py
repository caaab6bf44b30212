"""``thrifty world build``: data → train each solver → evaluate each through vLLM → report → manifest.

Everything lands in one output folder::

    data/{train,test}.jsonl  data/stats.json      the chains, and what was left out of GSM8K and why
    solvers/<name>/                               Hugging Face folders vLLM serves (+ training.json)
    eval/<name>.jsonl                             one record per (turn, budget)
    eval/router_log.jsonl                         the router's evaluation log (format: README, "world")
    report/RESULTS.md, report/*.png, report/summary.json
    manifest.json                                 written last: its presence means the build is complete

The build is a job of the kit's runner (:mod:`thrifty.server.kit.jobs`): each stage's output is written
atomically and recorded in ``state.json``; a rerun skips finished stages (and a solver's training
resumes from its checkpoint), so an interrupted build continues, and other settings are refused. The
manifest is the kit's (:func:`thrifty.server.kit.artifacts.write_manifest`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thrifty.budgeter.world.chains import Chain, build_chains
from thrifty.budgeter.world.evaluate import TurnResult
from thrifty.budgeter.world.report import figure
from thrifty.budgeter.world.solvers import SPEC_FILE, WorldSpec, load_specs
from thrifty.router.eval_log import EvalRecord, write_eval_log
from thrifty.server.kit.artifacts import sha256, write_manifest, write_text_atomic
from thrifty.server.kit.jobs import Job, JobError, StageContext
from thrifty.server.kit.vllm import VllmServer

logger = logging.getLogger(__name__)

KIND = "thrifty.world"
VERSION = 1
SPLITS = {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}


def cpu_name() -> str:
    """The CPU's model name, for results pages (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _turns_by_bucket(summaries: dict[str, Any]) -> str:
    first: dict[str, Any] = next(iter(summaries.values()), {})
    row: dict[str, Any] = next(iter(first.values()), {"buckets": {}})
    return ", ".join(f"{b['turns']} {name}" for name, b in row["buckets"].items()) + " turns"


def _minutes(seconds: Any) -> str:
    return figure(seconds / 60 if isinstance(seconds, int | float) else None, ".1f")


class BuildError(JobError):
    """The build cannot go on; the message says what to do."""


@dataclass(frozen=True, slots=True)
class BuildOptions:
    data_dir: Path  # holds gsm8k_{train,test}.jsonl
    out: Path
    quick: bool = False
    seed: int = 0
    solvers: tuple[str, ...] | None = None  # default: every solver in solvers.yaml
    progress: bool = True

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def read_chains(path: Path) -> list[Chain]:
    return [Chain.from_json(json.loads(line)) for line in path.read_text().splitlines() if line]


def read_results(path: Path) -> list[TurnResult]:
    return [TurnResult(**json.loads(line)) for line in path.read_text().splitlines() if line]


class WorldBuild:
    def __init__(self, options: BuildOptions, spec: WorldSpec | None = None) -> None:
        self.options = options
        self.spec = spec or load_specs()
        self.out = options.out
        self.plan = self.spec.training[options.mode]
        self.evaluation = self.spec.evaluation[options.mode]
        names = options.solvers or tuple(self.spec.solvers)
        unknown = [n for n in names if n not in self.spec.solvers]
        if unknown:
            raise BuildError(f"unknown solver(s) {', '.join(unknown)}; known: {', '.join(self.spec.solvers)}")
        self.names = names
        self.settings = {"mode": options.mode, "seed": options.seed, "solvers": list(names)}
        self.job = Job(self.out, kind="world build", settings=self.settings, progress=options.progress)

    # --- stages ------------------------------------------------------------------------------------

    def _data(self, context: StageContext) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for split, file_name in SPLITS.items():
            source = self.options.data_dir / file_name
            if not source.is_file():
                raise BuildError(f"{source} is missing: point --data at the folder with GSM8K's jsonl files")
            with source.open() as lines:
                chains, dropped = build_chains(lines, split)
            steps = [s for c in chains for s in c.steps]
            stats[split] = {
                "source": str(source),
                "sha256": sha256(source),
                "problems": len(chains),
                "dropped": dict(dropped),
                "turns": len(steps),
                "buckets": dict(Counter(s.bucket for s in steps)),
                "turns_per_problem": dict(sorted(Counter(len(c.steps) for c in chains).items())),
            }
            write_text_atomic(self.out / "data" / f"{split}.jsonl", _jsonl([c.to_json() for c in chains]))
        write_text_atomic(self.out / "data" / "stats.json", json.dumps(stats, indent=1))
        return stats

    def _train(self, name: str, context: StageContext) -> dict[str, Any]:
        from thrifty.budgeter.world.training import train_solver

        chains = read_chains(self.out / "data" / "train.jsonl")
        if self.plan.train_problems is not None:
            chains = chains[: self.plan.train_problems]
        folder = self.out / "solvers" / name
        shutil.rmtree(folder, ignore_errors=True)  # a folder without a recorded stage is a torn write
        record = train_solver(
            self.spec.solvers[name],
            self.plan.for_solver(name),
            chains,
            folder,
            self.options.seed,
            progress_bar=context.show_progress,
            checkpoint=context.checkpoint,
        )
        record.pop("losses")
        return record

    def _evaluate(self, name: str, servers: dict[str, VllmServer], context: StageContext) -> dict[str, Any]:
        from thrifty.budgeter.world.evaluate import evaluate_served

        chains = read_chains(self.out / "data" / "test.jsonl")[: self.evaluation.problems]
        results = evaluate_served(
            servers[name], self.spec.solvers[name], chains, self.evaluation.budgets, progress=context.show_progress
        )
        write_text_atomic(self.out / "eval" / f"{name}.jsonl", _jsonl([r.to_json() for r in results]))
        return {"records": len(results)}

    def _report(self, context: StageContext) -> dict[str, Any]:
        from thrifty.budgeter.world.report import plot, results_page, summarize

        results = {name: read_results(self.out / "eval" / f"{name}.jsonl") for name in self.names}
        summaries = {name: summarize(rows) for name, rows in results.items()}
        training = {
            name: json.loads((self.out / "solvers" / name / "training.json").read_text()) for name in self.names
        }
        done = self.job.done()
        folder = self.out / "report"
        folder.mkdir(parents=True, exist_ok=True)
        plots = plot(summaries, folder)
        stats = json.loads((self.out / "data" / "stats.json").read_text())
        header = [
            "# The reasoning world: GSM8K calculator chains and tiny thinking solvers",
            "",
            f"Built with `thrifty world build{' --quick' if self.options.quick else ''} --out {self.options.out} "
            f"--data {self.options.data_dir}` (seed {self.options.seed}; `make world` runs it) "
            f"on {cpu_name()} ({os.cpu_count()} cores, training on the CPU); evaluated through vLLM's "
            "`thinking_token_budget`, greedy, gold history.",
            "",
            "Time: training "
            + ", ".join(f"{name} {_minutes(training[name].get('train_seconds'))} min" for name in self.names)
            + "; evaluation "
            + ", ".join(
                f"{name} {_minutes(done[f'eval:{name}'].get('seconds'))} min"
                for name in self.names
                if f"eval:{name}" in done
            )
            + ".",
            "",
            f"Data: {stats['train']['problems']} training and {stats['test']['problems']} test problems kept "
            f"({stats['train']['turns']} / {stats['test']['turns']} turns); the first "
            f"{self.evaluation.problems} test problems are evaluated ({_turns_by_bucket(summaries)}). "
            f"Buckets by digit operations per step: easy ≤ 2, medium 3–5, hard ≥ 6; "
            f"whole test split: {stats['test']['buckets']}.",
        ]
        write_text_atomic(folder / "RESULTS.md", results_page(summaries, training, header))
        write_text_atomic(folder / "summary.json", json.dumps(summaries, indent=1))
        log = [self._router_record(r) for name in self.names for r in results[name] if r.budget is None]
        count = write_eval_log(self.out / "eval" / "router_log.jsonl", log)
        return {"plots": plots, "router_log_records": count}

    @staticmethod
    def _router_record(result: TurnResult) -> EvalRecord:
        """The router sees each solver as it serves by default: thinking not limited."""
        return EvalRecord(
            query=result.query,
            model=result.solver,
            score=1.0 if result.correct else 0.0,
            cost=result.cost,
            task=result.task,
            extra={
                "bucket": result.bucket,
                "problem": result.problem,
                "turn": result.turn,
                "tokens": {
                    "prompt": result.prompt_tokens,
                    "completion": result.completion_tokens,
                    "reasoning": result.thinking_tokens,
                },
            },
        )

    # --- the whole build ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "manifest.json").unlink(missing_ok=True)
        records: dict[str, Any] = {"data": self.job.stage("data", self._data)}
        for name in self.names:
            records[f"train:{name}"] = self.job.stage(f"train:{name}", functools.partial(self._train, name))
        records |= self._evaluate_all()
        records["report"] = self.job.stage("report", self._report)
        return self._write_manifest(records)

    def _evaluate_all(self) -> dict[str, Any]:
        from thrifty.budgeter.world.evaluate import serving

        done = self.job.done()
        pending = {n: (self.out / "solvers" / n, self.spec.solvers[n]) for n in self.names if f"eval:{n}" not in done}
        records = {}
        with serving(pending, self.out) as servers:
            for name in self.names:
                records[f"eval:{name}"] = self.job.stage(
                    f"eval:{name}", functools.partial(self._evaluate, name, servers)
                )
        return records

    def _write_manifest(self, records: dict[str, Any]) -> dict[str, Any]:
        summary = json.loads((self.out / "report" / "summary.json").read_text())
        solvers = {}
        for name in self.names:
            spec = self.spec.solvers[name]
            solvers[name] = {
                "path": f"solvers/{name}",
                "architecture": spec.architecture,
                "price_per_million_tokens": spec.price,
                "training": records[f"train:{name}"],
            }
        return write_manifest(
            self.out,
            KIND,
            VERSION,
            inputs={
                split: {"path": records["data"][split]["source"], "sha256": records["data"][split]["sha256"]}
                for split in SPLITS
            }
            | {"solvers.yaml": {"path": str(SPEC_FILE), "sha256": sha256(SPEC_FILE)}},
            metrics=summary,
            under=("data", "solvers", "eval", "report"),
            settings=self.settings,
            training_plan=self.plan.to_json(),
            evaluation_plan={"problems": self.evaluation.problems, "budgets": list(self.evaluation.budgets)},
            data={split: {k: v for k, v in records["data"][split].items() if k != "sha256"} for split in SPLITS},
            solvers=solvers,
        )


def build_world(options: BuildOptions, fresh: bool = False) -> dict[str, Any]:
    build = WorldBuild(options)
    if fresh:
        build.job.fresh()
    return build.run()
