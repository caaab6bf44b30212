"""Federated router training on Flower's Simulation Engine: both families learn who is right where."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.federated.synthetic import MATH_PROBE, POEM_PROBE, write_log
from tests.router.fixtures import tiny_static_embedder
from thrifty.router import ModelCandidate, RoutingRequest
from thrifty.router.artifact import load_artifact
from thrifty.router.eval_log import read_eval_log
from thrifty.router.federated.plan import FederatedPlan
from thrifty.router.federated.simulation import SimulationFailed, simulate
from thrifty.router.learned import LearnedRouter
from thrifty.router.training import TrainRequest, train_router

CANDIDATES = [ModelCandidate("big", 10, 30, False, 4096), ModelCandidate("small", 0.1, 0.3, False, 4096)]
SMALL_MLP = {"rounds": 6, "local_epochs": 3, "width": 64, "learning_rate": 3e-3, "clusters": "2,4", "mlp_members": 2}


async def routes(artifact: Path, text: str, lam: float) -> str:
    router = LearnedRouter(str(artifact), presets={})
    request = RoutingRequest(
        "chat", "auto", {"messages": [{"role": "user", "content": text}]}, {"x-thrifty-lambda": str(lam)}
    )
    return (await router.route(request, CANDIDATES)).model


@pytest.mark.parametrize("family", ["ensemble", "mlp", "kmeans"])
async def test_federated_training_learns_who_is_right_where(tmp_path: Path, family: str) -> None:
    tiny_static_embedder(tmp_path / "emb")
    log = write_log(tmp_path / "eval.jsonl")
    request = TrainRequest(
        data=[log],
        out=tmp_path / "router",
        family=family,
        mode="federated",
        embedder="static",
        embedder_dir=tmp_path / "emb",
        settings=SMALL_MLP,
    )
    report = train_router(request)
    out = report.artifact
    assert report.mode == "federated" and report.organisations == 3
    assert not (tmp_path / "router.work").exists()  # the organisations' folders are cleaned up
    # A run repeats exactly: clients' replies are summed in a fixed order and each client's batches are
    # seeded by its logs, not by node ids or arrival order, which change from run to run.
    again = train_router(replace(request, out=tmp_path / "again")).artifact
    assert (out / "weights.safetensors").read_bytes() == (again / "weights.safetensors").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["federated"] is True and manifest["inputs"]["clients"] == 3
    assert len(manifest["inputs"]["log_digests"]) == 3 and manifest["models"] == ["big", "small"]
    assert manifest["inputs"]["data_sha256"]
    if family == "ensemble":
        metrics = manifest["metrics"]
        assert len(metrics["mlp_selected_rounds"]) == 2 and metrics["kmeans_members"] == 10
        assert metrics["task_labels"] == ["maths", "poems"]  # the logs' tasks: the LDA component
        # Who is right depends on the query here: the ensemble beats model means on validation, by far.
        assert metrics["shrink"] > 0 and metrics["validation_mse"] < 0.8 * metrics["validation_mse_constant"]
        assert metrics["verdict"].startswith("validation squared error")
        assert set(manifest["settings"]) >= {"shrink", "cost_mean", "cost_std"}
        # Once the shrink is chosen the validation cells join the sums: the served model averages are
        # every cell's, training and validation (no test split here).
        assert metrics["refit_with_validation"] is True
        served = load_artifact(out).arrays["constant/accuracy"]
        cells = list(read_eval_log(log))
        means = [np.mean([r.score for r in cells if r.model == m]) for m in ("big", "small")]
        np.testing.assert_allclose(served, means, rtol=1e-6)
        # So is the cost line (per model, least squares of cost on length), from the sums the clients
        # send with their description and with the refit.
        arrays = load_artifact(out).arrays
        for column, model in enumerate(("big", "small")):
            mine = [r for r in cells if r.model == model]
            slope, intercept = np.polyfit([len(r.query) / 1000 for r in mine], [r.cost for r in mine], 1)
            assert arrays["constant/cost_slope"][column] == pytest.approx(slope, rel=1e-4, abs=1e-12)
            assert arrays["constant/cost_intercept"][column] == pytest.approx(intercept, rel=1e-4)
        # Its costs do not depend on the length here (each model's price, ± 20 %): the components keep them.
        assert manifest["settings"]["cost_model"] == "components"
    elif family == "mlp":
        losses = manifest["metrics"]["validation_loss_by_round"]
        assert len(losses) == 6 and manifest["metrics"]["validation_loss"] == min(losses)
    else:
        metrics = manifest["metrics"]
        assert metrics["selected_clusters"] in (2, 4) and metrics["selected_restart"] in range(5)
        assert metrics["validation_mse"] == min(metrics["validation_mse_by_clusters"].values())
    # Nothing in the artifact is a query: the server never saw one (task labels, as names, are aggregates).
    text = "".join(p.read_text(errors="ignore") for p in out.glob("*.json"))
    assert "derivative" not in text and "haiku" not in text and "verse about" not in text
    # λ = 300 per USD: maths goes to the big model, poems to the small one; accuracy-only λ: big for both.
    assert await routes(out, MATH_PROBE, 300) == "big"
    assert await routes(out, POEM_PROBE, 300) == "small"
    assert await routes(out, POEM_PROBE, 0) == "big"


async def test_client_sampling_and_central_training_give_the_same_interface(tmp_path: Path) -> None:
    tiny_static_embedder(tmp_path / "emb")
    log = write_log(tmp_path / "eval.jsonl", clients=4)
    common = {"data": [log], "family": "mlp", "embedder": "static", "embedder_dir": tmp_path / "emb"}
    half = train_router(
        TrainRequest(out=tmp_path / "half", mode="federated", settings=SMALL_MLP | {"fraction_train": 0.5}, **common)
    ).artifact
    assert json.loads((half / "manifest.json").read_text())["training"]["fraction-train"] == 0.5
    central = train_router(
        TrainRequest(out=tmp_path / "central", mode="central", settings=SMALL_MLP, **common)
    ).artifact
    manifest = json.loads((central / "manifest.json").read_text())
    assert manifest["training"]["federated"] is False and manifest["metrics"]["selected_epoch"] >= 1
    assert await routes(central, MATH_PROBE, 300) == "big" and await routes(central, POEM_PROBE, 300) == "small"


def test_a_client_without_data_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    tiny_static_embedder(tmp_path / "emb")
    for i in range(2):
        (tmp_path / "clients" / f"client-{i}").mkdir(parents=True)
    write_log(tmp_path / "clients" / "client-0" / "train.jsonl", clients=1)
    plan = FederatedPlan(
        family="kmeans",
        embedder_dir=str(tmp_path / "emb"),
        clients_dir=str(tmp_path / "clients"),
        out=str(tmp_path / "router"),
    )  # the default step timeout: the client without data answers at once, however busy the machine
    with pytest.raises(SimulationFailed, match="has no train.jsonl"):
        simulate(plan, 2)
    assert not (tmp_path / "router").exists()


def test_run_config_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown router training setting 'epochs'"):
        FederatedPlan.from_run_config({"epochs": 3})
    with pytest.raises(ValueError, match="family must be ensemble, mlp or kmeans"):
        FederatedPlan.from_run_config({"family": "forest"})
    assert FederatedPlan.from_run_config({"copy-embedder": "false"}).copy_embedder is False
    assert FederatedPlan.from_run_config({"copy-embedder": "true"}).copy_embedder is True
    with pytest.raises(ValueError, match="'copy-embedder' must be true or false"):
        FederatedPlan.from_run_config({"copy-embedder": "maybe"})
    assert FederatedPlan.from_run_config({"local-epochs": 4}).local_epochs == 4
