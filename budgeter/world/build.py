"""``thrifty world build``: data → train each solver → outcome tables through vLLM → checks → report.

Everything lands in one output folder::

    data/{train,test}.jsonl  data/stats.json      the chains, and what was left out of GSM8K and why
    solvers/<name>/                               Hugging Face folders vLLM serves (+ training.json)
    tables/<name>/test.jsonl                      every solver's outcome table on the held-out problems
    tables/<name>/train.jsonl                     and on training problems, for the solver(s) a policy serves
    checks/<name>.shortcut.json                   the tables' prefix shortcut against direct vLLM runs
    checks/<name>.live.json                       the table against the live solver through the gateway
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
from thrifty.budgeter.world.outcomes import OutcomeTable
from thrifty.budgeter.world.solvers import SPEC_FILE, WorldSpec, load_specs
from thrifty.router.eval_log import EvalRecord, write_eval_log
from thrifty.server.kit.artifacts import sha256, write_manifest, write_text_atomic
from thrifty.server.kit.jobs import Job, JobError, StageContext
from thrifty.server.kit.vllm import VllmServer

logger = logging.getLogger(__name__)

KIND = "thrifty.world"
VERSION = 2  # 2: overthinking solvers (checks, slips, redo) and the budget environment's outcome tables
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


def table_path(out: Path, solver: str, split: str) -> Path:
    return out / "tables" / solver / f"{split}.jsonl"


class WorldBuild:
    def __init__(self, options: BuildOptions, spec: WorldSpec | None = None) -> None:
        self.options = options
        self.spec = spec or load_specs()
        self.out = options.out
        self.plan = self.spec.training[options.mode]
        self.environment = self.spec.environment[options.mode]
        names = options.solvers or tuple(self.spec.solvers)
        unknown = [n for n in names if n not in self.spec.solvers]
        if unknown:
            raise BuildError(f"unknown solver(s) {', '.join(unknown)}; known: {', '.join(self.spec.solvers)}")
        self.names = names
        self.serving = [n for n in self.environment.solvers if n in names]  # the solvers a policy serves
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

    def _chains(self, split: str) -> list[Chain]:
        count = self.environment.test_problems if split == "test" else self.environment.train_problems
        return read_chains(self.out / "data" / f"{split}.jsonl")[:count]

    def _table(self, name: str, split: str, servers: dict[str, VllmServer], context: StageContext) -> dict[str, Any]:
        import asyncio

        from thrifty.budgeter.world.outcomes import measure_table

        server = servers[name]
        server.wait_ready()  # raises LaunchError with the end of vLLM's log if it cannot start
        chains = self._chains(split)
        table = asyncio.run(
            measure_table(
                server.base_url,
                self.spec.solvers[name],
                chains,
                self.environment.ladder,
                split,
                unlimited=self.environment.unlimited_thinking,
                progress=context.show_progress,
            )
        )
        table.write(table_path(self.out, name, split))
        return {"problems": len(chains), "turns": len(table.rows)}

    def _shortcut(self, name: str, servers: dict[str, VllmServer], context: StageContext) -> dict[str, Any]:
        import asyncio

        from thrifty.budgeter.world.outcomes import verify_shortcut

        server = servers[name]
        server.wait_ready()
        table = OutcomeTable.read(table_path(self.out, name, "test"))
        check = asyncio.run(
            verify_shortcut(
                server.base_url,
                self.spec.solvers[name],
                table,
                self._chains("test"),
                self.environment.shortcut_turns,
                seed=self.options.seed,
                unlimited=self.environment.unlimited_thinking,
            )
        )
        record = check.to_json()
        write_text_atomic(self.out / "checks" / f"{name}.shortcut.json", json.dumps(record, indent=1))
        return {k: v for k, v in record.items() if k != "mismatches"}

    def _live(self, name: str, servers: dict[str, VllmServer], context: StageContext) -> dict[str, Any]:
        from thrifty.budgeter.world.live import live_check

        server = servers[name]
        server.wait_ready()
        table = OutcomeTable.read(table_path(self.out, name, "test"))
        record = live_check(
            self.spec.solvers[name],
            server.base_url,
            table,
            self._chains("test"),
            self.environment.live_problems,
            self.environment.live_budgets,
            self.environment.unlimited_thinking,
            self.out / "logs",
            progress=context.show_progress,
        )
        write_text_atomic(self.out / "checks" / f"{name}.live.json", json.dumps(record, indent=1))
        return record

    def _report(self, context: StageContext) -> dict[str, Any]:
        from thrifty.budgeter.world.report import plot, results_page, summarize, summarize_environment

        tables = {name: OutcomeTable.read(table_path(self.out, name, "test")) for name in self.names}
        results = {name: tables[name].turn_results(self.spec.solvers[name]) for name in self.names}
        summaries = {name: summarize(rows) for name, rows in results.items()}
        environment = {name: summarize_environment(table) for name, table in tables.items()}
        checks = {
            name: {
                kind: json.loads(path.read_text())
                for kind in ("shortcut", "live")
                if (path := self.out / "checks" / f"{name}.{kind}.json").is_file()
            }
            for name in self.names
        }
        training = {
            name: json.loads((self.out / "solvers" / name / "training.json").read_text()) for name in self.names
        }
        done = self.job.done()
        folder = self.out / "report"
        folder.mkdir(parents=True, exist_ok=True)
        plots = plot(summaries, environment, folder)
        stats = json.loads((self.out / "data" / "stats.json").read_text())
        header = [
            "# The reasoning world: GSM8K calculator chains, tiny solvers that overthink, a budget environment",
            "",
            f"Built with `thrifty world build{' --quick' if self.options.quick else ''} --out {self.options.out} "
            f"--data {self.options.data_dir}` (seed {self.options.seed}; `make world` runs it) "
            f"on {cpu_name()} ({os.cpu_count()} cores, training on the CPU); outcome tables measured through "
            "vLLM (greedy, gold history, `thinking_token_budget`).",
            "",
            f"Data: {stats['train']['problems']} training and {stats['test']['problems']} test problems kept "
            f"({stats['train']['turns']} / {stats['test']['turns']} turns); every solver's table covers the first "
            f"{self.environment.test_problems} test problems ({_turns_by_bucket(summaries)}); the table of "
            f"{', '.join(self.serving) or 'no solver'} also covers {self.environment.train_problems} training "
            f"problems. Buckets by digit operations per step: easy ≤ 2, medium 3–5, hard ≥ 6; whole test split: "
            f"{stats['test']['buckets']}.",
        ]
        # A training stage that was interrupted and resumed records only its last run's seconds; the
        # solver's own training record sums every run, so that is the stage's time.
        stage_times = {name: record.get("train_seconds") or record.get("seconds") for name, record in done.items()}
        page = results_page(summaries, training, header, environment, checks, stage_times)
        write_text_atomic(folder / "RESULTS.md", page)
        write_text_atomic(
            folder / "summary.json", json.dumps({"turns": summaries, "environment": environment}, indent=1)
        )
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
        self.job.state()  # a folder holding a build with other settings is refused before anything changes
        (self.out / "manifest.json").unlink(missing_ok=True)
        records: dict[str, Any] = {"data": self.job.stage("data", self._data)}
        for name in self.names:
            records[f"train:{name}"] = self.job.stage(f"train:{name}", functools.partial(self._train, name))
        records |= self._measure_all()
        records["report"] = self.job.stage("report", self._report)
        return self._write_manifest(records)

    def _measured(self) -> list[tuple[str, Any]]:
        """The measuring stages in order: tables, then the shortcut check, then the live check."""
        stages: list[tuple[str, Any]] = []
        for name in self.names:
            stages.append((f"table:{name}:test", functools.partial(self._table, name, "test")))
        for name in self.serving:
            stages.append((f"table:{name}:train", functools.partial(self._table, name, "train")))
        for name in self.names:
            if self.environment.shortcut_turns:
                stages.append((f"shortcut:{name}", functools.partial(self._shortcut, name)))
        for name in self.serving:
            stages.append((f"live:{name}", functools.partial(self._live, name)))
        return stages

    def _measure_all(self) -> dict[str, Any]:
        from thrifty.budgeter.world.evaluate import serving

        done = self.job.done()
        stages = self._measured()
        needed = {stage.split(":")[1] for stage, _ in stages if stage not in done}
        pending = {n: (self.out / "solvers" / n, self.spec.solvers[n]) for n in self.names if n in needed}
        records = {}
        with serving(pending, self.out) as servers:
            for stage, run in stages:
                records[stage] = self.job.stage(stage, functools.partial(run, servers))
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
                "tables": {
                    split: f"tables/{name}/{split}.jsonl"
                    for split in ("test", "train")
                    if f"table:{name}:{split}" in records
                },
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
            under=("data", "solvers", "tables", "checks", "eval", "report"),
            settings=self.settings,
            training_plan=self.plan.to_json(),
            environment=self.environment.to_json() | {"serving": list(self.serving)},
            checks={stage: record for stage, record in records.items() if stage.split(":")[0] in ("shortcut", "live")},
            data={split: {k: v for k, v in records["data"][split].items() if k != "sha256"} for split in SPLITS},
            solvers=solvers,
        )


def build_world(options: BuildOptions, fresh: bool = False) -> dict[str, Any]:
    build = WorldBuild(options)
    if fresh:
        build.job.fresh()
    return build.run()
