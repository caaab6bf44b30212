"""``thrifty train router``: evaluation logs in, a router artifact out (federated, central or local).

Data: the LLMRouter folder (``train.json``; see :func:`~thrifty.router.outcomes.import_llmrouter`), or
evaluation logs (JSONL: any of our writers, e.g. the reasoning world's ``router_eval.jsonl``).
Organisations: ``--clients N`` simulates N of them with the paper's Dirichlet partition; without it,
records that name a ``client`` are grouped by that name; ``--clients-dir`` takes folders that already
hold one organisation's logs each. A log without organisations is one party's: it trains centrally.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.router.artifact import RouterArtifact
from thrifty.router.embedding import Embedder, cached_encode, load_embedder
from thrifty.router.ensemble import Sums, build_ensemble, choose_shrink, shrink_errors, verdict
from thrifty.router.eval_log import read_eval_log, write_eval_log
from thrifty.router.federated.local import HELD_OUT, TRAIN_LOG, VALIDATION_LOG
from thrifty.router.kmeans import CellStats, KMeansRouterModel, assign, kmeans
from thrifty.router.outcomes import OutcomeTable, concat, import_llmrouter
from thrifty.router.partition import ClientData, PartitionPlan, partition

TEST_LOG = "test.jsonl"


def load_outcomes_report(paths: list[Path]) -> tuple[OutcomeTable, str, dict[str, Any]]:
    """The outcome table of all ``paths``, a digest of their bytes (for the manifest), and what was merged:
    records that repeat a (query, model) cell are averaged into one cell."""
    records = []
    digest = hashlib.sha256()
    for path in paths:
        if path.is_dir() and (path / "train.json").is_file():
            records.extend(import_llmrouter(path))
            files = [path / "train.json", path / "llm_candidates.json"]
        elif path.is_file():
            records.extend(read_eval_log(path))
            files = [path]
        else:
            raise FileNotFoundError(f"{path} is neither an evaluation log (JSONL) nor the LLMRouter folder")
        for file in files:
            digest.update(file.read_bytes())
    if not records:
        raise ValueError("the data hold no records")
    table = OutcomeTable.from_records(records)
    cells = int(table.observed.sum())
    labels: dict[str, set[str]] = {}
    for record in records:
        labels.setdefault(record.query, set()).add(record.task or "")
    report = {
        "records": len(records),
        "queries": len(table),
        "cells": cells,
        "repeated_cells_averaged": len(records) - cells,
        "queries_with_conflicting_tasks": sum(1 for tasks in labels.values() if len(tasks) > 1),  # first one kept
    }
    return table, digest.hexdigest(), report


def load_outcomes(paths: list[Path]) -> tuple[OutcomeTable, str]:
    """The outcome table of all ``paths`` and a digest of their bytes (for the manifest)."""
    table, digest, _ = load_outcomes_report(paths)
    return table, digest


def _held_out(query: str, fraction: float) -> bool:
    return hashlib.sha256(query.encode()).digest()[0] < fraction * 256


def held_out_by_hash(name: str, table: OutcomeTable, fraction: float = HELD_OUT) -> ClientData:
    """One organisation's queries with ``fraction`` of them (by a hash of the text, so every run agrees)
    held out as validation."""
    held = np.array([_held_out(q, fraction) for q in table.queries], dtype=bool)
    empty = table.subset(np.zeros(0, dtype=np.int64))
    return ClientData(name, table.subset(np.flatnonzero(~held)), table.subset(np.flatnonzero(held)), empty, np.ones(0))


def by_client_label(table: OutcomeTable, validation_fraction: float = HELD_OUT) -> list[ClientData]:
    """Organisations named by the records' ``client`` field; each holds out validation queries by hash.
    Records without a client are left out."""
    names = sorted(set(table.clients) - {""})
    if not names:
        raise ValueError("no record names a client: pass --clients N to simulate organisations")
    clients = []
    for name in names:
        rows = np.flatnonzero(np.array(table.clients) == name)
        clients.append(held_out_by_hash(name, table.subset(rows), validation_fraction))
    return clients


def write_clients(clients: list[ClientData], folder: Path) -> None:
    """One folder per organisation, ``client-<i>``, as a supernode's ``data-dir`` would hold it."""
    for i, client in enumerate(clients):
        out = folder / f"client-{i}"
        write_eval_log(out / TRAIN_LOG, client.train.to_records())
        write_eval_log(out / VALIDATION_LOG, client.validation.to_records())
        if len(client.test):
            write_eval_log(out / TEST_LOG, client.test.to_records())
        (out / "client.json").write_text(json.dumps({"name": client.name}))


