"""``thrifty train router``: evaluation logs in, a router artifact out (federated or centralised).

Data: the LLMRouter folder (``train.json``; see :func:`~thrifty.router.outcomes.import_llmrouter`), or
evaluation logs (JSONL: any of our writers, e.g. the reasoning world's ``router_eval.jsonl``). Federated
training needs organisations: ``--clients N`` simulates N of them with the paper's Dirichlet partition;
without it, records that name a ``client`` are grouped by that name; ``--clients-dir`` takes folders
that already hold one organisation's logs each.
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
from thrifty.router.eval_log import read_eval_log, write_eval_log
from thrifty.router.federated.local import HELD_OUT, TRAIN_LOG, VALIDATION_LOG
from thrifty.router.kmeans import CellStats, KMeansRouterModel, assign, kmeans
from thrifty.router.outcomes import OutcomeTable, concat, import_llmrouter
from thrifty.router.partition import ClientData, PartitionPlan, partition

TEST_LOG = "test.jsonl"


def load_outcomes(paths: list[Path]) -> tuple[OutcomeTable, str]:
    """The outcome table of all ``paths`` and a digest of their bytes (for the manifest)."""
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
    return OutcomeTable.from_records(records), digest.hexdigest()


def by_client_label(table: OutcomeTable) -> list[ClientData]:
    """Organisations named by the records' ``client`` field; each holds out validation queries by hash."""
    names = sorted(set(table.clients) - {""})
    if len(names) < 2:
        raise ValueError("federated training needs at least two organisations: pass --clients N to simulate them")
    clients = []
    for name in names:
        rows = np.flatnonzero(np.array(table.clients) == name)
        mine = table.subset(rows)
        held = np.array([hashlib.sha256(q.encode()).digest()[0] < HELD_OUT * 256 for q in mine.queries])
        empty = mine.subset(np.zeros(0, dtype=np.int64))
        clients.append(
            ClientData(name, mine.subset(np.flatnonzero(~held)), mine.subset(np.flatnonzero(held)), empty, np.ones(0))
        )
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


def pooled(clients: list[ClientData], embedder: Embedder, cache: Path | None) -> Pooled:
    train = concat([c.train for c in clients])
    validation = concat([c.validation for c in clients])
    return Pooled(
        cached_encode(embedder, train.queries, cache),
        train,
        cached_encode(embedder, validation.queries, cache),
        validation,
    )


def fit_kmeans_selected(
    data: Pooled, candidates: list[int], seed: int, prior_weight: float, restarts: int = 1
) -> tuple[KMeansRouterModel, dict[str, Any]]:
    """K-means on all training queries from ``restarts`` seeds per K; K and seed chosen by squared error
    on validation cells (as the federated server chooses)."""
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
    best = min(loss, key=lambda key: (loss[key], key))
    by_clusters = {k: min(v for (c, _), v in loss.items() if c == k) for k in candidates}
    metrics = {
        "selected_clusters": best[0],
        "selected_restart": best[1],
        "validation_mse": loss[best],
        "validation_mse_by_clusters": by_clusters,
    }
    return fitted[best], metrics


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
        arrays = {"centres": model.centres, "accuracy": model.accuracy, "cost": model.cost, "count": model.count}
        extra = {"clusters": metrics["selected_clusters"], "prior_weight": settings["prior_weight"]}
    else:
        from thrifty.router.mlp import MlpPlan, state_arrays, train_central

        plan = MlpPlan(
            settings["width"],
            settings["dropout"],
            settings["learning_rate"],
            settings["weight_decay"],
            settings["batch_size"],
            settings["cost_weight"],
        )
        epochs = int(settings["rounds"]) * int(settings["local_epochs"])
        net, scale, metrics = train_central(data.x, data.train, data.x_validation, data.validation, plan, epochs, seed)
        arrays = state_arrays(net)
        extra = {"cost_mean": scale.mean, "cost_std": scale.std, "width": plan.width, "dropout": plan.dropout}
    return RouterArtifact(
        family="kmeans" if family == "kmeans" else "mlp",
        models=data.train.models,
        embedder=embedder.identity,
        arrays={k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()},
        settings=extra,
        metrics=metrics,
    )


@dataclass(frozen=True)
class TrainRequest:
    data: list[Path]
    out: Path
    family: str = "mlp"
    federated: bool = False
    clients: int | None = None  # simulate this many organisations (Dirichlet partition)
    clients_dir: Path | None = None  # organisations' folders, already split
    embedder: str = "static"
    embedder_dir: Path | None = None
    seed: int = 0
    partition: PartitionPlan = PartitionPlan()
    settings: dict[str, Any] | None = None  # FederatedPlan fields (rounds, local_epochs, ...)


def clients_from_folders(folder: Path) -> list[ClientData]:
    """Organisations' folders (``client-<i>`` with train/validation logs) as one party would pool them."""
    from thrifty.router.federated.local import read_logs

    logs = [(path.name, *read_logs(path)[:2]) for path in sorted(folder.glob("client-*"))]
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


def train_router(request: TrainRequest) -> Path:
    """Partition (or read) the organisations' data, train, and write the artifact to ``request.out``."""
    from thrifty.router.federated.plan import FederatedPlan

    if request.out.exists():
        raise FileExistsError(f"{request.out} exists; choose a new folder (artifacts are never overwritten)")
    plan = FederatedPlan(
        family=request.family,
        seed=request.seed,
        embedder=request.embedder,
        embedder_dir=str(request.embedder_dir or ""),
        out=str(request.out),
        **(request.settings or {}),
    )
    work = request.out.with_name(request.out.name + ".work")
    if request.clients_dir is not None:
        clients_dir = request.clients_dir
        clients = clients_from_folders(clients_dir)
    else:
        table, digest = load_outcomes(request.data)
        if request.clients:
            clients = partition(table, replace(request.partition, clients=request.clients), request.seed)
        else:
            clients = by_client_label(table)
        clients_dir = work / "clients"
        shutil.rmtree(clients_dir, ignore_errors=True)
        write_clients(clients, clients_dir)
        plan = replace(plan, data_sha256=digest)
    if len(clients) < 1:
        raise ValueError(f"{clients_dir} holds no client-<i> folders")
    if request.federated:
        from thrifty.router.federated.simulation import simulate

        return simulate(replace(plan, clients_dir=str(clients_dir), min_clients=len(clients)), len(clients))
    embedder = load_embedder(request.embedder, request.embedder_dir)
    data = pooled(clients, embedder, work / "embeddings")
    run_config = {k: v for k, v in plan.to_run_config().items() if k not in ("out", "clients-dir", "data-sha256")}
    artifact = central_artifact(request.family, data, embedder, plan.settings(), request.seed)
    artifact = replace(
        artifact,
        training={"federated": False} | run_config,
        inputs={"clients": len(clients), "data_sha256": plan.data_sha256},
    )
    return artifact.save(request.out, request.embedder_dir if request.embedder == "static" else None)
