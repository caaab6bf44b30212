"""What one organisation computes on its own data. Nothing here sends a query anywhere.

The ClientApp wraps these functions in Flower messages. Each returns only what the federation may see:
model parameters, cluster centroids with sizes, counts and sums per (cluster, model), losses, and the
SHA-256 of the logs (so the artifact can name its inputs without revealing them).

A client's folder holds ``train.jsonl`` and, optionally, ``validation.jsonl`` (evaluation logs, see
:mod:`thrifty.router.eval_log`). Without a validation log, a fixed share of the training queries (chosen
by a hash of the query text, so every run agrees) is held out for model selection.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.router.embedding import Embedder, cached_encode, load_embedder
from thrifty.router.ensemble import (
    MIN_SHARED_TASK_QUERIES,
    ShrinkErrors,
    Sums,
    TaskStats,
    query_lengths,
    shrink_errors,
)
from thrifty.router.eval_log import EvalRecord, read_eval_log
from thrifty.router.kmeans import CellStats, assign, kmeans
from thrifty.router.outcomes import OutcomeTable
from thrifty.server.kit.artifacts import sha256

TRAIN_LOG = "train.jsonl"
VALIDATION_LOG = "validation.jsonl"
HELD_OUT = 0.15  # share of training queries held out when a client has no validation log


@dataclass(frozen=True)
class LocalData:
    """One client's training and validation cells over the federation's models, with embeddings."""

    folder: Path
    train: OutcomeTable
    validation: OutcomeTable
    x_train: np.ndarray
    x_validation: np.ndarray
    digest: str


def _held_out(query: str) -> bool:
    return hashlib.sha256(query.encode()).digest()[0] < HELD_OUT * 256


def read_logs(folder: Path) -> tuple[list[EvalRecord], list[EvalRecord], str]:
    """(training records, validation records, a digest of the log files)."""
    train_path = folder / TRAIN_LOG
    if not train_path.is_file():
        raise FileNotFoundError(f"client data folder {folder} has no {TRAIN_LOG}")
    records = list(read_eval_log(train_path))
    validation_path = folder / VALIDATION_LOG
    digest = hashlib.sha256(sha256(train_path).encode())
    if validation_path.is_file():
        validation = list(read_eval_log(validation_path))
        digest.update(sha256(validation_path).encode())
    else:
        validation = [r for r in records if _held_out(r.query)]
        records = [r for r in records if not _held_out(r.query)]
    return records, validation, digest.hexdigest()


# Per model, the sums ``describe`` reports, in ModelStats's order after the count: Σ score, Σ cost, Σ length,
# Σ length², Σ length · cost.
MODEL_SUMS = ("score-sums", "cost-sums", "length-sums", "length-sq-sums", "length-cost-sums")


def describe(folder: Path) -> dict[str, Any]:
    """Which models this client evaluated (observed cells each), per-model sums (:data:`MODEL_SUMS`) and
    moments of its log-costs."""
    train, _, digest = read_logs(folder)
    models: dict[str, int] = {}
    for record in train:
        models[record.model] = models.get(record.model, 0) + 1
    logs = np.log(np.array([r.cost for r in train]) + 1e-12)
    sums: dict[str, dict[str, float]] = {part: {} for part in MODEL_SUMS}
    lengths = query_lengths([r.query for r in train])
    for record, length in zip(train, lengths.tolist(), strict=True):
        values = (record.score, record.cost, length, length * length, length * record.cost)
        for part, value in zip(MODEL_SUMS, values, strict=True):
            sums[part][record.model] = sums[part].get(record.model, 0.0) + value
    return {
        "models": sorted(models),
        "cells": [models[m] for m in sorted(models)],
        **{part: [sums[part][m] for m in sorted(models)] for part in MODEL_SUMS},
        "cost-count": float(len(logs)),
        "cost-sum": float(logs.sum()),
        "cost-sum-sq": float((logs**2).sum()),
        "digest": digest,
    }


_embedders: dict[tuple[str, str], Embedder] = {}
_loaded: dict[tuple[str, tuple[str, ...], str, str], LocalData] = {}


def embedder_for(kind: str, folder: str) -> Embedder:
    """One embedder per process (a ClientApp process serves many rounds)."""
    key = (kind, folder)
    if key not in _embedders:
        _embedders[key] = load_embedder(kind, Path(folder) if folder else None)
    return _embedders[key]


def load_local(folder: Path, models: tuple[str, ...], embedder: Embedder, cache: Path | None = None) -> LocalData:
    """This client's logs over ``models``, embedded through the shared cache under ``cache`` (default: the
    machine's, :func:`~thrifty.router.embedding.default_cache_root`)."""
    key = (str(folder.resolve()), models, embedder.kind, embedder.identity["sha256"])
    if key not in _loaded:
        train_records, validation_records, digest = read_logs(folder)
        train = OutcomeTable.from_records(train_records, models)
        validation = OutcomeTable.from_records(validation_records, models)
        _loaded[key] = LocalData(
            folder=folder,
            train=train,
            validation=validation,
            x_train=cached_encode(embedder, train.queries, cache),
            x_validation=cached_encode(embedder, validation.queries, cache),
            digest=digest,
        )
    return _loaded[key]


