"""Accuracy–cost curves, normalised AUC and the baselines, on tables small enough to check by hand."""

from __future__ import annotations

import numpy as np

from thrifty.router import evaluation as ev
from thrifty.router.outcomes import OutcomeTable


def _truth() -> OutcomeTable:
    # model 0 is cheap and right on the first two queries; model 1 is dear and right on all four
    scores = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    costs = np.array([[1.0, 3.0]] * 4)
    return OutcomeTable(("a", "b", "c", "d"), ("cheap", "dear"), scores, costs, ("x", "x", "y", "y"), ("",) * 4)


def test_the_oracle_spends_only_where_it_pays() -> None:
    truth = _truth()
    curve = ev.sweep("oracle", truth.scores, truth.costs, truth, ev.lambda_grid(truth))
    # small λ: right everywhere at cost (1+1+3+3)/4 = 2; large λ: cheap model everywhere, half right
    assert (curve.accuracies[0], curve.costs[0]) == (1.0, 2.0)
    assert (curve.accuracies[-1], curve.costs[-1]) == (0.5, 1.0)
    assert np.all(np.diff(curve.costs) <= 0)


def test_normalised_auc_is_mean_accuracy_over_the_cost_range() -> None:
    truth = _truth()
    low, high = ev.cost_range(truth)
    assert (low, high) == (1.0, 3.0)
    oracle = ev.sweep("oracle", truth.scores, truth.costs, truth, ev.lambda_grid(truth))
    # from (1, 0.5) linearly to (2, 1.0), then flat at 1.0 until 3: area 0.75 + 1.0 over a width of 2
    assert np.isclose(ev.normalized_auc(oracle, low, high), 0.875)
    flat = ev.Curve.point("p", 2.0, 0.6)
    assert np.isclose(ev.normalized_auc(flat, low, high), 0.6)


def test_operating_points_at_the_same_cost_count_with_their_best_accuracy() -> None:
    # Two models with the same price: a router that sends everything to the accurate one at small λ and to
    # the inaccurate one at large λ has two operating points at one cost. Whichever order they come in,
    # the curve holds the better one there (a user picks that λ), flat to the right of it.
    for accuracies in ([0.9, 0.2], [0.2, 0.9]):
        curve = ev.Curve("tied", np.array([1.0, 2.0]), np.array([1.0, 1.0]), np.array(accuracies))
        assert np.isclose(ev.normalized_auc(curve, 0.5, 3.0), 0.9)
    # Points at different costs are untouched: linear between them.
    curve = ev.Curve("c", np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 1.0]), np.array([0.8, 0.4, 0.2]))
    assert np.isclose(ev.normalized_auc(curve, 1.0, 3.0), (0.4 + 0.8) / 2)


def test_accuracy_at_a_cost_uses_only_affordable_operating_points() -> None:
    curve = ev.Curve("c", np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]), np.array([0.9, 0.8, 0.5]))
    assert ev.accuracy_at_cost(curve, 2.0) == 0.8
    assert ev.accuracy_at_cost(curve, 10.0) == 0.9
    assert np.isnan(ev.accuracy_at_cost(curve, 0.5))


def test_feature_free_baselines_use_training_observations_only() -> None:
    truth = _truth()
    train = truth.masked(np.array([[True, False], [False, True], [True, False], [False, True]]))
    acc, cost = ev.model_means(train)
    assert acc.tolist() == [0.5, 1.0] and cost.tolist() == [1.0, 3.0]
    task_acc, _ = ev.task_predictions(train, ["x", "y", "z"])
    assert task_acc.tolist() == [[1.0, 1.0], [0.0, 1.0], [0.5, 1.0]]  # an unseen task falls back
    names = [c.name for c in ev.point_baselines(train, truth, seed=0)]
    assert names == ["random", "always-cheapest", "always-best"]
    best = ev.point_baselines(train, truth, seed=0)[2]
    assert (best.costs[0], best.accuracies[0]) == (3.0, 1.0)


def test_pareto_front_and_the_middle_cost_point() -> None:
    truth = _truth()
    assert ev.pareto_models(truth) == [0, 1]
    assert ev.middle_cost_point(truth) == ("dear", 3.0)
