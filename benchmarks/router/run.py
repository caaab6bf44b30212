"""Federated vs client-local vs centralised routers on the shared LLMRouter outcomes ("Federate the Router").

For each seed: draw 10 organisations (Dirichlet over task labels α=0.6 and over evaluated models α=0.45,
one observed model per training query, 75/25 train/test), train every router on the clients' sparse
training cells (selecting epochs / rounds / K on validation cells, never on test), and sweep λ over 100
values on the union of the clients' fully observed test sets and on each client's own test set.

    .venv-router/bin/python benchmarks/router/run.py --embedder static --embedder-dir data/router/static \\
        --seeds 0 1 2 --work data/router-bench

Prints tables and writes RESULTS.md material (results.json, curves.png, auc.png) under --report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.router.artifact import RouterArtifact, load_artifact
from thrifty.router.embedding import EMBEDDER_KINDS, Embedder, cached_encode, load_embedder
from thrifty.router.ensemble import query_lengths
from thrifty.router.evaluation import (
    Curve,
    accuracy_at_cost,
    constant_predictions,
    cost_range,
    lambda_grid,
    middle_cost_point,
    normalized_auc,
    point_baselines,
    sweep,
    task_predictions,
)
from thrifty.router.federated.plan import FederatedPlan
from thrifty.router.federated.simulation import simulate
from thrifty.router.outcomes import OutcomeTable, concat
from thrifty.router.partition import PartitionPlan, partition
from thrifty.router.training import Pooled, central_artifact, load_outcomes, write_clients

Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
FAMILIES = ("ensemble", "mlp", "kmeans")


class Vectors:
    """Every query embedded once; tables look their rows up."""

    def __init__(self, embedder: Embedder, table: OutcomeTable, cache: Path) -> None:
        self.embedder = embedder
        vectors = cached_encode(embedder, table.queries, cache)
        self.row = {q: vectors[i] for i, q in enumerate(table.queries)}

    def __call__(self, table: OutcomeTable) -> np.ndarray:
        if len(table) == 0:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([self.row[q] for q in table.queries])


def full_cells(table: OutcomeTable, truth: dict[str, int], full: OutcomeTable) -> OutcomeTable:
    """The same queries with every model's outcome (the 'centralised, all cells' upper reference)."""
    rows = full.subset([truth[q] for q in table.queries])
    return OutcomeTable(rows.queries, rows.models, rows.scores, rows.costs, table.tasks, table.clients)