# --- K-means ---------------------------------------------------------------------------------------


def local_centroids(data: LocalData, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: this client's own K-means centroids and cluster sizes."""
    return kmeans(data.x_train, k, seed)


def cell_stats(data: LocalData, centres: np.ndarray) -> CellStats:
    """Pass 2: Σ score, Σ cost and counts per (global cluster, model) over this client's training cells."""
    return CellStats.collect(data.x_train, data.train, centres)


def kmeans_validation(data: LocalData, centres: np.ndarray, accuracy: np.ndarray) -> tuple[float, float]:
    """Squared error of the predicted accuracy on this client's validation cells: (Σ error, count)."""
    if len(data.validation) == 0:
        return 0.0, 0.0
    predicted = accuracy[assign(data.x_validation, centres)]
    observed = data.validation.observed
    error = np.where(observed, (predicted - np.nan_to_num(data.validation.scores)) ** 2, 0.0)
    return float(error.sum()), float(observed.sum())


# --- MLP ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MlpRound:
    """What the server sends with the global parameters for a round of local training."""

    width: int
    dropout: float
    learning_rate: float
    weight_decay: float
    batch_size: int
    cost_weight: float
    cost_mean: float
    cost_std: float
    epochs: int
    seed: int


def _net(data: LocalData, spec: MlpRound, arrays: dict[str, np.ndarray]) -> Any:
    from thrifty.router.mlp import RouterNet, load_arrays

    net = RouterNet(data.x_train.shape[1], len(data.train.models), spec.width, spec.dropout)
    load_arrays(net, arrays)
    return net


def _targets(x: np.ndarray, table: OutcomeTable, spec: MlpRound) -> Any:
    from thrifty.router.mlp import CostScale, Targets

    return Targets.build(x, table, CostScale(spec.cost_mean, spec.cost_std))


def _plan(spec: MlpRound) -> Any:
    from thrifty.router.mlp import MlpPlan

    return MlpPlan(spec.width, spec.dropout, spec.learning_rate, spec.weight_decay, spec.batch_size, spec.cost_weight)


def mlp_train(
    data: LocalData, spec: MlpRound, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], float, int]:
    """Local epochs from the global parameters: (new parameters, last epoch's loss, observed cells used)."""
    import torch

    from thrifty.router.mlp import state_arrays, train_local

    torch.set_num_threads(1)  # one simulated client per core
    torch.manual_seed(spec.seed)  # dropout: the same masks whichever process runs this client
    net = _net(data, spec, arrays)
    targets = _targets(data.x_train, data.train, spec)
    loss = train_local(net, targets, _plan(spec), spec.epochs, spec.seed)
    return state_arrays(net), loss, targets.cells


def mlp_validation(data: LocalData, spec: MlpRound, arrays: dict[str, np.ndarray]) -> tuple[float, int]:
    """The global parameters' masked loss on this client's validation cells: (loss, cells)."""
    from thrifty.router.mlp import evaluate_loss

    targets = _targets(data.x_validation, data.validation, spec)
    if targets.cells == 0:
        return 0.0, 0
    return evaluate_loss(_net(data, spec, arrays), targets, _plan(spec)), targets.cells


# --- ensemble ------------------------------------------------------------------------------------------


def task_stats(data: LocalData) -> TaskStats:
    """Per task label: query counts, Σ embedding, Σ x·xᵀ and per-(task, model) cell sums (no queries); a
    task with too few queries here to hide any one of them is left out."""
    return TaskStats.collect(data.x_train, data.train, MIN_SHARED_TASK_QUERIES)


def validation_sums(data: LocalData, centres: list[np.ndarray]) -> Sums:
    """The refit's part from this client: the sums of :func:`task_stats`, :func:`cell_stats` and the
    per-model sums, over its validation cells (added to the training sums once the shrink is chosen). A
    task leaves its sums here only over enough validation queries to hide each one, as in training."""
    return Sums.collect(data.x_validation, data.validation, centres, MIN_SHARED_TASK_QUERIES)


def ensemble_validation(
    data: LocalData,
    arrays: dict[str, np.ndarray],
    settings: dict[str, Any],
    task_names: list[str],
    task_accuracy: np.ndarray,
) -> ShrinkErrors:
    """The ensemble's squared error on this client's validation cells for every shrink, and the per-task
    baseline's (with the federation's per-task means)."""
    from thrifty.router.artifact import EnsemblePredictor

    predictor = EnsemblePredictor(arrays, settings | {"shrink": 1.0})
    constant = predictor.constant
    if len(data.validation) == 0:
        return ShrinkErrors.zero()
    ensemble = predictor.components_mean(data.x_validation)
    line = (arrays["constant/cost_intercept"].astype(np.float64), arrays["constant/cost_slope"].astype(np.float64))
    lookup = {name: (task_accuracy[i], constant[0]) for i, name in enumerate(task_names)} or None
    return shrink_errors(ensemble, constant, line, data.validation, lookup)
