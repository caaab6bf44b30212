"""Router artifacts: NumPy prediction equals the trained network's, hashes guard the files, saving is atomic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.router.fixtures import MATH, POEM, tiny_static_embedder, two_topic_artifact
from thrifty.router.artifact import (
    ArtifactError,
    EnsemblePredictor,
    RouterArtifact,
    RouterManifest,
    artifact_embedder,
    load_artifact,
)
from thrifty.router.embedding import EmbedderMismatch
from thrifty.router.mlp import CostScale, RouterNet, predict, state_arrays


def test_numpy_mlp_prediction_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = RouterNet(dim=24, models=3, width=64).eval()
    scale = CostScale(mean=-9.0, std=1.5)
    x = np.random.default_rng(0).normal(size=(5, 24)).astype(np.float32)
    expected_acc, expected_cost = predict(net, x, scale)
    artifact = RouterArtifact(
        "mlp",
        ("a", "b", "c"),
        {"kind": "minilm", "dim": 24, "sha256": "0"},
        state_arrays(net),
        settings={"cost_mean": scale.mean, "cost_std": scale.std},
    )
    artifact.save(tmp_path / "r")
    acc, cost = load_artifact(tmp_path / "r").predictor().predict(x)
    np.testing.assert_allclose(acc, expected_acc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cost, expected_cost, rtol=1e-4)


def test_ensemble_mlp_members_predict_the_mean_of_their_networks() -> None:
    """The ensemble runs its networks as one wide network; the result is still each network's forward
    pass, averaged (accuracy and cost alike)."""
    scale = CostScale(mean=-9.0, std=1.5)
    x = np.random.default_rng(1).normal(size=(4, 24)).astype(np.float32)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(RouterNet(dim=24, models=3, width=64).eval())
    expected = [predict(net, x, scale) for net in nets]
    arrays = {f"mlp{i}/{k}": v for i, net in enumerate(nets) for k, v in state_arrays(net).items()}
    arrays |= {"constant/accuracy": np.full(3, 0.5), "constant/cost": np.full(3, 1e-4)}
    predictor = EnsemblePredictor(arrays, {"shrink": 1.0, "cost_mean": scale.mean, "cost_std": scale.std})
    acc, cost = predictor.predict(x)
    np.testing.assert_allclose(acc, np.mean([a for a, _ in expected], axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cost, np.mean([c for _, c in expected], axis=0), rtol=1e-4)
    # An ensemble whose costs come from its cost line, without the line's arrays; an unknown cost model.
    with pytest.raises(ArtifactError, match="lacks 'constant/cost_intercept'"):
        EnsemblePredictor(arrays, {"shrink": 1.0, "cost_mean": 0.0, "cost_std": 1.0, "cost_model": "line"})
    manifest = {
        "kind": "router",
        "version": 1,
        "files": {"weights.safetensors": "0" * 64},
        "family": "ensemble",
        "models": ["a", "b", "c"],
        "embedder": {"kind": "static", "dim": 24},
        "settings": {"shrink": 1.0, "cost_mean": 0.0, "cost_std": 1.0, "cost_model": "guess"},
    }
    with pytest.raises(ValueError, match="cost_model is one of components, line"):
        RouterManifest.model_validate(manifest)
    # Members that differ in shape are a broken artifact, not a crash.
    torch.manual_seed(9)
    arrays |= {f"mlp3/{k}": v for k, v in state_arrays(RouterNet(dim=24, models=3, width=32)).items()}
    with pytest.raises(ArtifactError, match="do not share one shape"):
        EnsemblePredictor(arrays, {"shrink": 1.0, "cost_mean": scale.mean, "cost_std": scale.std})


def test_kmeans_artifact_round_trip_with_its_embedder(tmp_path: Path) -> None:
    embedder = tiny_static_embedder(tmp_path / "emb")
    two_topic_artifact(tmp_path / "r", embedder, tmp_path / "emb")
    loaded = load_artifact(tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["kind"] == "thrifty.router" and manifest["models"] == ["big", "small"]
    # The embedder is referenced (identity, hash and folder), not copied: 17 MB saved per artifact.
    assert not (tmp_path / "r" / "embedder").exists()
    assert manifest["embedder"]["dir"] == str((tmp_path / "emb").resolve())
    assert manifest["embedder"]["sha256"] == embedder.identity["sha256"]
    found = artifact_embedder(tmp_path / "r", loaded)
    accuracy, _ = loaded.predictor().predict(found.encode([MATH, POEM]))
    np.testing.assert_allclose(accuracy, [[0.9, 0.2], [0.85, 0.8]], rtol=1e-6)


def test_a_referenced_embedder_is_found_where_the_gateway_says_and_checked(tmp_path: Path) -> None:
    embedder = tiny_static_embedder(tmp_path / "emb")
    two_topic_artifact(tmp_path / "r", embedder, tmp_path / "emb")
    shutil.move(tmp_path / "emb", tmp_path / "moved")
    with pytest.raises(ArtifactError, match="neither inside the artifact nor at .*embedder_dir"):
        artifact_embedder(tmp_path / "r", load_artifact(tmp_path / "r"))
    assert artifact_embedder(tmp_path / "r", load_artifact(tmp_path / "r"), tmp_path / "moved").dim == embedder.dim
    tiny_static_embedder(tmp_path / "other", seed=1)  # same shape, other weights: refused
    with pytest.raises(EmbedderMismatch, match="trained with embedder"):
        artifact_embedder(tmp_path / "r", load_artifact(tmp_path / "r"), tmp_path / "other")


def test_copy_embedder_makes_an_artifact_that_stands_alone(tmp_path: Path) -> None:
    embedder = tiny_static_embedder(tmp_path / "emb")
    artifact = two_topic_artifact(tmp_path / "r", embedder, tmp_path / "emb")
    artifact.save(tmp_path / "alone", tmp_path / "emb", copy_embedder=True)
    manifest = json.loads((tmp_path / "alone" / "manifest.json").read_text())
    assert "embedder/model.safetensors" in manifest["files"] and "dir" not in manifest["embedder"]
    shutil.rmtree(tmp_path / "emb")
    travelled = artifact_embedder(tmp_path / "alone", load_artifact(tmp_path / "alone"))
    assert travelled.encode([MATH]).shape == (1, embedder.dim)


def test_tampered_or_incomplete_artifacts_are_refused(tmp_path: Path) -> None:
    embedder = tiny_static_embedder(tmp_path / "emb")
    two_topic_artifact(tmp_path / "r", embedder, tmp_path / "emb")
    with pytest.raises(FileExistsError):
        two_topic_artifact(tmp_path / "r", embedder, tmp_path / "emb")
    weights = tmp_path / "r" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="does not match its hash"):
        load_artifact(tmp_path / "r")
    (tmp_path / "r" / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(tmp_path / "r")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(tmp_path / "nowhere")


def test_an_artifact_with_another_embedder_is_an_error(tmp_path: Path) -> None:
    embedder = tiny_static_embedder(tmp_path / "emb", seed=0)
    artifact = two_topic_artifact(tmp_path / "r", embedder, tmp_path / "emb")
    other = tiny_static_embedder(tmp_path / "other", seed=1)
    with pytest.raises(EmbedderMismatch, match="trained with embedder"):
        other.check(load_artifact(tmp_path / "r").embedder)
    # Swapping the embedder inside a self-contained artifact is caught by the hashes before anything is used.
    artifact.save(tmp_path / "alone", tmp_path / "emb", copy_embedder=True)
    (tmp_path / "alone" / "embedder" / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "alone")


def test_a_failed_save_leaves_no_artifact(tmp_path: Path) -> None:
    artifact = RouterArtifact(
        "kmeans", ("a",), {"kind": "static", "dim": 2, "sha256": "0"}, {"centres": np.zeros((1, 2))}
    )
    with pytest.raises(ValueError, match="saved with that embedder"):
        artifact.save(tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_an_int8_minilm_artifact_serves_with_the_int8_embedder(tmp_path: Path) -> None:
    from thrifty.router.embedding import MiniLmEmbedder, MiniLmInt8Embedder

    int8 = MiniLmInt8Embedder()
    centres = np.zeros((1, 384), dtype=np.float32)
    arrays = {"centres": centres, "accuracy": np.ones((1, 1)), "cost": np.ones((1, 1)), "count": np.ones((1, 1))}
    RouterArtifact("kmeans", ("a",), int8.identity, arrays, {"clusters": 1}).save(tmp_path / "r")
    assert isinstance(artifact_embedder(tmp_path / "r", load_artifact(tmp_path / "r")), MiniLmInt8Embedder)
    RouterArtifact("kmeans", ("a",), MiniLmEmbedder().identity, arrays, {"clusters": 1}).save(tmp_path / "full")
    assert type(artifact_embedder(tmp_path / "full", load_artifact(tmp_path / "full"))) is MiniLmEmbedder
