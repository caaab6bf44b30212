"""Accuracy–cost curves of routers, their normalised area, and the feature-free baselines.

A router predicts, per test query and model, accuracy A and cost C; for a trade-off λ it sends the query
to argmax A − λ·C and earns that model's true score at its true cost. Sweeping λ over 100 log-spaced
values traces the router's accuracy–cost curve. Its normalised AUC is the trapezoid area under the curve
over a fixed cost range, divided by that range: the mean accuracy the router offers across budgets.
The range is the same for every router on one test set: from the cheapest to the dearest single model
(mean cost per query); a curve is extended flat beyond its own cheapest and dearest points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thrifty.router.outcomes import OutcomeTable

LAMBDA_SPAN = (1e-3, 1e3)  # × 1 / (mean cost per query): from accuracy-only to cost-only
LAMBDAS = 100


@dataclass(frozen=True, slots=True)
class Curve:
    name: str
    lambdas: np.ndarray
    costs: np.ndarray  # mean true cost per query at each λ
    accuracies: np.ndarray  # mean true score at each λ

    @classmethod
    def point(cls, name: str, cost: float, accuracy: float) -> Curve:
        return cls(name, np.array([np.nan]), np.array([cost]), np.array([accuracy]))


def lambda_grid(truth: OutcomeTable, count: int = LAMBDAS) -> np.ndarray:
    scale = 1.0 / float(np.nanmean(truth.costs))
    return np.logspace(np.log10(LAMBDA_SPAN[0]), np.log10(LAMBDA_SPAN[1]), count) * scale


def choose(accuracy: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Per query, the model maximising A − λ·C (ties go to the lower index)."""
    return np.asarray(np.argmax(accuracy - lam * cost, axis=1))


def sweep(name: str, accuracy: np.ndarray, cost: np.ndarray, truth: OutcomeTable, lambdas: np.ndarray) -> Curve:
    if np.isnan(truth.scores).any():
        raise ValueError("the test table must have every (query, model) cell observed")
    rows = np.arange(len(truth))
    costs, accuracies = [], []
    for lam in lambdas:
        picked = choose(accuracy, cost, float(lam))
        costs.append(truth.costs[rows, picked].mean())
        accuracies.append(truth.scores[rows, picked].mean())
    return Curve(name, lambdas, np.array(costs), np.array(accuracies))


def cost_range(truth: OutcomeTable) -> tuple[float, float]:
    means = truth.costs.mean(0)
    return float(means.min()), float(means.max())


def normalized_auc(curve: Curve, low: float, high: float) -> float:
    """Area under the accuracy–cost curve over [low, high] / (high − low), the curve linear between its
    operating points and flat beyond its ends. Operating points at the same cost (models with the same
    prices, routed differently at different λ) count once, with the best accuracy among them: a user can
    pick that λ."""
    c, inverse = np.unique(curve.costs, return_inverse=True)
    a = np.full(len(c), -np.inf)
    np.maximum.at(a, inverse.ravel(), curve.accuracies)
    grid = np.unique(np.clip(np.concatenate([[low, high], c]), low, high))
    values = np.interp(grid, c, a)  # flat beyond the curve's ends
    return float(np.trapezoid(values, grid) / (high - low))


def accuracy_at_cost(curve: Curve, budget: float) -> float:
    """The best accuracy among the router's operating points that cost at most ``budget`` (NaN if none)."""
    affordable = curve.costs <= budget * (1 + 1e-9)
    return float(curve.accuracies[affordable].max()) if affordable.any() else float("nan")


def pareto_models(truth: OutcomeTable) -> list[int]:
    """Single models no other model beats on both mean cost and mean accuracy, cheapest first."""
    cost, acc = truth.costs.mean(0), truth.scores.mean(0)
    keep = [
        j
        for j in range(len(cost))
        if not any(
            (cost[i] <= cost[j] and acc[i] >= acc[j]) and (cost[i] < cost[j] or acc[i] > acc[j])
            for i in range(len(cost))
        )
    ]
    return sorted(keep, key=lambda j: cost[j])


def middle_cost_point(truth: OutcomeTable) -> tuple[str, float]:
    """The cheapest Pareto-optimal model whose cost is at least the middle of the cost range."""
    low, high = cost_range(truth)
    cost = truth.costs.mean(0)
    front = pareto_models(truth)
    middle = [j for j in front if cost[j] >= (low + high) / 2] or front[-1:]
    return truth.models[middle[0]], float(cost[middle[0]])


# --- baselines that look at no query features ------------------------------------------------------


def _column_means(
    scores: np.ndarray, costs: np.ndarray, fallback: tuple[np.ndarray | float, np.ndarray | float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per model, the mean observed score and cost; ``fallback`` where a model has no observed cell."""
    count = (~np.isnan(scores)).sum(0)
    acc = np.where(count > 0, np.nansum(scores, 0) / np.maximum(count, 1), fallback[0])
    cost = np.where(count > 0, np.nansum(costs, 0) / np.maximum(count, 1), fallback[1])
    return acc, cost


def model_means(train: OutcomeTable) -> tuple[np.ndarray, np.ndarray]:
    """Per model, the mean observed score and cost (a model nobody observed gets the overall mean)."""
    return _column_means(train.scores, train.costs, (np.nanmean(train.scores), np.nanmean(train.costs)))


def constant_predictions(train: OutcomeTable, queries: int) -> tuple[np.ndarray, np.ndarray]:
    acc, cost = model_means(train)
    return np.tile(acc, (queries, 1)), np.tile(cost, (queries, 1))


def task_predictions(train: OutcomeTable, test_tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per (task, model) means from training; an unseen task or cell falls back to the model's mean."""
    fallback = model_means(train)
    tasks = np.array(train.tasks)
    table = {
        task: _column_means(train.scores[tasks == task], train.costs[tasks == task], fallback)
        for task in set(test_tasks)
    }
    return (
        np.stack([table[t][0] for t in test_tasks]),
        np.stack([table[t][1] for t in test_tasks]),
    )


def point_baselines(train: OutcomeTable, truth: OutcomeTable, seed: int) -> list[Curve]:
    """Random, always-cheapest and always-best (the best and cheapest chosen on training data)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(len(truth))
    picked = rng.integers(0, len(truth.models), len(truth))
    acc, cost = model_means(train)
    cheapest, best = int(np.argmin(cost)), int(np.argmax(acc))
    return [
        Curve.point("random", float(truth.costs[rows, picked].mean()), float(truth.scores[rows, picked].mean())),
        Curve.point("always-cheapest", float(truth.costs[:, cheapest].mean()), float(truth.scores[:, cheapest].mean())),
        Curve.point("always-best", float(truth.costs[:, best].mean()), float(truth.scores[:, best].mean())),
    ]