def run_seed(
    seed: int, table: OutcomeTable, vectors: Vectors, args: argparse.Namespace, fed: FederatedPlan
) -> dict[str, Any]:
    clients = partition(table, PartitionPlan(clients=args.clients), seed)
    work = args.work / f"seed-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    write_clients(clients, work / "clients")
    test = concat([c.test for c in clients])
    x_test = vectors(test)
    lambdas = lambda_grid(test)
    index = {q: i for i, q in enumerate(table.queries)}
    sparse = Pooled(
        vectors(concat([c.train for c in clients])),
        concat([c.train for c in clients]),
        vectors(concat([c.validation for c in clients])),
        concat([c.validation for c in clients]),
    )
    everything = Pooled(
        sparse.x,
        full_cells(sparse.train, index, table),
        sparse.x_validation,
        full_cells(sparse.validation, index, table),
    )
    predictors: dict[str, Predict] = {}
    timings: dict[str, float] = {}
    selection: dict[str, Any] = {}

    def timed(name: str, make: Callable[[], RouterArtifact]) -> None:
        started = time.perf_counter()
        artifact = make()
        timings[name] = time.perf_counter() - started
        predictors[name] = artifact.predictor().predict
        selection[name] = {k: v for k, v in artifact.metrics.items() if not k.endswith("by_round")}

    for family in FAMILIES:
        plan = FederatedPlan(
            **(
                fed.settings()
                | {
                    "family": family,
                    "seed": seed,  # the federation's initialisation and clients' k-means, like the others'
                    "clients_dir": str(work / "clients"),
                    "out": str(work / f"fed-{family}"),
                }
            )
        )
        timed(f"federated {family}", lambda plan=plan: load_artifact(simulate(plan, len(clients))))  # type: ignore[misc]
        settings = plan.settings()
        timed(
            f"central sparse {family}",
            lambda s=settings, f=family: central_artifact(f, sparse, vectors.embedder, s, seed),
        )  # type: ignore[misc]
        timed(
            f"central all-cells {family}",
            lambda s=settings, f=family: central_artifact(f, everything, vectors.embedder, s, seed),
        )  # type: ignore[misc]
        for i, client in enumerate(clients):
            own = Pooled(vectors(client.train), client.train, vectors(client.validation), client.validation)
            timed(
                f"local {family} {i}",
                lambda s=settings, f=family, o=own: central_artifact(f, o, vectors.embedder, s, seed),
            )  # type: ignore[misc]

    train = sparse.train

    def curves_on(truth: OutcomeTable, x: np.ndarray, tasks: tuple[str, ...]) -> dict[str, Curve]:
        lengths = query_lengths(truth.queries)
        out = {name: sweep(name, *predict(x, lengths), truth, lambdas) for name, predict in predictors.items()}
        out["per-model means"] = sweep("per-model means", *constant_predictions(train, len(truth)), truth, lambdas)
        out["per-task means"] = sweep("per-task means", *task_predictions(train, tasks), truth, lambdas)
        out["oracle"] = sweep("oracle", truth.scores, truth.costs, truth, lambdas)
        return out

    curves = curves_on(test, x_test, test.tasks)
    low, high = cost_range(test)
    middle_model, middle_cost = middle_cost_point(test)
    auc = {name: normalized_auc(c, low, high) for name, c in curves.items()}
    at_cost = {name: accuracy_at_cost(c, middle_cost) for name, c in curves.items()}
    points = {c.name: (float(c.costs[0]), float(c.accuracies[0])) for c in point_baselines(train, test, seed)}
    for name, (cost, accuracy) in points.items():
        point = Curve.point(name, cost, accuracy)
        auc[name] = normalized_auc(point, low, high)
        at_cost[name] = accuracy if cost <= middle_cost * (1 + 1e-9) else float("nan")

    # Each client's own test set: the federated routers against that client's own local router.
    per_client = []
    for i, client in enumerate(clients):
        truth = client.test
        lo, hi = cost_range(truth)
        own = curves_on(truth, vectors(truth), truth.tasks)
        per_client.append(
            {
                "client": client.name,
                "train_cells": int(client.train.observed.sum()),
                "models_evaluated": int((client.train.observed.sum(0) > 0).sum()),
                **{
                    name: normalized_auc(own[name], lo, hi)
                    for name in (
                        "federated ensemble",
                        "federated mlp",
                        "federated kmeans",
                        "central sparse mlp",
                        "per-task means",
                        "per-model means",
                        "oracle",
                    )
                },
                **{f"local {f}": normalized_auc(own[f"local {f} {i}"], lo, hi) for f in FAMILIES},
            }
        )
    return {
        "seed": seed,
        "auc": auc,
        "accuracy_at_middle_cost": at_cost,
        "middle_cost": {"model": middle_model, "cost": middle_cost},
        "cost_range": [low, high],
        "per_client": per_client,
        "timings_s": timings,
        "selection": selection,
        "curves": {name: {"cost": c.costs.tolist(), "accuracy": c.accuracies.tolist()} for name, c in curves.items()},
        "points": points,
        "test_queries": len(test),
    }


