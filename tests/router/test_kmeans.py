"""K-means router: weighted clustering, count-weighted cell statistics, federated = central when it should."""

from __future__ import annotations

import numpy as np

from thrifty.router.kmeans import CellStats, KMeansRouterModel, assign, fit_central, kmeans
from thrifty.router.outcomes import OutcomeTable


def _blobs(seed: int = 0) -> tuple[np.ndarray, OutcomeTable]:
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    labels = np.repeat(np.arange(3), 50)
    x = centres[labels] + rng.normal(0, 0.3, (150, 2))
    # model 0 is right only in blob 0, model 1 everywhere but dearer
    scores = np.stack([(labels == 0).astype(float), np.ones(150)], axis=1)
    costs = np.tile([1.0, 4.0], (150, 1))
    table = OutcomeTable(tuple(f"q{i}" for i in range(150)), ("m0", "m1"), scores, costs, ("",) * 150, ("",) * 150)
    return x, table


def test_kmeans_finds_separated_blobs_and_respects_weights() -> None:
    x, _ = _blobs()
    centres, sizes = kmeans(x, 3, seed=0)
    assert sorted(sizes.tolist()) == [50, 50, 50]
    labels = assign(x, centres)
    assert len({tuple(labels[i * 50 : (i + 1) * 50]) for i in range(3)}) == 3
    # one heavy point pulls a single centre onto itself
    points = np.array([[0.0], [1.0], [10.0]])
    centre, _ = kmeans(points, 1, seed=0, weights=np.array([1.0, 1.0, 98.0]))
    assert np.isclose(centre[0, 0], 9.81)


def test_cell_statistics_add_up_and_route_by_cluster() -> None:
    x, table = _blobs()
    model = fit_central(x, table, 3, seed=0, prior_weight=0.0)
    acc, cost = model.predict(x)
    assert np.allclose(acc[:50, 0], 1.0) and np.allclose(acc[50:, 0], 0.0) and np.allclose(acc[:, 1], 1.0)
    assert np.allclose(cost, [1.0, 4.0])
    centres = model.centres
    halves = CellStats.collect(x[:75], table.subset(range(75)), centres) + CellStats.collect(
        x[75:], table.subset(range(75, 150)), centres
    )
    whole = CellStats.collect(x, table, centres)
    assert np.allclose(halves.count, whole.count) and np.allclose(halves.score_sum, whole.score_sum)


def test_unobserved_cells_fall_back_to_the_model_mean() -> None:
    x, table = _blobs()
    sparse = table.masked(np.stack([np.arange(150) < 50, np.ones(150, dtype=bool)], axis=1))
    centres, _ = kmeans(x, 3, seed=0)
    model = KMeansRouterModel.from_stats(centres, CellStats.collect(x, sparse, centres), prior_weight=2.0)
    acc, _ = model.predict(x[50:])
    assert np.allclose(acc[:, 0], 1.0)  # only blob 0 was observed for m0, where it was always right
    assert (model.count[:, 0] > 0).sum() == 1


def test_k_and_seed_are_chosen_on_validation_cells() -> None:
    from thrifty.router.training import Pooled, fit_kmeans_selected

    x, table = _blobs(0)
    x_val, validation = _blobs(1)
    data = Pooled(x, table, x_val, validation)
    model, metrics = fit_kmeans_selected(data, [1, 3], seed=0, prior_weight=0.0, restarts=3)
    # One cluster cannot tell blob 0 from the rest; three can, and every restart finds them.
    assert metrics["selected_clusters"] == 3 and metrics["selected_restart"] in range(3)
    assert metrics["validation_mse"] == min(metrics["validation_mse_by_clusters"].values()) < 1e-6
    assert metrics["validation_mse_by_clusters"][1] > 0.1  # predicts 1/3 for m0 everywhere
    accuracy, _ = model.predict(x_val)
    assert np.allclose(accuracy[:50, 0], 1.0) and np.allclose(accuracy[50:, 0], 0.0)