# --- centralised training (one party holds every client's data) ------------------------------------


@dataclass(frozen=True, slots=True)
class Pooled:
    x: np.ndarray
    train: OutcomeTable
    x_validation: np.ndarray
    validation: OutcomeTable


def pooled(clients: list[ClientData], embedder: Embedder, cache: Path | None = None) -> Pooled:
    train = concat([c.train for c in clients])
    validation = concat([c.validation for c in clients])
    return Pooled(
        cached_encode(embedder, train.queries, cache),
        train,
        cached_encode(embedder, validation.queries, cache),
        validation,
    )


def fit_kmeans_candidates(
    data: Pooled, candidates: list[int], seed: int, prior_weight: float, restarts: int = 1
) -> tuple[dict[tuple[int, int], KMeansRouterModel], dict[tuple[int, int], float]]:
    """K-means on all training queries from ``restarts`` seeds per K: {(K, restart): model} and each
    one's squared error on validation cells."""
    fitted, loss = {}, {}
    observed = data.validation.observed
    for k in candidates:
        for r in range(restarts):
            centres, _ = kmeans(data.x, k, seed * 1000 + r)
            stats = CellStats.collect(data.x, data.train, centres)
            model = KMeansRouterModel.from_stats(centres, stats, prior_weight)
            predicted = model.accuracy[assign(data.x_validation, centres)]
            error = np.where(observed, (predicted - np.nan_to_num(data.validation.scores)) ** 2, 0.0)
            fitted[k, r], loss[k, r] = model, float(error.sum() / max(observed.sum(), 1))
    return fitted, loss


def fit_kmeans_selected(
    data: Pooled, candidates: list[int], seed: int, prior_weight: float, restarts: int = 1
) -> tuple[KMeansRouterModel, dict[str, Any]]:
    """K-means on all training queries from ``restarts`` seeds per K; K and seed chosen by squared error
    on validation cells (as the federated server chooses)."""
    fitted, loss = fit_kmeans_candidates(data, candidates, seed, prior_weight, restarts)
    best = min(loss, key=lambda key: (loss[key], key))
    by_clusters = {k: min(v for (c, _), v in loss.items() if c == k) for k in candidates}
    metrics = {
        "selected_clusters": best[0],
        "selected_restart": best[1],
        "validation_mse": loss[best],
        "validation_mse_by_clusters": by_clusters,
    }
    return fitted[best], metrics


def _mlp_plan(settings: dict[str, Any]) -> Any:
    from thrifty.router.mlp import MlpPlan

    return MlpPlan(
        settings["width"],
        settings["dropout"],
        settings["learning_rate"],
        settings["weight_decay"],
        settings["batch_size"],
        settings["cost_weight"],
    )