def summarise(results: list[dict[str, Any]], clients: int) -> dict[str, dict[str, float]]:
    """Mean ± std over seeds; client-local routers reported as the best and the mean client."""
    rows: dict[str, list[float]] = {}
    for r in results:
        for key in ("auc", "accuracy_at_middle_cost"):
            values = r[key]
            for family in FAMILIES:
                local = [values[f"local {family} {i}"] for i in range(clients)]
                values = values | {f"best local {family}": max(local), f"mean local {family}": float(np.mean(local))}
            every = [values[f"local {f} {i}"] for f in FAMILIES for i in range(clients)]
            values = values | {"best local (any family)": max(every)}
            for name, value in values.items():
                if name.startswith("local "):
                    continue
                rows.setdefault(f"{key}|{name}", []).append(value)
    out: dict[str, dict[str, float]] = {}
    for key, values in rows.items():
        metric, name = key.split("|")
        out.setdefault(name, {})[f"{metric}_mean"] = float(np.nanmean(values))
        out[name][f"{metric}_std"] = float(np.nanstd(values))
    return out


ORDER = [
    "oracle",
    "central all-cells ensemble",
    "central sparse ensemble",
    "federated ensemble",
    "best local ensemble",
    "mean local ensemble",
    "central all-cells mlp",
    "central all-cells kmeans",
    "central sparse mlp",
    "federated mlp",
    "central sparse kmeans",
    "federated kmeans",
    "best local mlp",
    "best local kmeans",
    "mean local mlp",
    "mean local kmeans",
    "best local (any family)",
    "per-task means",
    "per-model means",
    "always-best",
    "always-cheapest",
    "random",
]


