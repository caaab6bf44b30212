"""A model added after training: only its head (MLP) is trained; routing among the others is unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.router.fixtures import MATH, POEM, tiny_static_embedder
from thrifty.router.artifact import RouterArtifact, artifact_embedder, load_artifact
from thrifty.router.eval_log import EvalRecord
from thrifty.router.extend import add_model
from thrifty.router.mlp import RouterNet, state_arrays


def test_a_new_mlp_head_learns_and_leaves_the_others_alone(tmp_path: Path) -> None:
    embedder = tiny_static_embedder(tmp_path / "emb")
    torch.manual_seed(0)
    net = RouterNet(embedder.dim, 2, width=32)
    RouterArtifact(
        "mlp",
        ("a", "b"),
        embedder.identity,
        state_arrays(net),
        settings={"cost_mean": -9.0, "cost_std": 1.0, "width": 32, "dropout": 0.1},
    ).save(tmp_path / "r", tmp_path / "emb")
    # The new model is right on maths, wrong on poems.
    calibration = [
        EvalRecord(f"{text} {i}", "new", score, 2e-4) for i in range(40) for text, score in ((MATH, 1.0), (POEM, 0.0))
    ]
    add_model(tmp_path / "r", calibration, "new", tmp_path / "r2")
    before, after = load_artifact(tmp_path / "r"), load_artifact(tmp_path / "r2")
    assert after.models == ("a", "b", "new")
    x = artifact_embedder(tmp_path / "r2", after).encode([MATH, POEM])
    old_acc, old_cost = before.predictor().predict(x)
    new_acc, new_cost = after.predictor().predict(x)
    np.testing.assert_allclose(new_acc[:, :2], old_acc, rtol=1e-5)
    np.testing.assert_allclose(new_cost[:, :2], old_cost, rtol=1e-5)
    assert new_acc[0, 2] > 0.7 > 0.3 > new_acc[1, 2]
    assert new_cost[0, 2] == pytest.approx(2e-4, rel=0.5)
    with pytest.raises(ValueError, match="already knows"):
        add_model(tmp_path / "r2", calibration, "new", tmp_path / "r3")
    with pytest.raises(ValueError, match="no record of 'other'"):
        add_model(tmp_path / "r", calibration, "other", tmp_path / "r3")
    assert not (tmp_path / "r3").exists()
