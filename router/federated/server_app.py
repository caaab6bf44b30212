"""The ServerApp: coordinates router training and writes the artifact. It never sees a query.

1. ``query.describe`` to every client: the models they evaluated and moments of their log-costs, so the
   MLP's cost heads share one normalisation and the artifact lists every model.
2. MLP: FedAvg (weighted by observed cells) for ``rounds`` rounds of ``local-epochs``; after each round the
   clients report the global model's loss on their validation cells, and the round with the lowest
   weighted loss is the one kept.
   K-means: pass 1 collects clients' centroids and sizes; the server clusters them (weighted) into K
   global centres for each candidate K; pass 2 collects per-(cluster, model) sums and counts; the K whose
   model has the lowest squared error on the clients' validation cells is kept.
   Ensemble (:mod:`thrifty.router.ensemble`): several MLP federations, every K-means candidate, the
   clients' per-task sums for the task LDA; then the clients score the ensemble's shrinks toward the
   model averages on their validation cells, and the best is kept.
3. The artifact goes to ``out`` with the training history in its manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from thrifty.router.artifact import RouterArtifact
from thrifty.router.embedding import Embedder, load_embedder
from thrifty.router.ensemble import (
    ModelStats,
    ShrinkErrors,
    Sums,
    TaskStats,
    build_ensemble,
    choose_shrink,
    lookup_arrays,
    verdict,
)
from thrifty.router.federated.local import MODEL_SUMS
from thrifty.router.federated.plan import FederatedPlan
from thrifty.router.federated.records import arrays_record, cell_stats, model_stats, task_stats
from thrifty.router.kmeans import CellStats, KMeansRouterModel, kmeans

logger = logging.getLogger(__name__)


class FederationError(RuntimeError):
    """Clients did not answer, or answered with an error."""


def _wait_for_nodes(grid: Grid, plan: FederatedPlan) -> list[int]:
    deadline = time.monotonic() + plan.timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= plan.min_clients:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(f"{len(nodes)} clients connected; the plan needs {plan.min_clients}")
        time.sleep(1.0)


def in_order(replies: Iterable[Message], nodes: list[int]) -> list[Message]:
    """Replies in the order of ``nodes``, not of arrival: sums and k-means over them then come out the same
    in every run."""
    rank = {node: i for i, node in enumerate(nodes)}
    return sorted(replies, key=lambda reply: rank.get(reply.metadata.src_node_id, len(rank)))


def ask(grid: Grid, nodes: list[int], action: str, plan: FederatedPlan, **records: Any) -> list[Message]:
    """Send ``query.<action>`` to every node; every node must answer without error. Replies come back in
    the order of ``nodes``."""
    messages = [Message(RecordDict(dict(records)), dst_node_id=node, message_type=f"query.{action}") for node in nodes]
    replies = in_order(grid.send_and_receive(messages, timeout=plan.timeout), nodes)
    failed = [reply.error.reason for reply in replies if reply.has_error()]
    if failed or len(replies) < len(nodes):
        reasons = "; ".join(failed) or "no reply"
        raise FederationError(
            f"{action}: {len(nodes) - len(replies) + len(failed)} of {len(nodes)} clients failed: {reasons}"
        )
    return replies


def _common_config(plan: FederatedPlan, models: list[str], embedder: Embedder) -> dict[str, Any]:
    identity = embedder.identity
    return {
        "models": models,
        "embedder": identity["kind"],
        "embedder-dim": identity["dim"],
        "embedder-sha256": identity["sha256"],
        "embedder-dir": plan.embedder_dir,
        "clients-dir": plan.clients_dir,
        "embedding-cache": plan.embedding_cache,
        "seed": plan.seed,
    }


class SnapshotFedAvg(FedAvg):
    """FedAvg that keeps every round's global parameters, so the best round on validation can be kept,
    and that sums clients' replies in a fixed order (``nodes``), so that a run can be repeated exactly."""

    def __init__(self, nodes: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nodes = nodes
        self.snapshots: dict[int, ArrayRecord] = {}

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round, in_order(replies, self.nodes))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_order(replies, self.nodes)
        failed = [r.error.reason for r in replies if r.has_error()]
        if failed:
            raise FederationError(f"round {server_round}: clients failed to train: {'; '.join(failed)}")
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.snapshots[server_round] = arrays
        return arrays, metrics