def table_text(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| router | normalised AUC | accuracy at the middle cost |", "|---|---|---|"]
    for name in ORDER:
        s = summary[name]
        at = s["accuracy_at_middle_cost_mean"]
        at_text = "—" if np.isnan(at) else f"{at:.3f} ± {s['accuracy_at_middle_cost_std']:.3f}"
        lines.append(f"| {name} | {s['auc_mean']:.3f} ± {s['auc_std']:.3f} | {at_text} |")
    return "\n".join(lines)


def targets_text(results: list[dict[str, Any]]) -> str:
    """Issue 19's bars for the federated ensemble, seed by seed and on average."""
    fed = np.array([r["auc"]["federated ensemble"] for r in results])
    constant = np.array([r["auc"]["per-model means"] for r in results])
    task = np.array([r["auc"]["per-task means"] for r in results])
    local = np.array(
        [max(r["auc"][k] for k in r["auc"] if k.startswith("local ") and k[-1].isdigit()) for r in results]
    )
    own = np.array([max(v for k, v in r["auc"].items() if k.startswith("local ensemble ")) for r in results])
    seeds = ", ".join(str(r["seed"]) for r in results)
    rows = [
        ("≥ per-model means on every seed", fed - constant, bool((fed >= constant).all())),
        ("≥ per-task means on average", fed - task, bool(fed.mean() >= task.mean())),
        ("≥ best client-local ensemble + 0.02", fed - own - 0.02, bool(fed.mean() >= own.mean() + 0.02)),
        ("≥ best client-local router (any family) + 0.02", fed - local - 0.02, bool(fed.mean() >= local.mean() + 0.02)),
    ]
    lines = [f"| target (seeds {seeds}) | margin per seed | holds? |", "|---|---|---|"]
    for name, margin, holds in rows:
        lines.append(f"| {name} | {', '.join(f'{m:+.3f}' for m in margin)} | {'yes' if holds else '**no**'} |")
    return "\n".join(lines)


def client_table(results: list[dict[str, Any]]) -> str:
    names = [
        "federated ensemble",
        "local ensemble",
        "federated mlp",
        "local mlp",
        "federated kmeans",
        "local kmeans",
        "per-task means",
        "per-model means",
        "oracle",
    ]
    lines = [
        "| client | train cells | models evaluated | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for row in results[0]["per_client"]:
        cells = " | ".join(f"{row[n]:.3f}" for n in names)
        lines.append(f"| {row['client']} | {row['train_cells']} | {row['models_evaluated']} | {cells} |")
    wins = {
        family: sum(r[f"federated {family}"] >= r[f"local {family}"] for res in results for r in res["per_client"])
        for family in FAMILIES
    }
    total = sum(len(res["per_client"]) for res in results)
    lines.append("")
    lines.append(
        f"Over all seeds, the federated router is at least as good as the client's own on its own test set for "
        f"{wins['ensemble']}/{total} clients (ensemble), {wins['mlp']}/{total} (MLP) and {wins['kmeans']}/{total} "
        "(K-means)."
    )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], summary: dict[str, dict[str, float]], report: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in (
        "oracle",
        "federated ensemble",
        "central all-cells mlp",
        "central sparse mlp",
        "federated mlp",
        "federated kmeans",
        "per-task means",
        "per-model means",
    ):
        c = first["curves"][name]
        ax.plot(np.array(c["cost"]) * 1e6, c["accuracy"], label=name, marker=".", markersize=3)
    best_local = max(range(len(first["per_client"])), key=lambda i: first["auc"][f"local ensemble {i}"])
    c = first["curves"][f"local ensemble {best_local}"]
    ax.plot(
        np.array(c["cost"]) * 1e6, c["accuracy"], label=f"best local ensemble (client-{best_local})", linestyle="--"
    )
    for name, (cost, acc) in first["points"].items():
        ax.scatter([cost * 1e6], [acc], marker="x", s=50, label=name, zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (µUSD, log scale)")
    ax.set_ylabel("mean accuracy")
    ax.set_title(f"Accuracy–cost on the global test set (seed {first['seed']}, {first['test_queries']} queries)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(report / "curves.png", dpi=130)
    plt.close(fig)

    names = [n for n in ORDER if n != "oracle"]
    fig, ax = plt.subplots(figsize=(9, 5))
    means = [summary[n]["auc_mean"] for n in names]
    stds = [summary[n]["auc_std"] for n in names]
    ax.barh(names[::-1], means[::-1], xerr=stds[::-1], color="tab:blue", alpha=0.8)
    ax.axvline(summary["oracle"]["auc_mean"], color="k", linestyle=":", label="oracle")
    ax.set_xlim(min(means) - 0.05, summary["oracle"]["auc_mean"] + 0.02)
    ax.set_xlabel(f"normalised AUC (mean ± std over {len(results)} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(report / "auc.png", dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/routing/llmrouter"),
        help="the LLMRouter folder or an evaluation log (JSONL), e.g. a reasoning world's eval/router_log.jsonl",
    )
    parser.add_argument("--embedder", choices=EMBEDDER_KINDS, default="static")
    parser.add_argument("--embedder-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=FederatedPlan().rounds)
    parser.add_argument("--local-epochs", type=int, default=FederatedPlan().local_epochs)
    parser.add_argument("--learning-rate", type=float, default=FederatedPlan().learning_rate)
    parser.add_argument("--work", type=Path, default=Path("data/router-bench"))
    parser.add_argument("--report", type=Path, default=Path("benchmarks/router"))
    args = parser.parse_args()

    table, _ = load_outcomes([args.data])
    embedder = load_embedder(args.embedder, args.embedder_dir)
    vectors = Vectors(embedder, table, args.work / "embeddings")
    fed = FederatedPlan(
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        learning_rate=args.learning_rate,
        embedder=args.embedder,
        embedder_dir=str(args.embedder_dir or ""),
        embedding_cache=str(args.work / "embeddings"),  # clients find the vectors Vectors computed
        min_clients=args.clients,
    )
    results = []
    for seed in args.seeds:
        started = time.perf_counter()
        results.append(run_seed(seed, table, vectors, args, fed))
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    summary = summarise(results, args.clients)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "results.json").write_text(
        json.dumps(
            {"summary": summary, "seeds": [{k: v for k, v in r.items() if k != "curves"} for r in results]}, indent=1
        )
    )
    plot(results, summary, args.report)
    print(table_text(summary))
    print()
    print(targets_text(results))
    print()
    print(client_table(results))


if __name__ == "__main__":
    main()
