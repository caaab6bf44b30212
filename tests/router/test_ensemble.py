"""The ensemble router's parts: sums that add up across clients, the task LDA, the shrink and its verdict."""

from __future__ import annotations

import numpy as np
import pytest

from thrifty.router.artifact import EnsemblePredictor, TaskPredictor
from thrifty.router.ensemble import (
    SHRINK_GRID,
    SHRINK_MAX,
    ModelStats,
    ShrinkErrors,
    Sums,
    TaskStats,
    build_ensemble,
    choose_shrink,
    corrected,
    ensemble_arrays,
    fit_tasks,
    query_lengths,
    shrink_errors,
    verdict,
)
from thrifty.router.kmeans import KMeansRouterModel
from thrifty.router.outcomes import OutcomeTable

MODELS = ("big", "small")


FLAT = (np.full(2, 1e-3), np.zeros(2))  # a cost line that says every query costs 1e-3 on both models


def costed(accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy with :func:`table`'s cost, 1e-3 everywhere: (accuracy, cost) as the ensemble predicts them."""
    return accuracy, np.full_like(accuracy, 1e-3)


def table(tasks: list[str], scores: list[tuple[float, float]], cost: float = 1e-3) -> OutcomeTable:
    s = np.array(scores, dtype=np.float64)
    return OutcomeTable(
        tuple(f"q{i}" for i in range(len(tasks))),
        MODELS,
        s,
        np.where(np.isnan(s), np.nan, cost),
        tuple(tasks),
        ("",) * len(tasks),
    )


def two_tasks(rng: np.random.Generator, n: int) -> tuple[np.ndarray, OutcomeTable]:
    """Maths queries near +e0, poems near −e0; on maths only the big model is right, on poems both are."""
    maths = rng.random(n) < 0.5
    x = rng.normal(scale=0.3, size=(n, 4))
    x[:, 0] += np.where(maths, 1.0, -1.0)
    model = rng.integers(0, 2, n)
    scores = [
        (float(m == 0 or not q), np.nan) if m == 0 else (np.nan, float(not q))
        for q, m in zip(maths, model, strict=True)
    ]
    return x, table(["maths" if q else "poems" for q in maths], scores)


def test_sums_from_two_clients_equal_the_sums_over_their_union() -> None:
    rng = np.random.default_rng(0)
    x, data = two_tasks(rng, 200)
    first, second = np.arange(120), np.arange(120, 200)
    whole = TaskStats.collect(x, data)
    parts = TaskStats.collect(x[first], data.subset(first)) + TaskStats.collect(x[second], data.subset(second))
    assert parts.names == whole.names == ("maths", "poems")
    for field in ("queries", "x_sum", "scatter", "score_sum", "cost_sum", "count"):
        np.testing.assert_allclose(getattr(parts, field), getattr(whole, field))
    models = ModelStats.collect(data.subset(first)) + ModelStats.collect(data.subset(second))
    np.testing.assert_allclose(models.means()[0], np.nanmean(data.scores, 0))
    # All of the ensemble's sums at once (the refit adds the validation cells' to the training cells').
    centres = [np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), np.zeros((1, 4))]
    halves = Sums.collect(x[first], data.subset(first), centres) + Sums.collect(x[second], data.subset(second), centres)
    union = Sums.collect(x, data, centres)
    np.testing.assert_allclose(halves.constant.score_sum, union.constant.score_sum)
    np.testing.assert_allclose(halves.tasks.scatter, union.tasks.scatter)
    for a, b in zip(halves.cells, union.cells, strict=True):
        np.testing.assert_allclose(a.count, b.count)
        np.testing.assert_allclose(a.score_sum, b.score_sum)
    assert union.cells[1].count.sum() == data.observed.sum()
    with pytest.raises(ValueError, match="K-means members"):
        _ = union + Sums.collect(x, data, centres[:1])


def test_a_task_too_small_to_hide_a_query_is_not_shared() -> None:
    x = np.eye(4)[:3]
    stats = TaskStats.collect(x, table(["a", "a", "b"], [(1, 0), (0, 1), (1, 1)]), min_queries=2)
    assert stats.names == ("a",) and stats.queries.tolist() == [2.0]
    np.testing.assert_allclose(stats.scatter, x[:2].T @ x[:2])  # the lone "b" query is in no sum