def central_ensemble(
    data: Pooled, settings: dict[str, Any], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """The ensemble router on pooled data: (arrays, settings, metrics)."""
    from thrifty.router.artifact import EnsemblePredictor
    from thrifty.router.mlp import CostScale, state_arrays, train_central

    plan = _mlp_plan(settings)
    epochs = int(settings["rounds"]) * int(settings["local_epochs"])
    scale = CostScale.fit(data.train.costs)
    mlps, selected = [], []
    for member in range(int(settings["mlp_members"])):
        net, _, history = train_central(
            data.x, data.train, data.x_validation, data.validation, plan, epochs, seed + 1000 * member, scale
        )
        mlps.append(state_arrays(net))
        selected.append(history["selected_epoch"])
    clusters = [int(k) for k in str(settings["clusters"]).split(",")]
    prior, task_shrinkage = float(settings["prior_weight"]), float(settings["task_shrinkage"])
    fitted, _ = fit_kmeans_candidates(data, clusters, seed, prior, int(settings.get("restarts", 1)))
    centres = [m.centres for m in fitted.values()]
    sums = Sums.collect(data.x, data.train, centres)
    arrays, lookup = build_ensemble(sums, mlps, centres, prior, task_shrinkage)
    extra = {"cost_mean": scale.mean, "cost_std": scale.std, "width": plan.width, "dropout": plan.dropout}
    full = EnsemblePredictor(arrays, extra | {"shrink": 1.0})
    ensemble = full.components_mean(data.x_validation)
    errors = shrink_errors(ensemble, sums.constant.means(), sums.constant.cost_line(), data.validation, lookup)
    shrink, report = choose_shrink(errors)
    refit = bool(settings.get("refit", True)) and len(data.validation) > 0
    if refit:  # the shrink is chosen: the validation cells join the sums the served router is built from
        sums = sums + Sums.collect(data.x_validation, data.validation, centres)
        arrays, _ = build_ensemble(sums, mlps, centres, prior, task_shrinkage)
    metrics = report | {
        "mlp_selected_epochs": selected,
        "kmeans_members": len(fitted),
        "task_labels": list(sums.tasks.names) if lookup is not None else [],
        "refit_with_validation": refit,
        "verdict": verdict(report),
    }
    return arrays, extra | {"shrink": shrink, "cost_model": report["cost_model"]}, metrics


def central_artifact(
    family: str, data: Pooled, embedder: Embedder, settings: dict[str, Any], seed: int
) -> RouterArtifact:
    """Train on pooled data; ``settings`` holds the FederatedPlan's fields that apply."""
    if family == "kmeans":
        model, metrics = fit_kmeans_selected(
            data,
            [int(k) for k in str(settings["clusters"]).split(",")],
            seed,
            float(settings["prior_weight"]),
            int(settings.get("restarts", 1)),
        )
        arrays = model.arrays()
        extra = {"clusters": metrics["selected_clusters"], "prior_weight": settings["prior_weight"]}
    elif family == "ensemble":
        arrays, extra, metrics = central_ensemble(data, settings, seed)
    else:
        from thrifty.router.mlp import state_arrays, train_central

        plan = _mlp_plan(settings)
        epochs = int(settings["rounds"]) * int(settings["local_epochs"])
        net, scale, metrics = train_central(data.x, data.train, data.x_validation, data.validation, plan, epochs, seed)
        arrays = state_arrays(net)
        extra = {"cost_mean": scale.mean, "cost_std": scale.std, "width": plan.width, "dropout": plan.dropout}
    return RouterArtifact(
        family="kmeans" if family == "kmeans" else "ensemble" if family == "ensemble" else "mlp",
        models=data.train.models,
        embedder=embedder.identity,
        arrays={k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()},
        settings=extra,
        metrics=metrics,
    )


MODES = ("federated", "central", "local")


@dataclass(frozen=True)
class TrainRequest:
    """What ``thrifty train router`` asks for.

    ``mode``: federated (Flower, organisations keep their logs), central (one party pools every
    organisation's cells) or local (one organisation, ``client``, alone); None picks federated when the
    data have organisations (``clients``, ``clients_dir`` or ``client`` fields in the logs) and central
    otherwise.
    """

    data: list[Path]
    out: Path
    family: str = "ensemble"
    mode: str | None = None
    clients: int | None = None  # simulate this many organisations (Dirichlet partition)
    clients_dir: Path | None = None  # organisations' folders, already split
    client: str | None = None  # local mode: the organisation whose router this is
    embedder: str = "static"
    embedder_dir: Path | None = None
    seed: int = 0
    partition: PartitionPlan = PartitionPlan()
    settings: dict[str, Any] | None = None  # FederatedPlan fields (rounds, local_epochs, ...)
    embedding_cache: Path | None = None  # None: the machine's shared cache
    copy_embedder: bool = False  # a static embedder's files inside the artifact instead of a reference
    held_out_log: Path | None = None  # where a simulated partition's test queries are written
    keep_work: bool = False  # keep <out>.work (the organisations' folders written for the run)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not '{self.mode}'")
        if self.family not in ("ensemble", "mlp", "kmeans"):
            raise ValueError(f"family must be ensemble, mlp or kmeans, not '{self.family}'")
        if self.mode == "local" and not self.client:
            raise ValueError("local training trains one organisation's router: name it with --client")
        if self.client and self.mode not in (None, "local"):
            raise ValueError("--client names the organisation of a local router; it goes with --local only")


@dataclass(frozen=True)
class TrainReport:
    """What the run did besides writing the artifact: the data it read, the split it made, its mode."""

    artifact: Path
    mode: str
    organisations: int
    data: dict[str, Any]
    held_out_queries: int = 0
    held_out_log: Path | None = None


def clients_from_folders(folder: Path) -> list[ClientData]:
    """Organisations' folders (``client-<i>`` with train/validation logs) as one party would pool them."""
    from thrifty.router.federated.local import read_logs

    logs = [(path.name, *read_logs(path)[:2]) for path in sorted(folder.glob("client-*"))]
    if not logs:
        raise ValueError(f"{folder} holds no client-<i> folders")
    models = sorted({r.model for _, train, _ in logs for r in train})
    return [
        ClientData(
            name,
            OutcomeTable.from_records(train, models),
            OutcomeTable.from_records(validation, models),
            OutcomeTable.from_records([], models),
            np.ones(0),
        )
        for name, train, validation in logs
    ]


def _organisations(request: TrainRequest) -> tuple[list[ClientData], dict[str, Any], str]:
    """(organisations, a report on the data, the data's digest); one pseudo-organisation for a log
    without organisations."""
    if request.clients_dir is not None:
        return clients_from_folders(request.clients_dir), {"clients_dir": str(request.clients_dir)}, ""
    table, digest, report = load_outcomes_report(request.data)
    if request.clients:
        split = replace(request.partition, clients=request.clients)
        return partition(table, split, request.seed), report, digest
    if set(table.clients) - {""} and request.mode != "central":
        unlabelled = sum(1 for c in table.clients if not c)
        if unlabelled:
            report |= {"queries_without_client_left_out": unlabelled}
        return by_client_label(table, request.partition.validation_fraction), report, digest
    return [held_out_by_hash("all", table, request.partition.validation_fraction)], report, digest


def train_router(request: TrainRequest) -> TrainReport:
    """Read (or simulate) the organisations' data, train in the request's mode, and write the artifact to
    ``request.out``; ``<out>.work`` is removed afterwards unless ``keep_work``."""
    from thrifty.router.federated.plan import FederatedPlan

    if request.out.exists():
        raise FileExistsError(f"{request.out} exists; choose a new folder (artifacts are never overwritten)")
    clients, report, digest = _organisations(request)
    named = request.clients or request.clients_dir is not None or clients[0].name != "all"
    mode = request.mode or ("federated" if named else "central")
    if mode == "federated" and len(clients) < 2:
        raise ValueError(
            "federated training needs at least two organisations: pass --clients N to simulate them, give the "
            "records a 'client' field, or train --central"
        )
    if mode == "local":
        mine = [c for c in clients if c.name == request.client]
        if not mine:
            names = ", ".join(c.name for c in clients)
            raise ValueError(f"no organisation is called '{request.client}'; the data have: {names}")
        clients = mine
    plan = FederatedPlan(
        family=request.family,
        seed=request.seed,
        embedder=request.embedder,
        embedder_dir=str(request.embedder_dir or ""),
        embedding_cache=str(request.embedding_cache or ""),
        out=str(request.out),
        data_sha256=digest,
        copy_embedder=request.copy_embedder,
        **(request.settings or {}),
    )
    held_out = concat([c.test for c in clients]) if any(len(c.test) for c in clients) else None
    work = request.out.with_name(request.out.name + ".work")
    try:
        if mode == "federated":
            from thrifty.router.federated.simulation import simulate

            clients_dir = request.clients_dir
            if clients_dir is None:
                clients_dir = work / "clients"
                shutil.rmtree(clients_dir, ignore_errors=True)
                write_clients(clients, clients_dir)
            path = simulate(replace(plan, clients_dir=str(clients_dir), min_clients=len(clients)), len(clients))
        else:
            path = _train_pooled(request, plan, clients, mode, report)
    finally:
        if not request.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    written = None
    if held_out is not None and request.held_out_log is not None:
        write_eval_log(request.held_out_log, held_out.to_records())
        written = request.held_out_log
    return TrainReport(path, mode, len(clients), report, len(held_out) if held_out is not None else 0, written)


def _train_pooled(
    request: TrainRequest, plan: Any, clients: list[ClientData], mode: str, report: dict[str, Any]
) -> Path:
    import torch

    torch.set_num_threads(1)  # as each federated client does: on a busy machine more threads only contend
    embedder = load_embedder(request.embedder, request.embedder_dir)
    data = pooled(clients, embedder, request.embedding_cache)
    if len(data.train) == 0:
        raise ValueError("the training data hold no observed cells")
    hidden = ("out", "clients-dir", "data-sha256", "embedding-cache")
    run_config = {k: v for k, v in plan.to_run_config().items() if k not in hidden}
    artifact = central_artifact(request.family, data, embedder, plan.settings(), request.seed)
    artifact = replace(
        artifact,
        training={"federated": False, "mode": mode} | run_config,
        inputs={
            "clients": [c.name for c in clients] if mode == "local" else len(clients),
            "data_sha256": plan.data_sha256,
        }
        | report,
    )
    embedder_folder = request.embedder_dir if request.embedder == "static" else None
    return artifact.save(request.out, embedder_folder, copy_embedder=request.copy_embedder)