def train_mlp(
    grid: Grid, plan: FederatedPlan, nodes: list[int], models: list[str], embedder: Embedder, moments: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    import torch

    from thrifty.router.mlp import CostScale, RouterNet, state_arrays

    scale = CostScale.from_moments(*moments)
    torch.manual_seed(plan.seed)
    net = RouterNet(embedder.dim, len(models), plan.width, plan.dropout)
    per_round = max(1, round(plan.fraction_train * len(nodes)))
    strategy = SnapshotFedAvg(
        nodes,
        fraction_train=plan.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=min(per_round, len(nodes)),
        min_evaluate_nodes=len(nodes),
        min_available_nodes=len(nodes),
    )
    config = ConfigRecord(
        _common_config(plan, models, embedder)
        | {
            "width": plan.width,
            "dropout": plan.dropout,
            "learning-rate": plan.learning_rate,
            "weight-decay": plan.weight_decay,
            "batch-size": plan.batch_size,
            "cost-weight": plan.cost_weight,
            "cost-mean": scale.mean,
            "cost-std": scale.std,
            "local-epochs": plan.local_epochs,
        }
    )
    result = strategy.start(
        grid,
        ArrayRecord({name: Array(value) for name, value in state_arrays(net).items()}),
        num_rounds=plan.rounds,
        timeout=plan.timeout,
        train_config=config,
        evaluate_config=config,
    )
    validation = {r: float(m["validation-loss"]) for r, m in result.evaluate_metrics_clientapp.items()}
    training = {r: float(m["train-loss"]) for r, m in result.train_metrics_clientapp.items()}
    if not validation:
        raise FederationError("no round was evaluated: no client has validation cells")
    best = min(validation, key=lambda r: validation[r])
    arrays = {name: array.numpy().astype(np.float32) for name, array in strategy.snapshots[best].items()}
    settings = {"cost_mean": scale.mean, "cost_std": scale.std, "width": plan.width, "dropout": plan.dropout}
    metrics = {
        "selected_round": best,
        "validation_loss": validation[best],
        "validation_loss_by_round": [validation[r] for r in sorted(validation)],
        "train_loss_by_round": [training[r] for r in sorted(training)],
    }
    return arrays, settings, metrics


def kmeans_candidates(
    grid: Grid, plan: FederatedPlan, nodes: list[int], models: list[str], embedder: Embedder
) -> tuple[dict[str, KMeansRouterModel], dict[str, tuple[int, int]], dict[str, float], dict[str, CellStats]]:
    """Both K-means passes and the validation pass for every candidate (K, restart): the fitted models,
    their (K, restart), their validation squared error and the cell sums they were fitted from."""
    config = ConfigRecord(_common_config(plan, models, embedder) | {"local-k": plan.local_clusters})
    # Pass 1: clients' own centroids and sizes.
    replies = ask(grid, nodes, "centroids", plan, config=config)
    centroids = np.concatenate([r.content.array_records["centroids"]["centres"].numpy() for r in replies])
    sizes = np.concatenate([r.content.array_records["centroids"]["sizes"].numpy() for r in replies])
    # Every candidate K, clustered from several seeds: k-means lands in different local optima, and the
    # clients' validation cells (pass 3), not the inertia, say which one routes best.
    choices = {f"k{k}s{r}": (k, r) for k in plan.candidate_clusters for r in range(plan.restarts)}
    candidates = {
        name: kmeans(centroids, k, plan.seed * 1000 + r, weights=sizes)[0] for name, (k, r) in choices.items()
    }
    # Pass 2: per-(cluster, model) sums and counts for every candidate's centres.
    centres = ArrayRecord({name: Array(c) for name, c in candidates.items()})
    replies = ask(grid, nodes, "cells", plan, config=config, centres=centres)
    totals: dict[str, CellStats] = {}
    for reply in replies:
        record = reply.content.array_records["stats"]
        for name in candidates:
            stats = cell_stats(record, name)
            totals[name] = totals[name] + stats if name in totals else stats
    fitted = {
        name: KMeansRouterModel.from_stats(candidates[name], totals[name], plan.prior_weight) for name in candidates
    }
    # Pass 3: each candidate's squared error on the clients' validation cells.
    record = ArrayRecord(
        {f"{n}/{part}": Array(getattr(m, part)) for n, m in fitted.items() for part in ("centres", "accuracy")}
    )
    replies = ask(grid, nodes, "validate", plan, config=config, models=record)
    error = {n: sum(float(r.content.metric_records["metrics"][f"{n}/error"]) for r in replies) for n in fitted}
    count = {n: sum(float(r.content.metric_records["metrics"][f"{n}/count"]) for r in replies) for n in fitted}
    if min(count.values()) == 0:
        raise FederationError("no client has validation cells to choose K with")
    return fitted, choices, {n: error[n] / count[n] for n in fitted}, totals


def train_kmeans(
    grid: Grid, plan: FederatedPlan, nodes: list[int], models: list[str], embedder: Embedder
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    fitted, choices, loss, _ = kmeans_candidates(grid, plan, nodes, models, embedder)
    best = min(fitted, key=lambda n: (loss[n], choices[n]))
    k, restart = choices[best]
    settings = {"clusters": k, "prior_weight": plan.prior_weight}
    metrics = {
        "selected_clusters": k,
        "selected_restart": restart,
        "validation_mse": loss[best],
        "validation_mse_by_clusters": {
            str(c): min(loss[n] for n in loss if choices[n][0] == c) for c in plan.candidate_clusters
        },
    }
    return fitted[best].arrays(), settings, metrics


def federated_tasks(
    grid: Grid, plan: FederatedPlan, nodes: list[int], models: list[str], embedder: Embedder
) -> TaskStats:
    """The clients' per-task sums, added up (no task at all when the logs carry no labels)."""
    config = ConfigRecord(_common_config(plan, models, embedder))
    total = TaskStats.empty((), embedder.dim, len(models))
    for reply in ask(grid, nodes, "tasks", plan, config=config):
        total = total + task_stats(reply.content.config_records["info"], reply.content.array_records["stats"])
    return total


def validation_sums(
    grid: Grid,
    plan: FederatedPlan,
    nodes: list[int],
    models: list[str],
    embedder: Embedder,
    centres: dict[str, np.ndarray],
) -> Sums:
    """The clients' model, cell (for every K-means member's ``centres``, in the order of their names) and
    task sums over their validation cells, added up."""
    config = ConfigRecord(_common_config(plan, models, embedder))
    names = sorted(centres)  # the order of the sums' cells, as clients answer
    total: Sums | None = None
    for reply in ask(grid, nodes, "refit", plan, config=config, centres=arrays_record({n: centres[n] for n in names})):
        stats = reply.content.array_records["stats"]
        tasks = task_stats(reply.content.config_records["info"], reply.content.array_records["tasks"])
        part = Sums(model_stats(stats, "constant"), tuple(cell_stats(stats, n) for n in names), tasks)
        total = part if total is None else total + part
    if total is None:
        raise FederationError("no client answered the refit")
    return total


def train_ensemble(
    grid: Grid,
    plan: FederatedPlan,
    nodes: list[int],
    models: list[str],
    embedder: Embedder,
    moments: np.ndarray,
    constant: ModelStats,
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Every component federated as its family is, then the shrink chosen on the clients' validation cells."""
    mlps, rounds = [], []
    for member in range(plan.mlp_members):
        arrays, settings, metrics = train_mlp(
            grid, replace(plan, seed=plan.seed + 1000 * member), nodes, models, embedder, moments
        )
        mlps.append(arrays)
        rounds.append(metrics["selected_round"])
    fitted, _, _, cells = kmeans_candidates(grid, plan, nodes, models, embedder)
    names = sorted(fitted)
    centres = [fitted[n].centres for n in names]
    sums = Sums(constant, tuple(cells[n] for n in names), federated_tasks(grid, plan, nodes, models, embedder))
    arrays, lookup = build_ensemble(sums, mlps, centres, plan.prior_weight, plan.task_shrinkage)
    task_names, table = lookup_arrays(lookup or {})
    config = ConfigRecord(
        _common_config(plan, models, embedder)
        | {"cost-mean": settings["cost_mean"], "cost-std": settings["cost_std"], "task-names": task_names}
    )
    replies = ask(
        grid,
        nodes,
        "ensemble",
        plan,
        config=config,
        arrays=arrays_record(arrays),
        lookup=arrays_record({"accuracy": np.asarray(table, dtype=np.float64)}),
    )
    errors = ShrinkErrors.zero()
    for reply in replies:
        numbers = reply.content.metric_records["metrics"]
        errors = errors + ShrinkErrors(
            np.array(numbers["by-shrink"], dtype=np.float64),
            np.array(numbers["gain-sq"], dtype=np.float64),
            np.array(numbers["cost-by-shrink"], dtype=np.float64),
            np.array(numbers["cost-gain-sq"], dtype=np.float64),
            float(numbers["cost-line"]),  # type: ignore[arg-type]
            float(numbers["per-task"]),  # type: ignore[arg-type]
            float(numbers["count"]),  # type: ignore[arg-type]
        )
    if not lookup:
        errors = replace(errors, per_task=float("nan"))
    shrink, report = choose_shrink(errors)
    refit = plan.refit and errors.count > 0
    if refit:  # the shrink is chosen: the validation cells join the sums the served router is built from
        sums = sums + validation_sums(grid, plan, nodes, models, embedder, dict(zip(names, centres, strict=True)))
        arrays, _ = build_ensemble(sums, mlps, centres, plan.prior_weight, plan.task_shrinkage)
    metrics = report | {
        "mlp_selected_rounds": rounds,
        "kmeans_members": len(fitted),
        "task_labels": list(sums.tasks.names) if lookup else [],
        "refit_with_validation": refit,
        "verdict": verdict(report),
    }
    return arrays, settings | {"shrink": shrink, "cost_model": report["cost_model"]}, metrics


def run_federation(grid: Grid, plan: FederatedPlan) -> Path:
    if not plan.out:
        raise ValueError("the run config needs 'out', the folder for the artifact")
    out = Path(plan.out)
    if out.exists():
        raise FileExistsError(f"{out} exists; artifacts are never overwritten")
    embedder = load_embedder(plan.embedder, Path(plan.embedder_dir) if plan.embedder_dir else None)
    nodes = _wait_for_nodes(grid, plan)
    replies = ask(grid, nodes, "describe", plan, config=ConfigRecord({"clients-dir": plan.clients_dir}))
    cells: dict[str, float] = {}
    model_sums: dict[str, dict[str, float]] = {part: {} for part in MODEL_SUMS}
    moments = np.zeros(3)
    digests = []
    for reply in replies:
        info, numbers = reply.content.config_records["info"], reply.content.metric_records["metrics"]
        for i, model in enumerate(info["models"]):  # type: ignore[arg-type]
            name = str(model)
            cells[name] = cells.get(name, 0) + float(numbers["cells"][i])  # type: ignore[index]
            for part in MODEL_SUMS:
                model_sums[part][name] = model_sums[part].get(name, 0.0) + float(numbers[part][i])  # type: ignore[index]
        moments += [float(numbers["cost-count"]), float(numbers["cost-sum"]), float(numbers["cost-sum-sq"])]
        digests.append(str(info["digest"]))
    # From here on, clients are taken in the order of their logs' digests (node ids change between runs).
    nodes = [node for _, node in sorted(zip(digests, [r.metadata.src_node_id for r in replies], strict=True))]
    models = sorted(cells)
    if not models:
        raise FederationError("the clients' logs hold no observed cells")
    logger.info("federation: %d clients, %d models, %d observed cells", len(nodes), len(models), moments[0])
    if plan.family == "ensemble":
        score, cost, *lengths = (np.array([model_sums[part][m] for m in models]) for part in MODEL_SUMS)
        constant = ModelStats(score, cost, np.array([cells[m] for m in models]), *lengths)
        arrays, settings, metrics = train_ensemble(grid, plan, nodes, models, embedder, moments, constant)
    elif plan.family == "mlp":
        arrays, settings, metrics = train_mlp(grid, plan, nodes, models, embedder, moments)
    else:
        arrays, settings, metrics = train_kmeans(grid, plan, nodes, models, embedder)
    artifact = RouterArtifact(
        family="ensemble" if plan.family == "ensemble" else "mlp" if plan.family == "mlp" else "kmeans",
        models=tuple(models),
        embedder=embedder.identity,
        arrays=arrays,
        settings=settings,
        inputs={
            "clients": len(nodes),
            "cells_by_model": cells,
            "log_digests": sorted(digests),
            "data_sha256": plan.data_sha256,
        },
        training={"federated": True}
        | {
            k: v
            for k, v in plan.to_run_config().items()
            if k not in ("out", "clients-dir", "data-sha256", "embedding-cache")
        },
        metrics=metrics,
    )
    embedder_folder = Path(plan.embedder_dir) if plan.embedder == "static" else None
    return artifact.save(out, embedder_folder, copy_embedder=plan.copy_embedder)


def make_server_app(**overrides: Any) -> ServerApp:
    """A ServerApp whose settings are the run config, with ``overrides`` on top (simulation passes its plan)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, FederatedPlan.from_run_config(dict(context.run_config), **overrides))

    return server


app = make_server_app()