def test_the_task_lda_recovers_who_is_right_where() -> None:
    rng = np.random.default_rng(1)
    x, data = two_tasks(rng, 400)
    stats = TaskStats.collect(x, data)
    arrays = fit_tasks(stats, ModelStats.collect(data))
    assert arrays is not None
    accuracy, _ = TaskPredictor(arrays).predict(np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
    assert accuracy[0, 0] > 0.9 and accuracy[0, 1] < 0.1  # maths: only big
    assert accuracy[1, 0] > 0.9 and accuracy[1, 1] > 0.9  # poems: both
    assert (
        fit_tasks(TaskStats.collect(x, table([""] * len(data), data.scores.tolist())), ModelStats.collect(data)) is None
    )


def test_the_shrink_must_beat_the_constant_router_significantly() -> None:
    truth = table([""] * 4, [(1, np.nan), (0, np.nan), (np.nan, 1), (np.nan, 0)])
    constant = np.array([0.5, 0.5])
    perfect = np.array([[1.0, 0.5], [0.0, 0.5], [0.5, 1.0], [0.5, 0.0]])
    errors = shrink_errors(costed(perfect), costed(constant), FLAT, truth, None)
    assert errors.by_shrink[0] == pytest.approx(4 * 0.25) and errors.by_shrink[-1] == pytest.approx(0.0)
    shrink, report = choose_shrink(errors)
    assert shrink == 1.0 and report["validation_mse"] == 0.0 and "per_task" not in str(report)
    # The same gain on one cell and a loss of nearly as much on another: not significant, so s = 0.
    rest = len(SHRINK_GRID) - 1
    zeros = np.zeros(len(SHRINK_GRID))
    accuracy, gain_sq = np.array([1.0] + [0.9] * rest), np.array([0.0] + [0.2] * rest)
    noisy = ShrinkErrors(accuracy, gain_sq, zeros, zeros, 0.0, float("nan"), 2.0)
    shrink, report = choose_shrink(noisy)
    assert shrink == 0.0 and verdict(report).startswith("not worth serving")
    assert choose_shrink(ShrinkErrors.zero())[0] == 0.0
    assert "no validation cells" in verdict(choose_shrink(ShrinkErrors.zero())[1])


def test_an_attenuated_correction_is_scaled_up_and_predictions_stay_in_range() -> None:
    # Components that agree on the direction but each say only 0.6 of it: validation asks for s ≈ 1/0.6.
    rng = np.random.default_rng(3)
    truth_p = rng.uniform(0.2, 0.8, size=(400, 2))
    observed = rng.integers(0, 2, 400)
    outcomes = (rng.random((400, 2)) < truth_p).astype(float)
    cells = [(o[0], np.nan) if m == 0 else (np.nan, o[1]) for o, m in zip(outcomes, observed, strict=True)]
    constant = np.array([0.5, 0.5])
    attenuated = costed(constant + 0.6 * (truth_p - constant))
    errors = shrink_errors(attenuated, costed(constant), FLAT, table([""] * 400, cells), None)
    shrink, report = choose_shrink(errors)
    assert SHRINK_GRID[-1] == SHRINK_MAX and 1.3 <= shrink <= SHRINK_MAX
    assert report["validation_mse"] < report["validation_mse_by_shrink"]["1.0"]
    # Scaled up past the data, accuracy is clipped to [0, 1] and cost to ≥ 0.
    np.testing.assert_allclose(corrected(constant, np.array([[0.95, 0.02]]), 2.0, 1.0), [[1.0, 0.0]])
    np.testing.assert_allclose(corrected(np.ones(2), np.array([0.4, 2.0]), 2.0), [0.0, 3.0])


def test_a_shrink_of_zero_serves_exactly_the_constant_router() -> None:
    rng = np.random.default_rng(2)
    x, data = two_tasks(rng, 200)
    constant = ModelStats.collect(data)
    kmeans = {"centres": np.array([[1.0, 0, 0, 0]]), "accuracy": np.array([[0.1, 0.9]]), "cost": np.ones((1, 2))}
    arrays = ensemble_arrays(constant, [], [kmeans, kmeans], fit_tasks(TaskStats.collect(x, data), constant))
    settings = {"cost_mean": 0.0, "cost_std": 1.0}
    flat, _ = EnsemblePredictor(arrays, settings | {"shrink": 0.0}).predict(x[:3])
    np.testing.assert_allclose(flat, np.tile(constant.means()[0], (3, 1)), rtol=1e-6)
    full = EnsemblePredictor(arrays, settings | {"shrink": 1.0})
    half = EnsemblePredictor(arrays, settings | {"shrink": 0.5})
    mean, _ = full.components_mean(x[:3])
    np.testing.assert_allclose(half.predict(x[:3])[0], (flat + mean) / 2, rtol=1e-6)
    assert len(full.components) == 2 and SHRINK_GRID[0] == 0.0


def test_a_model_without_training_cells_keeps_the_model_averages() -> None:
    # One organisation's log that never evaluated "never": no component knows anything about it. It gets
    # accuracy 0 at the mean cost, so it is never chosen (K-means once predicted it free: 0 cost).
    rng = np.random.default_rng(4)
    x, two = two_tasks(rng, 200)
    scores = np.concatenate([two.scores, np.full((len(two), 1), np.nan)], axis=1)
    data = OutcomeTable(
        two.queries, (*MODELS, "never"), scores, np.where(np.isnan(scores), np.nan, 1e-3), two.tasks, two.clients
    )
    centres = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    sums = Sums.collect(x, data, [centres])
    model = KMeansRouterModel.from_stats(centres, sums.cells[0])
    np.testing.assert_allclose(model.accuracy[:, 2], 0.0)
    np.testing.assert_allclose(model.cost[:, 2], 1e-3)
    arrays, _ = build_ensemble(sums, [], [centres], 2.0, 0.1)
    constant_accuracy, constant_cost = sums.constant.means()
    assert constant_accuracy[2] == 0.0 and constant_cost[2] == pytest.approx(1e-3)
    for shrink in (1.0, SHRINK_MAX):
        predictor = EnsemblePredictor(arrays, {"shrink": shrink, "cost_mean": 0.0, "cost_std": 1.0})
        accuracy, cost = predictor.predict(x[:20])
        np.testing.assert_allclose(accuracy[:, 2], constant_accuracy[2])
        np.testing.assert_allclose(cost[:, 2], constant_cost[2])
        assert accuracy[:, 1].std() > 0.1  # the models it has seen still get their corrections
        for lam in (0.0, 1e3, 1e9):  # never the best choice, whatever accuracy is worth against cost
            assert not ((accuracy - lam * cost).argmax(1) == 2).any()


def priced_by_length(lengths: list[int], models: list[int], intercept: np.ndarray, slope: np.ndarray) -> OutcomeTable:
    """One observed cell per query (model ``models[i]``), costing intercept + slope · thousands of characters."""
    n = len(lengths)
    scores = np.full((n, 2), np.nan)
    scores[np.arange(n), models] = 1.0
    cost = intercept + np.array(lengths, dtype=np.float64)[:, None] / 1000 * slope
    queries = tuple(f"q{i} ".ljust(length, "x") for i, length in enumerate(lengths))
    return OutcomeTable(queries, MODELS, scores, np.where(np.isnan(scores), np.nan, cost), ("",) * n, ("",) * n)


def test_the_cost_line_is_least_squares_from_sums_that_add_up() -> None:
    rng = np.random.default_rng(5)
    lengths, models = rng.integers(20, 3000, 400).tolist(), rng.integers(0, 2, 400).tolist()
    intercept, slope = np.array([1e-4, 2e-5]), np.array([3e-4, 5e-5])  # USD, USD per thousand characters
    data = priced_by_length(lengths, models, intercept, slope)
    fitted = ModelStats.collect(data).cost_line()
    np.testing.assert_allclose(fitted[0], intercept, rtol=1e-6)
    np.testing.assert_allclose(fitted[1], slope, rtol=1e-6)
    np.testing.assert_allclose(query_lengths(data.queries) * 1000, lengths)
    # Two organisations' sums give their union's line.
    first, second = (priced_by_length(lengths[a:b], models[a:b], intercept, slope) for a, b in ((0, 150), (150, 400)))
    joined = (ModelStats.collect(first) + ModelStats.collect(second)).cost_line()
    np.testing.assert_allclose(joined, fitted, rtol=1e-9)
    # Too few cells, or no spread in length: flat at the model's mean cost.
    few = ModelStats.collect(priced_by_length([100, 2000, 50, 900], [0, 0, 1, 1], intercept, slope))
    np.testing.assert_allclose(few.cost_line()[1], 0.0)
    np.testing.assert_allclose(few.cost_line()[0], few.means()[1])
    same = ModelStats.collect(priced_by_length([500] * 10, [0, 1] * 5, intercept, slope))
    np.testing.assert_allclose(same.cost_line()[1], 0.0)
    np.testing.assert_allclose(same.cost_line()[0], intercept + 0.5 * slope)


def test_costs_come_from_the_line_only_where_it_is_significantly_better() -> None:
    rng = np.random.default_rng(6)
    lengths, models = rng.integers(20, 3000, 300).tolist(), rng.integers(0, 2, 300).tolist()
    intercept, slope = np.array([1e-4, 2e-5]), np.array([3e-4, 5e-5])
    priced = priced_by_length(lengths, models, intercept, slope)
    line = ModelStats.collect(priced).cost_line()
    accuracy = np.full((300, 2), 0.5)
    average = np.nanmean(priced.costs, axis=0)
    # Costs that grow with the prompt, components that only know each model's average: the line.
    errors = shrink_errors((accuracy, np.tile(average, (300, 1))), (accuracy[0], average), line, priced, None)
    _, report = choose_shrink(errors)
    assert report["cost_model"] == "line" and report["validation_cost_mse_line"] < 1e-20
    assert "costs from a line in the query's length" in verdict(report)
    # Costs that do not depend on length: with components that know them, and with components that know
    # only the averages. The line, fitted on these very cells, is a little better than the averages here,
    # but not significantly: the components keep the cost.
    noisy = np.where(priced.observed, np.array([3e-4, 6e-5]) * rng.uniform(0.5, 1.5, size=(300, 1)), np.nan)
    other = OutcomeTable(priced.queries, MODELS, priced.scores, noisy, priced.tasks, priced.clients)
    flat_line = ModelStats.collect(other).cost_line()
    average = np.nanmean(noisy, axis=0)
    knowing = np.where(priced.observed, np.nan_to_num(noisy), average) * rng.uniform(0.95, 1.05, size=(300, 2))
    for components in (knowing, np.tile(average, (300, 1))):
        errors = shrink_errors((accuracy, components), (accuracy[0], average), flat_line, other, None)
        _, report = choose_shrink(errors)
        assert report["cost_model"] == "components" and "length" not in verdict(report)
    assert report["validation_cost_mse_line"] < report["validation_cost_mse"]


def test_an_ensemble_costed_by_its_line_needs_each_querys_length() -> None:
    rng = np.random.default_rng(7)
    x, data = two_tasks(rng, 200)
    lengths = rng.integers(20, 3000, len(data)).tolist()
    priced = priced_by_length(lengths, np.argmax(data.observed, axis=1).tolist(), np.array([1e-4, 2e-5]), np.ones(2))
    data = OutcomeTable(priced.queries, MODELS, data.scores, priced.costs, data.tasks, data.clients)
    sums = Sums.collect(x, data, [np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])])
    arrays, _ = build_ensemble(sums, [], [np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])], 2.0, 0.1)
    settings = {"shrink": 1.0, "cost_mean": 0.0, "cost_std": 1.0}
    by_components = EnsemblePredictor(arrays, settings)
    by_line = EnsemblePredictor(arrays, settings | {"cost_model": "line"})
    with pytest.raises(ValueError, match="needs each query's length"):
        by_line.predict(x[:3])
    accuracy, cost = by_line.predict(x[:3], np.array([0.1, 1.0, 2.0]))
    np.testing.assert_allclose(accuracy, by_components.predict(x[:3])[0])
    np.testing.assert_allclose(cost, np.array([1e-4, 2e-5]) + np.array([[0.1], [1.0], [2.0]]), rtol=1e-5)
    _, shrunk = EnsemblePredictor(arrays, settings | {"cost_model": "line", "shrink": 0.0}).predict(x[:1], np.ones(1))
    np.testing.assert_allclose(shrunk, [np.array([1e-4, 2e-5]) + 1.0], rtol=1e-5)  # the constant router's too
