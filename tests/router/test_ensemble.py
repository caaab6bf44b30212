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
    shrink_errors,
    verdict,
)
from thrifty.router.kmeans import KMeansRouterModel
from thrifty.router.outcomes import OutcomeTable

MODELS = ("big", "small")


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
    errors = shrink_errors(perfect, constant, truth, None)
    assert errors.by_shrink[0] == pytest.approx(4 * 0.25) and errors.by_shrink[-1] == pytest.approx(0.0)
    shrink, report = choose_shrink(errors)
    assert shrink == 1.0 and report["validation_mse"] == 0.0 and "per_task" not in str(report)
    # The same gain on one cell and a loss of nearly as much on another: not significant, so s = 0.
    rest = len(SHRINK_GRID) - 1
    noisy = ShrinkErrors(np.array([1.0] + [0.9] * rest), np.array([0.0] + [0.2] * rest), float("nan"), 2.0)
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
    errors = shrink_errors(constant + 0.6 * (truth_p - constant), constant, table([""] * 400, cells), None)
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
