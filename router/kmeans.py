"""The K-means router of "Federate the Router", in the two federated passes the paper uses.

Pass 1: each client clusters its own query embeddings and shares only centroids and cluster sizes; the
server clusters those centroids (weighted by size) into K global centres. Pass 2: each client assigns
its queries to the global centres and shares, per (cluster, model), the sum of scores, the sum of costs
and the count of observed cells; the server adds them up, so every mean is weighted by count. A query
is then routed with its nearest centre's per-model means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thrifty.router.outcomes import OutcomeTable


def kmeans(
    x: np.ndarray, k: int, seed: int, weights: np.ndarray | None = None, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Lloyd's algorithm with k-means++ seeding: (centres (k', d), sizes (k',)), k' = min(k, n)."""
    n = len(x)
    if n == 0:
        raise ValueError("k-means needs at least one point")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    centres = [x[rng.choice(n, p=w / w.sum())]]
    distance = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = w * distance
        pick = rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.choice(n)
        centres.append(x[pick])
        distance = np.minimum(distance, ((x - x[pick]) ** 2).sum(1))
    c = np.stack(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new_labels = assign(x, c)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(k):
            members = labels == j
            if w[members].sum() > 0:
                c[j] = (x[members] * w[members, None]).sum(0) / w[members].sum()
    sizes = np.array([w[labels == j].sum() for j in range(k)])
    return c, sizes


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (x**2).sum(1)[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None, :]
    return np.asarray(d.argmin(1))


@dataclass(frozen=True, slots=True)
class CellStats:
    """Per (cluster, model): Σ score, Σ cost, count of observed cells."""

    score_sum: np.ndarray
    cost_sum: np.ndarray
    count: np.ndarray

    @classmethod
    def collect(cls, x: np.ndarray, table: OutcomeTable, centres: np.ndarray) -> CellStats:
        k, m = len(centres), len(table.models)
        labels = assign(x, centres) if len(x) else np.zeros(0, dtype=int)
        observed = table.observed
        stats = cls(np.zeros((k, m)), np.zeros((k, m)), np.zeros((k, m)))
        np.add.at(stats.score_sum, labels, np.where(observed, table.scores, 0.0))
        np.add.at(stats.cost_sum, labels, np.where(observed, table.costs, 0.0))
        np.add.at(stats.count, labels, observed.astype(np.float64))
        return stats

    def __add__(self, other: CellStats) -> CellStats:
        return CellStats(self.score_sum + other.score_sum, self.cost_sum + other.cost_sum, self.count + other.count)


@dataclass(frozen=True, slots=True)
class KMeansRouterModel:
    centres: np.ndarray  # (K, d)
    accuracy: np.ndarray  # (K, M)
    cost: np.ndarray  # (K, M)
    count: np.ndarray  # (K, M) observed cells behind each mean

    @classmethod
    def from_stats(cls, centres: np.ndarray, stats: CellStats, prior_weight: float = 2.0) -> KMeansRouterModel:
        """Cell means, shrunk toward the model's mean over all clusters by ``prior_weight`` pseudo-cells
        (a cell nobody observed falls back to that model-wide mean). A model nobody observed gets accuracy
        0 at the mean cost over all cells, as the ensemble's model averages do: never routed to, rather
        than free."""
        total = stats.count.sum(0)
        everything, seen, per_model = max(float(total.sum()), 1e-12), total > 0, np.maximum(total, 1e-12)
        model_acc = np.where(seen, stats.score_sum.sum(0) / per_model, 0.0)
        model_cost = np.where(seen, stats.cost_sum.sum(0) / per_model, stats.cost_sum.sum() / everything)
        accuracy = (stats.score_sum + prior_weight * model_acc) / (stats.count + prior_weight)
        cost = (stats.cost_sum + prior_weight * model_cost) / (stats.count + prior_weight)
        return cls(centres, accuracy, cost, stats.count)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = assign(x, self.centres)
        return self.accuracy[labels], self.cost[labels]

    def arrays(self) -> dict[str, np.ndarray]:
        """The artifact's arrays (float32)."""
        parts = {"centres": self.centres, "accuracy": self.accuracy, "cost": self.cost, "count": self.count}
        return {k: np.asarray(v, dtype=np.float32) for k, v in parts.items()}


def fit_central(x: np.ndarray, table: OutcomeTable, k: int, seed: int, prior_weight: float = 2.0) -> KMeansRouterModel:
    """One party with all the data: the same two steps without the federation."""
    centres, _ = kmeans(x, k, seed)
    return KMeansRouterModel.from_stats(centres, CellStats.collect(x, table, centres), prior_weight)
