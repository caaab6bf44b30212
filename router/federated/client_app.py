"""The ClientApp: one organisation's side of router training, on Flower's Message API.

Where a client's data lives: ``data-dir`` in the node's config (``flower-supernode --node-config
'data-dir="/srv/logs"'``), or, in simulation, ``client-<partition-id>`` under the ``clients-dir`` the
server names. ``embedder-dir`` in the node's config points at this organisation's copy of a static
embedder; its identity must match the one the server names, or the client refuses to train.
``embedding-cache`` (node config, else the server's run config, else ``$THRIFTY_EMBEDDING_CACHE`` or
``~/.cache/thrifty/embeddings``) is where its query vectors are kept between runs.

Messages it answers:
- ``query.describe``: models evaluated (with cell counts), log-cost moments, a digest of the logs.
- ``train`` / ``evaluate``: the MLP router's local epochs / validation loss (FedAvg).
- ``query.centroids``, ``query.cells``, ``query.validate``: the K-means router's passes.
- ``query.tasks``, ``query.ensemble``, ``query.refit``: the ensemble's task sums, its validation error
  per shrink, and (once the shrink is chosen) the model, cell and task sums over the validation cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from thrifty.router.embedding import Embedder
from thrifty.router.federated import local
from thrifty.router.federated.records import arrays_record, model_arrays, numpy_arrays, sum_arrays, task_records

app = ClientApp()


def _config(message: Message) -> ConfigRecord:
    record = message.content.config_records.get("config")
    return record if record is not None else ConfigRecord()


def data_dir(context: Context, config: ConfigRecord) -> Path:
    if "data-dir" in context.node_config:
        return Path(str(context.node_config["data-dir"]))
    if "partition-id" in context.node_config and "clients-dir" in config:
        return Path(str(config["clients-dir"])) / f"client-{int(context.node_config['partition-id'])}"
    raise ValueError("this node has no 'data-dir' in its node config (flower-supernode --node-config)")


def _embedder(context: Context, config: ConfigRecord) -> Embedder:
    folder = str(context.node_config.get("embedder-dir", config.get("embedder-dir", "")))
    embedder = local.embedder_for(str(config["embedder"]), folder)
    expected = {"kind": config["embedder"], "dim": int(config["embedder-dim"]), "sha256": config["embedder-sha256"]}
    embedder.check(expected)
    return embedder


def _data(context: Context, config: ConfigRecord) -> local.LocalData:
    models = tuple(str(m) for m in config["models"])  # type: ignore[union-attr]
    cache = str(context.node_config.get("embedding-cache", config.get("embedding-cache", "")))
    return local.load_local(
        data_dir(context, config), models, _embedder(context, config), Path(cache) if cache else None
    )


def _reply(message: Message, **records: ArrayRecord | MetricRecord | ConfigRecord) -> Message:
    return Message(RecordDict(dict(records)), reply_to=message)


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    info = local.describe(data_dir(context, _config(message)))
    return _reply(
        message,
        info=ConfigRecord({"models": info["models"], "digest": info["digest"]}),
        metrics=MetricRecord(
            {
                "cells": info["cells"],
                **{part: info[part] for part in local.MODEL_SUMS},
                "cost-count": info["cost-count"],
                "cost-sum": info["cost-sum"],
                "cost-sum-sq": info["cost-sum-sq"],
            }
        ),
    )


def _mlp_round(config: ConfigRecord, data: local.LocalData) -> local.MlpRound:
    # Every client draws its own batches, and the same ones in every run: the digest of its logs (not its
    # node id, which changes from run to run) keeps two clients from sharing a stream.
    own = int(data.digest[:8], 16) % 7901
    seed = int(config["seed"]) * 1_000_003 + int(config.get("server-round", 0)) * 7919 + own
    return local.MlpRound(
        width=int(config["width"]),
        dropout=float(config["dropout"]),
        learning_rate=float(config["learning-rate"]),
        weight_decay=float(config["weight-decay"]),
        batch_size=int(config["batch-size"]),
        cost_weight=float(config["cost-weight"]),
        cost_mean=float(config["cost-mean"]),
        cost_std=float(config["cost-std"]),
        epochs=int(config["local-epochs"]),
        seed=seed,
    )


@app.train()
def train(message: Message, context: Context) -> Message:
    config = _config(message)
    data = _data(context, config)
    state = numpy_arrays(message.content.array_records["arrays"])
    new_state, loss, cells = local.mlp_train(data, _mlp_round(config, data), state)
    return _reply(
        message,
        arrays=arrays_record(new_state),
        metrics=MetricRecord({"train-loss": loss, "num-examples": cells}),
    )


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    config = _config(message)
    data = _data(context, config)
    state = numpy_arrays(message.content.array_records["arrays"])
    loss, cells = local.mlp_validation(data, _mlp_round(config, data), state)
    return _reply(message, metrics=MetricRecord({"validation-loss": loss, "num-examples": cells}))


@app.query("centroids")
def centroids(message: Message, context: Context) -> Message:
    config = _config(message)
    data = _data(context, config)
    centres, sizes = local.local_centroids(data, int(config["local-k"]), int(config["seed"]))
    return _reply(message, centroids=arrays_record({"centres": centres, "sizes": sizes}))


@app.query("cells")
def cells(message: Message, context: Context) -> Message:
    config = _config(message)
    data = _data(context, config)
    out: dict[str, np.ndarray] = {}
    for name, array in message.content.array_records["centres"].items():
        out |= sum_arrays(name, local.cell_stats(data, array.numpy()))
    return _reply(message, stats=arrays_record(out))


@app.query("validate")
def validate(message: Message, context: Context) -> Message:
    config = _config(message)
    data = _data(context, config)
    record = message.content.array_records["models"]
    errors: dict[str, float] = {}
    for name in sorted({key.split("/")[0] for key in record}):
        error, count = local.kmeans_validation(
            data, record[f"{name}/centres"].numpy(), record[f"{name}/accuracy"].numpy()
        )
        errors[f"{name}/error"] = error
        errors[f"{name}/count"] = count
    return _reply(message, metrics=MetricRecord(errors))


@app.query("tasks")
def tasks(message: Message, context: Context) -> Message:
    info, stats = task_records(local.task_stats(_data(context, _config(message))))
    return _reply(message, info=info, stats=stats)


@app.query("ensemble")
def ensemble(message: Message, context: Context) -> Message:
    config = _config(message)
    data = _data(context, config)
    settings = {"cost_mean": float(config["cost-mean"]), "cost_std": float(config["cost-std"])}
    names = [str(n) for n in config.get("task-names", [])]  # type: ignore[union-attr]
    lookup = numpy_arrays(message.content.array_records["lookup"])["accuracy"]
    errors = local.ensemble_validation(
        data, numpy_arrays(message.content.array_records["arrays"]), settings, names, lookup
    )
    return _reply(
        message,
        metrics=MetricRecord(
            {
                "by-shrink": errors.by_shrink.tolist(),
                "gain-sq": errors.gain_sq.tolist(),
                "cost-by-shrink": errors.cost_by_shrink.tolist(),
                "cost-gain-sq": errors.cost_gain_sq.tolist(),
                "cost-line": errors.cost_line,
                "per-task": errors.per_task,
                "count": errors.count,
            }
        ),
    )


@app.query("refit")
def refit(message: Message, context: Context) -> Message:
    data = _data(context, _config(message))
    record = message.content.array_records["centres"]
    names = sorted(record)
    sums = local.validation_sums(data, [record[name].numpy() for name in names])
    cells = model_arrays("constant", sums.constant)
    for name, stats in zip(names, sums.cells, strict=True):
        cells |= sum_arrays(name, stats)
    info, task_arrays = task_records(sums.tasks)
    return _reply(message, info=info, tasks=task_arrays, stats=arrays_record(cells))
