"""The ensemble router: the paper's families averaged, anchored at the constant router.

With sparse evaluation logs (one model per query) each learned family is noisy, and on its own none beats
routing by model averages reliably (benchmarks/router/RESULTS.md). Their errors differ, so their mean is
better than any of them. The served prediction is

    A(q) = Ā + s · (Ē(q) − Ā)          (and the same for cost)

where Ā is each model's mean accuracy over the federation's training cells (the constant router),
Ē(q) the equally weighted mean of the components below, and s ∈ [0, SHRINK_MAX] the shrink chosen on
the federation's validation cells: the lowest squared error among the shrinks that beat Ā by a significant
margin (2.326 standard errors of the per-cell gains). When none does, s = 0 and the router *is* the
constant router. s may exceed 1: every component is itself a shrunk estimate (K-means cells pulled toward
the model means, the MLP stopped early, the LDA's covariance shrunk), and averaging components where they
disagree shrinks once more, so the validation cells often ask for the correction undone a little (on the
LLMRouter logs they chose 1.1–1.4). Predictions are clipped to accuracy in [0, 1] and cost ≥ 0.

Cost has a second candidate: per model, a straight line in the query's length (cost = a + b · characters,
least squares over the training cells; per-token pricing makes a request's cost grow with its prompt). The
validation cells choose between it and the shrunk components' cost once s is chosen: the line must beat
them by the same 2.326 standard errors, so where cost does not depend on length the components keep it.

Once s is chosen, the validation cells have done their job and join the training cells in every sum the
served router is built from (:class:`Sums`: the model averages, every K-means member's cells, the task
LDA); the MLPs stay as trained, since their rounds were chosen on those cells.

Components (each leaves a client as model updates or aggregate statistics only):
- mlp: several federations of the paper's MLP from different seeds, their predictions averaged;
- kmeans: every (K, restart) model the two-pass K-means fits (it fits them anyway to choose one),
  averaged;
- tasks (only when the logs carry task labels): P(task | query) from linear discriminant analysis on
  the embeddings (per-task sums and the pooled scatter matrix are sums clients can share) times the
  per-(task, model) means. No task label is needed at routing time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from thrifty.router.kmeans import CellStats, KMeansRouterModel
from thrifty.router.outcomes import OutcomeTable

SHRINK_MAX = 2.0
SHRINK_GRID = tuple(round(0.1 * i, 1) for i in range(int(SHRINK_MAX * 10) + 1))
DEFAULT_MLP_MEMBERS = 3
DEFAULT_LDA_SHRINKAGE = 0.1  # covariance shrinkage; on LLMRouter validation cross-entropy chose it on all seeds
TASK_PRIOR_WEIGHT = 2.0  # pseudo-cells pulling a (task, model) mean toward the model's mean
MIN_SHARED_TASK_QUERIES = 5  # a client shares a task's sums only over at least this many queries
COST_MODELS = ("components", "line")  # where an ensemble's costs come from (choose_shrink)
LENGTH_UNIT = 1000.0  # a query's length enters the cost line in thousands of characters
MIN_LENGTH_CELLS = 3  # a model's cost line needs this many cells, with lengths that differ


def query_lengths(queries: Sequence[str]) -> np.ndarray:
    """Each query's length in thousands of characters: the cost line's input."""
    return np.array([len(q) for q in queries], dtype=np.float64) / LENGTH_UNIT


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Per model: Σ score, Σ cost and the count of observed cells (what the constant router needs), and
    Σ length, Σ length², Σ length · cost (what the cost line needs; lengths from :func:`query_lengths`)."""

    score_sum: np.ndarray
    cost_sum: np.ndarray
    count: np.ndarray
    length_sum: np.ndarray
    length_sq_sum: np.ndarray
    length_cost_sum: np.ndarray

    @classmethod
    def collect(cls, table: OutcomeTable) -> ModelStats:
        observed = table.observed
        length = np.where(observed, query_lengths(table.queries)[:, None], 0.0)
        cost = np.where(observed, table.costs, 0.0)
        return cls(
            np.where(observed, table.scores, 0.0).sum(0),
            cost.sum(0),
            observed.sum(0).astype(np.float64),
            length.sum(0),
            (length * length).sum(0),
            (length * cost).sum(0),
        )

    def __add__(self, other: ModelStats) -> ModelStats:
        return ModelStats(*(a + b for a, b in zip(self.parts(), other.parts(), strict=True)))

    def parts(self) -> tuple[np.ndarray, ...]:
        return (
            self.score_sum,
            self.cost_sum,
            self.count,
            self.length_sum,
            self.length_sq_sum,
            self.length_cost_sum,
        )

    def cost_line(self) -> tuple[np.ndarray, np.ndarray]:
        """Per model, (intercept, slope) of cost against length by least squares. Flat at the model's mean
        cost (its fallback for an unseen model) where it has fewer than MIN_LENGTH_CELLS cells or their
        lengths barely differ."""
        mean = self.means()[1]
        n = self.count
        spread = n * self.length_sq_sum - self.length_sum**2  # n² · variance of the lengths
        usable = (n >= MIN_LENGTH_CELLS) & (spread > 1e-9 * np.maximum(n * self.length_sq_sum, 1e-300))
        safe = np.where(usable, spread, 1.0)
        slope = np.where(usable, (n * self.length_cost_sum - self.length_sum * self.cost_sum) / safe, 0.0)
        intercept = np.where(usable, (self.cost_sum - slope * self.length_sum) / np.maximum(n, 1e-12), mean)
        return intercept, slope

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, cost) per model. A model nobody observed gets accuracy 0 at the mean cost over all
        cells: the cheapest observed model is at least as good and no dearer, so it is never routed to (a
        router has no business sending traffic to a model it has never seen answer)."""
        total = max(float(self.count.sum()), 1e-12)
        fallback = (0.0, float(self.cost_sum.sum()) / total)
        seen = self.count > 0
        count = np.maximum(self.count, 1e-12)
        return (
            np.where(seen, self.score_sum / count, fallback[0]),
            np.where(seen, self.cost_sum / count, fallback[1]),
        )


@dataclass(frozen=True, slots=True)
class TaskStats:
    """Per task label: query counts, Σ embedding, Σ x·xᵀ over all queries, and per-(task, model) cell sums.

    Sums over a client's queries; added across clients, they give the pooled LDA and the task means.
    """

    names: tuple[str, ...]
    queries: np.ndarray  # (T,)
    x_sum: np.ndarray  # (T, d)
    scatter: np.ndarray  # (d, d)
    score_sum: np.ndarray  # (T, M)
    cost_sum: np.ndarray  # (T, M)
    count: np.ndarray  # (T, M)

    @classmethod
    def collect(cls, x: np.ndarray, table: OutcomeTable, min_queries: int = 1) -> TaskStats:
        """``min_queries``: a task with fewer queries is left out (a sum over one query is that query's
        embedding, which a client should not share)."""
        counts = Counter(table.tasks)
        names = tuple(sorted(t for t, n in counts.items() if t and n >= min_queries))
        d, m = x.shape[1], len(table.models)
        stats = cls.empty(names, d, m)
        if not names:
            return stats
        label = np.array([names.index(t) if t in names else -1 for t in table.tasks], dtype=np.int64)
        keep = label >= 0
        x64 = np.asarray(x, dtype=np.float64)[keep]
        rows = label[keep]
        observed = table.observed[keep]
        np.add.at(stats.queries, rows, 1.0)
        np.add.at(stats.x_sum, rows, x64)
        np.add.at(stats.score_sum, rows, np.where(observed, table.scores[keep], 0.0))
        np.add.at(stats.cost_sum, rows, np.where(observed, table.costs[keep], 0.0))
        np.add.at(stats.count, rows, observed.astype(np.float64))
        stats.scatter[...] = x64.T @ x64
        return stats

    @classmethod
    def empty(cls, names: Sequence[str], dim: int, models: int) -> TaskStats:
        t = len(names)
        return cls(
            tuple(names),
            np.zeros(t),
            np.zeros((t, dim)),
            np.zeros((dim, dim)),
            np.zeros((t, models)),
            np.zeros((t, models)),
            np.zeros((t, models)),
        )

    def aligned(self, names: Sequence[str]) -> TaskStats:
        """The same sums over ``names`` (a superset of this one's), zero where this one has no such task."""
        out = TaskStats.empty(names, self.scatter.shape[0], self.count.shape[1])
        for i, name in enumerate(self.names):
            j = list(names).index(name)
            out.queries[j], out.x_sum[j] = self.queries[i], self.x_sum[i]
            out.score_sum[j], out.cost_sum[j], out.count[j] = self.score_sum[i], self.cost_sum[i], self.count[i]
        out.scatter[...] = self.scatter
        return out

    def __add__(self, other: TaskStats) -> TaskStats:
        names = tuple(sorted(set(self.names) | set(other.names)))
        a, b = self.aligned(names), other.aligned(names)
        return TaskStats(
            names,
            a.queries + b.queries,
            a.x_sum + b.x_sum,
            a.scatter + b.scatter,
            a.score_sum + b.score_sum,
            a.cost_sum + b.cost_sum,
            a.count + b.count,
        )


def fit_tasks(
    stats: TaskStats, constant: ModelStats, shrinkage: float = DEFAULT_LDA_SHRINKAGE
) -> dict[str, np.ndarray] | None:
    """LDA over the task labels plus per-(task, model) means: the ``tasks`` component's arrays, or None
    when fewer than two tasks have queries."""
    present = stats.queries > 0
    if present.sum() < 2:
        return None
    n = float(stats.queries[present].sum())
    mu = stats.x_sum[present] / stats.queries[present, None]
    prior = stats.queries[present] / n
    # Within-class scatter from the sums: Σ x xᵀ − Σ_t n_t μ_t μ_tᵀ, shrunk toward a multiple of I.
    within = (stats.scatter - (mu.T * stats.queries[present]) @ mu) / n
    dim = within.shape[0]
    within = (1 - shrinkage) * within + shrinkage * (np.trace(within) / dim) * np.eye(dim)
    weights = np.linalg.solve(within, mu.T)  # (d, T)
    bias = -0.5 * (mu * weights.T).sum(1) + np.log(prior)
    model_acc, model_cost = constant.means()
    k = TASK_PRIOR_WEIGHT
    count = stats.count[present]
    accuracy = (stats.score_sum[present] + k * model_acc) / (count + k)
    cost = (stats.cost_sum[present] + k * model_cost) / (count + k)
    return {
        "weights": weights.astype(np.float32),
        "bias": bias.astype(np.float32),
        "accuracy": accuracy,
        "cost": cost,
    }


def task_lookup(stats: TaskStats, constant: ModelStats) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-task-means baseline: {task: (accuracy, cost)} per model, as the evaluation's baseline computes."""
    model_acc, model_cost = constant.means()
    out = {}
    for i, name in enumerate(stats.names):
        seen = stats.count[i] > 0
        count = np.maximum(stats.count[i], 1e-12)
        out[name] = (
            np.where(seen, stats.score_sum[i] / count, model_acc),
            np.where(seen, stats.cost_sum[i] / count, model_cost),
        )
    return out


def corrected(constant: np.ndarray, mean: np.ndarray, shrink: float, upper: float = np.inf) -> np.ndarray:
    """Ā + s · (Ē − Ā), kept in [0, upper] (accuracy is at most 1; cost has no upper bound)."""
    return np.asarray(np.clip(constant + shrink * (mean - constant), 0.0, upper))


@dataclass(frozen=True, slots=True)
class ShrinkErrors:
    """On validation cells, for each shrink in SHRINK_GRID: Σ squared error of the accuracy prediction, Σ
    of the squared per-cell gains over the constant router (for the gain's standard error), Σ squared
    error of the cost prediction and Σ of the squared per-cell gains of the cost line over it; Σ squared
    error of the cost line; the per-task baseline's Σ squared error (NaN without task labels); the count
    of cells. Sums only, so clients' parts add up."""

    by_shrink: np.ndarray
    gain_sq: np.ndarray
    cost_by_shrink: np.ndarray
    cost_gain_sq: np.ndarray
    cost_line: float
    per_task: float
    count: float

    @classmethod
    def zero(cls) -> ShrinkErrors:
        grid = len(SHRINK_GRID)
        return cls(np.zeros(grid), np.zeros(grid), np.zeros(grid), np.zeros(grid), 0.0, 0.0, 0.0)

    def __add__(self, other: ShrinkErrors) -> ShrinkErrors:
        return ShrinkErrors(
            self.by_shrink + other.by_shrink,
            self.gain_sq + other.gain_sq,
            self.cost_by_shrink + other.cost_by_shrink,
            self.cost_gain_sq + other.cost_gain_sq,
            self.cost_line + other.cost_line,
            self.per_task + other.per_task,
            self.count + other.count,
        )


def line_cost(line: tuple[np.ndarray, np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """The cost line's prediction (Q, M) for queries of these lengths (:func:`query_lengths`), ≥ 0."""
    intercept, slope = line
    return np.asarray(np.maximum(intercept + np.asarray(lengths, dtype=np.float64)[:, None] * slope, 0.0))


def shrink_errors(
    ensemble: tuple[np.ndarray, np.ndarray],
    constant: tuple[np.ndarray, np.ndarray],
    line: tuple[np.ndarray, np.ndarray],
    table: OutcomeTable,
    tasks: dict[str, tuple[np.ndarray, np.ndarray]] | None,
) -> ShrinkErrors:
    """``ensemble``: the components' mean (accuracy, cost) on ``table``'s queries, each (Q, M);
    ``constant``: the model averages (accuracy, cost), each (M,); ``line``: the cost line."""
    observed = table.observed
    truth, cost = np.nan_to_num(table.scores), np.nan_to_num(table.costs)
    base = ((constant[0] - truth) ** 2)[observed]
    errors = [((corrected(constant[0], ensemble[0], s, 1.0) - truth) ** 2)[observed] for s in SHRINK_GRID]
    cost_errors = [((corrected(constant[1], ensemble[1], s) - cost) ** 2)[observed] for s in SHRINK_GRID]
    lined = ((line_cost(line, query_lengths(table.queries)) - cost) ** 2)[observed]
    per_task = float("nan")
    if tasks:
        lookup = np.stack([tasks[t][0] if t in tasks else constant[0] for t in table.tasks]) if len(table) else truth
        per_task = float(np.where(observed, (lookup - truth) ** 2, 0.0).sum())
    return ShrinkErrors(
        np.array([float(e.sum()) for e in errors]),
        np.array([float(((base - e) ** 2).sum()) for e in errors]),
        np.array([float(e.sum()) for e in cost_errors]),
        np.array([float(((e - lined) ** 2).sum()) for e in cost_errors]),
        float(lined.sum()),
        per_task,
        float(observed.sum()),
    )


# A shrink must beat the constant router by this many standard errors (one-sided 1 %). 1.645 (5 %) let
# through a 1.95-standard-error gain on 59 validation cells of the reasoning world's log that did not
# hold on its test queries (benchmarks/router/RESULTS.md).
SIGNIFICANCE = 2.326


def choose_shrink(errors: ShrinkErrors) -> tuple[float, dict[str, Any]]:
    """The shrink with the lowest validation error among those whose gain over the constant router is
    significant (more than SIGNIFICANCE standard errors of the per-cell gains); 0 (the constant router)
    when none is. Returns it with the report the manifest keeps, whose ``cost_model`` says where the
    served router's costs come from: "line" where the cost line's validation error is lower than the
    shrunk components' at that shrink by the same significance, else "components"."""
    if errors.count == 0:
        return 0.0, {"validation_cells": 0.0, "shrink": 0.0, "cost_model": "components"}
    n = errors.count
    gain = errors.by_shrink[0] - errors.by_shrink
    stderr = np.sqrt(np.maximum(errors.gain_sq - gain**2 / n, 0.0))
    significant = gain > SIGNIFICANCE * stderr
    significant[0] = True
    mse = errors.by_shrink / n
    best = int(np.argmin(np.where(significant, mse, np.inf)))
    unrestricted = int(np.argmin(mse))
    cost_gain = errors.cost_by_shrink[best] - errors.cost_line
    cost_stderr = np.sqrt(max(errors.cost_gain_sq[best] - cost_gain**2 / n, 0.0))
    report = {
        "validation_cells": n,
        "shrink": SHRINK_GRID[best],
        "validation_mse": float(mse[best]),
        "validation_mse_constant": float(mse[0]),
        "validation_mse_by_shrink": {str(s): float(v) for s, v in zip(SHRINK_GRID, mse, strict=True)},
        "best_shrink_gain_in_standard_errors": float(gain[unrestricted] / max(stderr[unrestricted], 1e-12)),
        # Cost: the shrunk components' prediction, or the cost line where it is significantly better.
        "cost_model": "line" if cost_gain > SIGNIFICANCE * cost_stderr else "components",
        "validation_cost_mse": float(errors.cost_by_shrink[best] / n),
        "validation_cost_mse_line": float(errors.cost_line / n),
        # (finite for the manifest's JSON: a line that is exact where the components are off has no spread)
        "cost_line_gain_in_standard_errors": float(cost_gain / max(cost_stderr, 1e-12 * abs(cost_gain), 1e-300)),
    }
    if not np.isnan(errors.per_task):
        report["validation_mse_per_task"] = errors.per_task / n
    return SHRINK_GRID[best], report


def verdict(report: dict[str, Any]) -> str:
    """One plain sentence on whether the router is worth serving, from :func:`choose_shrink`'s report."""
    if not report.get("validation_cells"):
        return "no validation cells: nothing says whether this router beats routing by model averages"
    mse, constant = report["validation_mse"], report["validation_mse_constant"]
    if report["shrink"] == 0.0:
        text = (
            f"not worth serving: on {report['validation_cells']:.0f} validation cells no learned correction beats "
            f"the model averages (squared error {constant:.4f}) by a significant margin (best: "
            f"{report.get('best_shrink_gain_in_standard_errors', 0.0):.1f} standard errors); it routes exactly as "
            "the constant router"
        )
    else:
        text = (
            f"validation squared error {mse:.4f} against {constant:.4f} for model averages "
            f"({100 * (1 - mse / constant):.1f} % lower; shrink {report['shrink']})"
        )
    if report.get("cost_model") == "line":
        text += (
            f"; costs from a line in the query's length (validation squared error "
            f"{report['validation_cost_mse_line']:.3g} against {report['validation_cost_mse']:.3g})"
        )
    per_task = report.get("validation_mse_per_task")
    if per_task is not None:
        text += f"; per-task means (which need each query's task label) {per_task:.4f}"
    return text


def ensemble_arrays(
    constant: ModelStats,
    mlps: Sequence[dict[str, np.ndarray]],
    kmeans: Sequence[dict[str, np.ndarray]],
    tasks: dict[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """The artifact's arrays: ``constant/*`` (model averages and the cost line), ``mlp<i>/*``,
    ``kmeans<j>/*`` and ``tasks0/*``."""
    accuracy, cost = constant.means()
    intercept, slope = constant.cost_line()
    arrays = {
        "constant/accuracy": accuracy,
        "constant/cost": cost,
        "constant/count": constant.count,
        "constant/cost_intercept": intercept,
        "constant/cost_slope": slope,
    }
    for i, member in enumerate(mlps):
        arrays |= {f"mlp{i}/{k}": v for k, v in member.items()}
    for j, member in enumerate(kmeans):
        arrays |= {f"kmeans{j}/{k}": v for k, v in member.items()}
    if tasks is not None:
        arrays |= {f"tasks0/{k}": v for k, v in tasks.items()}
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}


@dataclass(frozen=True, slots=True)
class Sums:
    """What the ensemble's non-MLP parts are made of, as sums clients can add up: per-model sums (the
    constant router), per-(cluster, model) sums for every K-means member's centres, and the task sums."""

    constant: ModelStats
    cells: tuple[CellStats, ...]
    tasks: TaskStats

    @classmethod
    def collect(
        cls, x: np.ndarray, table: OutcomeTable, centres: Sequence[np.ndarray], min_task_queries: int = 1
    ) -> Sums:
        cells = tuple(CellStats.collect(x, table, c) for c in centres)
        return cls(ModelStats.collect(table), cells, TaskStats.collect(x, table, min_task_queries))

    def __add__(self, other: Sums) -> Sums:
        if len(self.cells) != len(other.cells):
            raise ValueError(f"{len(self.cells)} K-means members' sums cannot add to {len(other.cells)}")
        cells = tuple(a + b for a, b in zip(self.cells, other.cells, strict=True))
        return Sums(self.constant + other.constant, cells, self.tasks + other.tasks)


def build_ensemble(
    sums: Sums,
    mlps: Sequence[dict[str, np.ndarray]],
    centres: Sequence[np.ndarray],
    prior_weight: float,
    task_shrinkage: float,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]] | None]:
    """The artifact's arrays from the MLP members and the sums, and the per-task baseline's lookup (None
    without task labels)."""
    members = zip(centres, sums.cells, strict=True)
    kmeans = [KMeansRouterModel.from_stats(c, s, prior_weight).arrays() for c, s in members]
    tasks = fit_tasks(sums.tasks, sums.constant, task_shrinkage)
    lookup = task_lookup(sums.tasks, sums.constant) if tasks is not None else None
    return ensemble_arrays(sums.constant, mlps, kmeans, tasks), lookup


def lookup_arrays(lookup: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """The per-task baseline as (task names, accuracy (T, M)) for a message to clients."""
    names = sorted(lookup)
    return names, np.stack([lookup[n][0] for n in names]) if names else np.zeros((0, 0))
