"""Support a model the router was not trained with, from a small calibration log, without retraining.

MLP: a new head is trained on the calibration cells with the shared trunk and every other head frozen,
so routing among the existing models is unchanged. K-means: the calibration queries are assigned to
the existing centres and the new model gets per-cluster means, shrunk toward its overall mean.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from thrifty.router.artifact import RouterArtifact, artifact_embedder, load_artifact
from thrifty.router.eval_log import EvalRecord
from thrifty.router.kmeans import CellStats, KMeansRouterModel
from thrifty.router.outcomes import OutcomeTable

# A head on frozen features is a small, well-conditioned fit: a higher rate than the trunk's converges
# on a calibration set of tens of queries.
HEAD_EPOCHS = 100
HEAD_LEARNING_RATE = 3e-3


def add_model(folder: Path, records: list[EvalRecord], model: str, out: Path, seed: int = 0) -> Path:
    artifact = load_artifact(folder)
    if artifact.family == "ensemble":
        raise ValueError(
            "an ensemble router cannot learn a model on its own (its MLP and K-means members and its shrink "
            "were fitted together): train it again on logs that include the new model"
        )
    if model in artifact.models:
        raise ValueError(f"the router already knows '{model}'")
    mine = [r for r in records if r.model == model]
    if not mine:
        raise ValueError(f"the calibration log has no record of '{model}'")
    embedder = artifact_embedder(folder, artifact)
    table = OutcomeTable.from_records(mine, [model])
    x = embedder.encode(table.queries)
    extend = _kmeans_column if artifact.family == "kmeans" else _mlp_head
    arrays = extend(artifact, x, table, seed)
    extended = replace(
        artifact,
        models=(*artifact.models, model),
        arrays=arrays,
        metrics=artifact.metrics | {"added_models": [*artifact.metrics.get("added_models", []), model]},
        inputs=artifact.inputs | {f"calibration:{model}": {"queries": len(table)}},
    )
    if artifact.embedder["kind"] != "static":
        return extended.save(out)
    copied = (folder / "embedder").is_dir()  # the extended artifact keeps the source's choice
    return extended.save(out, Path(embedder.weights).parent, copy_embedder=copied)


def _kmeans_column(artifact: RouterArtifact, x: np.ndarray, table: OutcomeTable, seed: int) -> dict[str, np.ndarray]:
    centres = artifact.arrays["centres"]
    stats = CellStats.collect(x, table, centres)
    prior = float(artifact.settings.get("prior_weight", 2.0))
    column = KMeansRouterModel.from_stats(centres, stats, prior)
    return artifact.arrays | {
        "accuracy": np.concatenate([artifact.arrays["accuracy"], column.accuracy], axis=1).astype(np.float32),
        "cost": np.concatenate([artifact.arrays["cost"], column.cost], axis=1).astype(np.float32),
        "count": np.concatenate([artifact.arrays["count"], column.count], axis=1).astype(np.float32),
    }


def _mlp_head(artifact: RouterArtifact, x: np.ndarray, table: OutcomeTable, seed: int) -> dict[str, np.ndarray]:
    import torch

    from thrifty.router.mlp import CostScale, MlpPlan, RouterNet, Targets, load_arrays, state_arrays, train_local

    settings = artifact.settings
    net = RouterNet(x.shape[1], len(artifact.models), int(settings["width"]), float(settings["dropout"]))
    load_arrays(net, {k: np.asarray(v) for k, v in artifact.arrays.items()})
    torch.manual_seed(seed)
    head = net.add_head()
    scale = CostScale(float(settings["cost_mean"]), float(settings["cost_std"]))
    # Only the new column is observed: the loss, and so every gradient, involves the new head alone.
    width = len(artifact.models) + 1
    scores = np.full((len(table), width), np.nan)
    costs = np.full((len(table), width), np.nan)
    scores[:, head], costs[:, head] = table.scores[:, 0], table.costs[:, 0]
    wide = OutcomeTable(table.queries, (*artifact.models, table.models[0]), scores, costs, table.tasks, table.clients)
    train_local(
        net,
        Targets.build(x, wide, scale),
        MlpPlan(learning_rate=HEAD_LEARNING_RATE),
        HEAD_EPOCHS,
        seed,
        heads_only=[head],
    )
    return state_arrays(net)
