"""What a learned routing decision adds to a request: embed the query, predict A and C for every model,
take argmax A − λ·C. Measured through LearnedRouter.route, as the gateway calls it, on real queries.

    .venv/bin/python benchmarks/router/latency.py --static data/router/static

Prints median / p95 / p99 per decision for the static (model2vec) and MiniLM embedders with the
ensemble, MLP and K-means routers (weights at random: the cost does not depend on their values).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from thrifty.router import ModelCandidate, RoutingRequest
from thrifty.router.artifact import RouterArtifact
from thrifty.router.embedding import Embedder, MiniLmEmbedder, MiniLmInt8Embedder, StaticEmbedder
from thrifty.router.ensemble import ModelStats, ensemble_arrays
from thrifty.router.learned import LearnedRouter
from thrifty.router.mlp import RouterNet, state_arrays


def kmeans_arrays(k: int, dim: int, models: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "centres": rng.normal(size=(k, dim)),
        "accuracy": rng.random((k, models)),
        "cost": rng.random((k, models)) * 1e-4,
        "count": np.ones((k, models)),
    }


def artifact(family: str, embedder: Embedder, models: list[str], out: Path, static_dir: Path | None) -> Path:
    rng = np.random.default_rng(0)
    mlp_settings = {"cost_mean": -9.0, "cost_std": 1.0, "width": 512, "dropout": 0.1}
    if family == "mlp":
        arrays = state_arrays(RouterNet(embedder.dim, len(models)))
        settings: dict[str, float] = mlp_settings
    elif family == "ensemble":  # as trained by default: 3 MLPs, K ∈ {4, 8, 16, 32} × 5 restarts, 3 tasks
        m = len(models)  # ten cells per model, of lengths with a spread: a sloped cost line
        cost = rng.random(m) * 1e-3
        constant = ModelStats(rng.random(m) * 10, cost, np.full(m, 10.0), np.full(m, 5.0), np.full(m, 3.5), cost * 0.6)
        tasks = {
            "weights": rng.normal(size=(embedder.dim, 3)),
            "bias": rng.normal(size=3),
            "accuracy": rng.random((3, len(models))),
            "cost": rng.random((3, len(models))) * 1e-4,
        }
        arrays = ensemble_arrays(
            constant,
            [state_arrays(RouterNet(embedder.dim, len(models))) for _ in range(3)],
            [kmeans_arrays(k, embedder.dim, len(models), rng) for k in (4, 8, 16, 32) for _ in range(5)],
            tasks,
        )
        settings = mlp_settings | {"shrink": 1.0, "cost_model": "line"}
    else:
        arrays = kmeans_arrays(32, embedder.dim, len(models), rng)
        settings = {"clusters": 32, "prior_weight": 2.0}
    RouterArtifact(
        family, tuple(models), embedder.identity, {k: np.asarray(v, np.float32) for k, v in arrays.items()}, settings
    ).save(out, static_dir)  # type: ignore[arg-type]
    return out


async def measure(router: LearnedRouter, queries: list[str], candidates: list[ModelCandidate]) -> np.ndarray:
    times = []
    for text in queries:
        request = RoutingRequest("chat", "auto", {"messages": [{"role": "user", "content": text}]}, {})
        started = time.perf_counter()
        await router.route(request, candidates)
        times.append(time.perf_counter() - started)
    return np.array(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--static", type=Path, required=True, help="a static embedder's folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/routing/llmrouter"))
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    data = json.loads((args.data / "train.json").read_text())
    queries = [row["question"] for row in data[: args.queries]]
    models = sorted(data[0]["scores"])
    candidates = [ModelCandidate(m, 0.1, 0.2, False, 8192) for m in models]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, embedder, static_dir in (
            ("static", StaticEmbedder(args.static), args.static),
            ("minilm", MiniLmEmbedder(), None),
            ("minilm-int8", MiniLmInt8Embedder(), None),
        ):
            for family in ("ensemble", "mlp", "kmeans"):
                folder = artifact(family, embedder, models, Path(tmp) / f"{name}-{family}", static_dir)
                router = LearnedRouter(str(folder))
                asyncio.run(measure(router, queries[:20], candidates))  # warm up
                ms = asyncio.run(measure(router, queries, candidates))
                rows.append((name, family, *np.percentile(ms, [50, 95, 99])))
    print(f"{len(queries)} LLMRouter queries, {len(models)} models, one decision at a time (ms per decision)")
    print("| embedder | router | median | p95 | p99 |")
    print("|---|---|---|---|---|")
    for name, family, p50, p95, p99 in rows:
        print(f"| {name} | {family} | {p50:.3f} | {p95:.3f} | {p99:.3f} |")


if __name__ == "__main__":
    main()
