"""MLP router: the loss sees only observed cells, training learns who is right where, new heads alone."""

from __future__ import annotations

import numpy as np
import torch

from thrifty.router import mlp
from thrifty.router.outcomes import OutcomeTable


def _data(rows: int = 400, seed: int = 0) -> tuple[np.ndarray, OutcomeTable]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    right0 = (x[:, 0] > 0).astype(float)  # model 0 is right when the first feature is positive
    scores = np.stack([right0, 1 - right0, np.full(rows, 0.5)], axis=1)
    costs = np.tile([1e-4, 1e-4, 1e-3], (rows, 1)) * np.exp(rng.normal(0, 0.1, (rows, 3)))
    table = OutcomeTable(
        tuple(f"q{i}" for i in range(rows)), ("a", "b", "c"), scores, costs, ("",) * rows, ("",) * rows
    )
    return x, table


def test_cost_scale_round_trips_and_matches_shared_moments() -> None:
    costs = np.array([[1e-4, np.nan], [1e-3, 2e-4]])
    scale = mlp.CostScale.fit(costs)
    assert np.allclose(scale.cost(scale.z(np.array([3e-4]))), 3e-4)
    logs = np.log(np.array([1e-4, 1e-3, 2e-4]) + 1e-12)
    shared = mlp.CostScale.from_moments(3, logs.sum(), (logs**2).sum())
    assert np.isclose(shared.mean, scale.mean) and np.isclose(shared.std, scale.std)


def test_unobserved_cells_do_not_change_the_loss() -> None:
    x, table = _data(rows=32)
    keep = np.zeros(table.scores.shape, dtype=bool)
    keep[np.arange(32), np.arange(32) % 3] = True
    scale = mlp.CostScale.fit(table.masked(keep).costs)
    net = mlp.RouterNet(8, 3, width=16)
    # the same observed cells, with every hidden cell changed before masking
    changed = OutcomeTable(
        table.queries,
        table.models,
        np.where(keep, table.scores, 1 - table.scores),
        np.where(keep, table.costs, table.costs * 7),
        table.tasks,
        table.clients,
    )
    losses = [
        mlp.evaluate_loss(net, mlp.Targets.build(x, t.masked(keep), scale), mlp.MlpPlan()) for t in (table, changed)
    ]
    assert losses[0] == losses[1]
    everything = mlp.evaluate_loss(net, mlp.Targets.build(x, table, scale), mlp.MlpPlan())
    assert everything != losses[0]


def test_training_on_sparse_cells_learns_which_model_is_right_where() -> None:
    x, table = _data()
    rng = np.random.default_rng(1)
    keep = np.zeros(table.scores.shape, dtype=bool)
    keep[np.arange(len(x)), rng.integers(0, 3, len(x))] = True  # one observed model per query
    sparse = table.masked(keep)
    scale = mlp.CostScale.fit(sparse.costs)
    torch.manual_seed(0)
    net = mlp.RouterNet(8, 3, width=64)
    mlp.train_local(net, mlp.Targets.build(x, sparse, scale), mlp.MlpPlan(learning_rate=3e-3), epochs=40, seed=0)
    test_x, test = _data(rows=200, seed=5)
    acc, cost = mlp.predict(net, test_x, scale)
    picked = acc[:, :2].argmax(1)
    assert (test.scores[np.arange(200), picked] == 1).mean() > 0.9
    assert np.allclose(np.log(cost.mean(0)), np.log([1e-4, 1e-4, 1e-3]), atol=0.3)


def test_a_new_head_trains_alone() -> None:
    x, table = _data()
    scale = mlp.CostScale.fit(table.costs)
    net = mlp.RouterNet(8, 2, width=32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    new = net.add_head()
    only_new = table.masked(np.tile([False, False, True], (len(x), 1)))
    mlp.train_local(net, mlp.Targets.build(x, only_new, scale), mlp.MlpPlan(), epochs=5, seed=0, heads_only=[new])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    acc, _ = mlp.predict(net, x, scale)
    assert abs(acc[:, 2].mean() - 0.5) < 0.05
    arrays = mlp.state_arrays(net)
    copy = mlp.RouterNet(8, 3, width=32)
    mlp.load_arrays(copy, arrays)
    assert np.allclose(mlp.predict(copy, x, scale)[0], acc)
