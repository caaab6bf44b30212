"""Does another MLP recipe beat the per-task-means router? FedAvg variants on the benchmark's partitions.

The federation is simulated in one process (no Flower, so a variant takes seconds): every round each
client trains the global network for its local epochs on its own cells (the ClientApp's code), the
server averages weighted by observed cells and keeps the round with the lowest validation loss, as
``router/federated/server_app.py`` does. The baseline recipe reproduces the Flower run's numbers.

    .venv-router/bin/python benchmarks/router/variants.py --embedder minilm --seeds 0 1 2

Prints normalised AUC on the global test set, mean ± std over seeds, next to per-task means.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from run import Vectors

from thrifty.router.embedding import EMBEDDER_KINDS, load_embedder
from thrifty.router.evaluation import cost_range, lambda_grid, normalized_auc, sweep, task_predictions
from thrifty.router.mlp import (
    CostScale,
    MlpPlan,
    RouterNet,
    Targets,
    evaluate_loss,
    load_arrays,
    predict,
    state_arrays,
    train_local,
)
from thrifty.router.outcomes import concat
from thrifty.router.partition import ClientData, PartitionPlan, partition
from thrifty.router.training import load_outcomes


@dataclass(frozen=True)
class Recipe:
    plan: MlpPlan = field(default_factory=lambda: MlpPlan(learning_rate=3e-4))
    rounds: int = 20
    local_epochs: int = 2
    select_on_accuracy_only: bool = False  # validation loss without the cost term
    average_around_best: int = 0  # average the parameters of rounds best ± this (weight averaging)
    members: int = 1  # independently initialised federations whose predictions are averaged


BASE = Recipe()
RECIPES = {
    "baseline (shipped)": BASE,
    "select on accuracy loss": replace(BASE, select_on_accuracy_only=True),
    "average rounds best ± 2": replace(BASE, average_around_best=2),
    "weight decay 1e-2": replace(BASE, plan=replace(BASE.plan, weight_decay=1e-2)),
    "dropout 0.3": replace(BASE, plan=replace(BASE.plan, dropout=0.3)),
    "1 local epoch, 30 rounds": replace(BASE, rounds=30, local_epochs=1),
    "cost weight 0.3": replace(BASE, plan=replace(BASE.plan, cost_weight=0.3)),
    "learning rate 1e-3": replace(BASE, plan=replace(BASE.plan, learning_rate=1e-3)),
    "learning rate 1e-4, 40 rounds": replace(BASE, rounds=40, plan=replace(BASE.plan, learning_rate=1e-4)),
    "ensemble of 3": replace(BASE, members=3),
}


def fedavg(clients: list[ClientData], vectors: Vectors, scale: CostScale, recipe: Recipe, seed: int) -> RouterNet:
    torch.manual_seed(seed)
    plan = recipe.plan
    net = RouterNet(vectors.embedder.dim, len(clients[0].train.models), plan.width, plan.dropout)
    data = [Targets.build(vectors(c.train), c.train, scale) for c in clients]
    held = [Targets.build(vectors(c.validation), c.validation, scale) for c in clients]
    scoring = replace(plan, cost_weight=0.0) if recipe.select_on_accuracy_only else plan
    snapshots, losses = [], []
    for r in range(recipe.rounds):
        start, updates, weights = state_arrays(net), [], []
        for i, part in enumerate(data):
            if part.cells == 0:
                continue
            load_arrays(net, start)
            train_local(net, part, plan, recipe.local_epochs, seed * 1000 + r * 31 + i)
            updates.append(state_arrays(net))
            weights.append(part.cells)
        share = np.array(weights, dtype=np.float64) / sum(weights)
        average = {k: sum(w * u[k] for w, u in zip(share, updates, strict=True)) for k in start}
        load_arrays(net, average)
        snapshots.append(average)
        cells = sum(h.cells for h in held)
        losses.append(sum(evaluate_loss(net, h, scoring) * h.cells for h in held if h.cells) / cells)
    best = int(np.argmin(losses))
    window = snapshots[max(0, best - recipe.average_around_best) : best + recipe.average_around_best + 1]
    load_arrays(net, {k: np.mean([s[k] for s in window], axis=0) for k in window[0]})
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/routing/llmrouter"))
    parser.add_argument("--embedder", choices=EMBEDDER_KINDS, default="minilm")
    parser.add_argument("--embedder-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("data/router-bench"))
    parser.add_argument("--only", nargs="*", default=None, help="recipe names to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    table, _ = load_outcomes([args.data])
    vectors = Vectors(load_embedder(args.embedder, args.embedder_dir), table, args.work / "embeddings")
    names = args.only or list(RECIPES)
    auc: dict[str, list[float]] = {name: [] for name in ["per-task means", *names]}
    for seed in args.seeds:
        clients = partition(table, PartitionPlan(clients=args.clients), seed)
        test, train = concat([c.test for c in clients]), concat([c.train for c in clients])
        lambdas, (low, high) = lambda_grid(test), cost_range(test)
        scale = CostScale.fit(train.costs)
        tasks = task_predictions(train, test.tasks)
        auc["per-task means"].append(normalized_auc(sweep("tasks", *tasks, test, lambdas), low, high))
        for name in names:
            recipe, started = RECIPES[name], time.perf_counter()
            predictions = [
                predict(fedavg(clients, vectors, scale, recipe, seed * 17 + m), vectors(test), scale)
                for m in range(recipe.members)
            ]
            accuracy = np.mean([a for a, _ in predictions], axis=0)
            cost = np.mean([c for _, c in predictions], axis=0)
            auc[name].append(normalized_auc(sweep(name, accuracy, cost, test, lambdas), low, high))
            print(f"seed {seed} {name}: {auc[name][-1]:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n| recipe ({args.embedder}, {len(args.seeds)} seeds) | normalised AUC |\n|---|---|")
    for name, values in auc.items():
        print(f"| {name} | {np.mean(values):.3f} ± {np.std(values):.3f} |")


if __name__ == "__main__":
    main()
