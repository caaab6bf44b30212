"""``thrifty train router`` as a user with their own logs meets it: central, local, simulated organisations,
the held-out split, what was merged, the ensemble's verdict and ``thrifty router evaluate``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.federated.synthetic import ACCURACY, COST, MATH_PROBE, records
from tests.router.fixtures import tiny_static_embedder
from thrifty.router import ModelCandidate, RoutingRequest, build_router
from thrifty.router.artifact import RouterArtifact, load_artifact
from thrifty.router.eval_log import EvalRecord, read_eval_log, write_eval_log
from thrifty.router.learned import MAX_QUERY_CHARS
from thrifty.router.partition import PartitionPlan
from thrifty.router.training import TrainRequest, train_router
from thrifty.server.cli import app

SMALL = {"rounds": 4, "local_epochs": 2, "width": 32, "learning_rate": 3e-3, "clusters": "2,4", "mlp_members": 2}


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("emb") / "static"
    tiny_static_embedder(folder)
    return folder


def plain_log(path: Path, **kwargs: object) -> Path:
    """The synthetic logs without organisations: one party's evaluation log (one model per query)."""
    write_eval_log(path, [replace(r, client=None) for r in records(**kwargs)])  # type: ignore[arg-type]
    return path


def full_log(path: Path, **kwargs: object) -> Path:
    """Every query answered by both models (a benchmark's log, as LLMRouter's is)."""
    rng = np.random.default_rng(1)
    out = []
    for r in records(**kwargs):  # type: ignore[arg-type]
        for model in ("big", "small"):
            p = ACCURACY[model][0 if r.task == "maths" else 1]
            out.append(EvalRecord(r.query, model, float(rng.random() < p), COST[model], task=r.task))
    write_eval_log(path, out)
    return path


def test_a_plain_log_trains_centrally_and_says_what_was_merged(tmp_path: Path, embedder_dir: Path) -> None:
    log = plain_log(tmp_path / "eval.jsonl")
    first = next(iter(read_eval_log(log)))
    with log.open("a") as f:  # the same (query, model) cell twice more: averaged into one, and reported
        for score, task in ((0.0, first.task), (1.0, "another task")):
            f.write(json.dumps(replace(first, score=score, task=task).to_json()) + "\n")
    request = TrainRequest(
        data=[log], out=tmp_path / "router", embedder="static", embedder_dir=embedder_dir, settings=SMALL
    )
    report = train_router(request)
    assert report.mode == "central" and report.organisations == 1 and report.held_out_log is None
    manifest = json.loads((tmp_path / "router" / "manifest.json").read_text())
    assert manifest["family"] == "ensemble" and manifest["training"]["mode"] == "central"
    assert manifest["inputs"]["records"] == 362 and manifest["inputs"]["repeated_cells_averaged"] == 2
    assert manifest["inputs"]["queries"] == manifest["inputs"]["cells"] == 360
    assert manifest["inputs"]["queries_with_conflicting_tasks"] == 1
    assert not (tmp_path / "router.work").exists()  # nothing left behind
    with pytest.raises(ValueError, match="federated training needs at least two organisations"):
        train_router(replace(request, out=tmp_path / "fed", mode="federated"))
    assert not (tmp_path / "fed").exists()


def test_one_organisations_own_router_and_the_held_out_split(tmp_path: Path, embedder_dir: Path) -> None:
    log = full_log(tmp_path / "eval.jsonl", clients=2, per_client=200)
    request = TrainRequest(
        data=[log],
        out=tmp_path / "local",
        mode="local",
        client="client-1",
        clients=3,
        partition=PartitionPlan(test_fraction=0.2, validation_fraction=0.25, task_alpha=5.0),
        embedder="static",
        embedder_dir=embedder_dir,
        settings=SMALL,
        held_out_log=tmp_path / "held-out.jsonl",
    )
    report = train_router(request)
    manifest = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert manifest["inputs"]["clients"] == ["client-1"] and manifest["training"]["mode"] == "local"
    held = list(read_eval_log(tmp_path / "held-out.jsonl"))
    assert report.held_out_queries == len({r.query for r in held}) > 0
    assert len(held) == 2 * report.held_out_queries  # fully observed: both models per held-out query
    with pytest.raises(ValueError, match="no organisation is called 'client-7'; the data have: client-0"):
        train_router(replace(request, out=tmp_path / "other", client="client-7"))
    with pytest.raises(ValueError, match="name it with --client"):
        TrainRequest(data=[log], out=tmp_path / "x", mode="local")


def test_the_ensemble_is_the_constant_router_when_queries_carry_no_signal(tmp_path: Path, embedder_dir: Path) -> None:
    rng = np.random.default_rng(0)
    noise = [
        EvalRecord(r.query, r.model, float(rng.random() < (0.7 if r.model == "big" else 0.4)), r.cost, task=r.task)
        for r in records(clients=2, per_client=300)
    ]
    write_eval_log(tmp_path / "noise.jsonl", noise)
    report = train_router(
        TrainRequest(
            data=[tmp_path / "noise.jsonl"],
            out=tmp_path / "router",
            embedder="static",
            embedder_dir=embedder_dir,
            settings=SMALL,
        )
    )
    artifact = load_artifact(report.artifact)
    assert artifact.settings["shrink"] == 0.0
    assert artifact.metrics["verdict"].startswith("not worth serving")
    # The costs vary around each model's price, whatever the query's length: no cost line either.
    assert artifact.settings["cost_model"] == "components"
    x = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
    accuracy, cost = artifact.predictor().predict(x, np.linspace(0.01, 0.2, 5))
    assert np.allclose(accuracy, accuracy[0]) and np.allclose(accuracy[0], artifact.arrays["constant/accuracy"])
    assert np.allclose(cost, artifact.arrays["constant/cost"])


def test_once_the_shrink_is_chosen_the_validation_cells_join_the_sums(tmp_path: Path, embedder_dir: Path) -> None:
    log = plain_log(tmp_path / "eval.jsonl", clients=2, per_client=200)

    def train(out: str, refit: bool) -> RouterArtifact:
        request = TrainRequest(
            data=[log],
            out=tmp_path / out,
            embedder="static",
            embedder_dir=embedder_dir,
            settings=SMALL | {"refit": refit},
        )
        return load_artifact(train_router(request).artifact)

    refit, plain = train("a", True), train("b", False)
    # The same choice (made before the refit, on the validation cells alone) ...
    assert refit.settings["shrink"] == plain.settings["shrink"] > 0
    assert refit.metrics["validation_mse"] == plain.metrics["validation_mse"]
    assert refit.metrics["refit_with_validation"] is True and plain.metrics["refit_with_validation"] is False
    # ... served from every cell of the log, against the training cells alone.
    cells = list(read_eval_log(log))
    for model, column in (("big", 0), ("small", 1)):
        mean = np.mean([r.score for r in cells if r.model == model])
        assert refit.arrays["constant/accuracy"][column] == pytest.approx(mean, rel=1e-6)
        assert plain.arrays["constant/accuracy"][column] != pytest.approx(mean, rel=1e-6)
    kmeans_cells = [refit.arrays[k].sum() for k in refit.arrays if k.startswith("kmeans") and k.endswith("/count")]
    assert kmeans_cells and all(n == len(cells) for n in kmeans_cells)
    # The MLPs stay as trained (their rounds were chosen on those cells); the task LDA is refitted.
    assert all(np.array_equal(refit.arrays[k], v) for k, v in plain.arrays.items() if k.startswith("mlp"))
    assert not np.array_equal(refit.arrays["tasks0/weights"], plain.arrays["tasks0/weights"])


async def test_per_token_prices_give_costs_that_grow_with_the_prompt(tmp_path: Path, embedder_dir: Path) -> None:
    # Priced as APIs price: a request costs (prompt tokens + completion tokens) × the model's price, so a
    # long prompt costs more on every model. Queries padded to lengths from 50 to 3,000 characters.
    rng = np.random.default_rng(2)
    price = {"big": 2e-6, "small": 2e-7}  # USD per token
    priced = []
    for r in records(clients=2, per_client=300):
        query = r.query + " " + "and more detail " * int(rng.integers(0, 180))
        priced.append(replace(r, query=query, cost=price[r.model] * (len(query) / 4 + 256), client=None))
    write_eval_log(tmp_path / "priced.jsonl", priced)
    request = TrainRequest(
        data=[tmp_path / "priced.jsonl"],
        out=tmp_path / "r",
        embedder="static",
        embedder_dir=embedder_dir,
        settings=SMALL,
    )
    artifact = load_artifact(train_router(request).artifact)
    assert artifact.settings["cost_model"] == "line"
    assert "costs from a line in the query's length" in artifact.metrics["verdict"]
    # The gateway's decisions carry the cost of this prompt, not the model's average.
    router = build_router("learned", {"artifact": str(tmp_path / "r"), "embedder_dir": str(embedder_dir)})
    models = [ModelCandidate("big", 10.0, 30.0, False, 4096), ModelCandidate("small", 0.1, 0.3, False, 4096)]
    costs = []
    # The second prompt is longer than the part the embedder reads (MAX_QUERY_CHARS): costed whole.
    for text in (MATH_PROBE, MATH_PROBE + " and more detail" * 300):
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        decision = await router.route(RoutingRequest("chat", "auto", body, {}), models)
        expected = price[decision.model] * (len(text) / 4 + 256)
        assert decision.details["cost"] == pytest.approx(expected, rel=1e-3)
        costs.append(decision.details["cost"] / price[decision.model])
    assert len(text) > MAX_QUERY_CHARS and costs[1] > 3 * costs[0]


def test_the_cli_trains_and_evaluates(tmp_path: Path, embedder_dir: Path) -> None:
    log = full_log(tmp_path / "eval.jsonl", clients=2, per_client=400)
    runner = CliRunner()
    common = ["--embedder", "static", "--embedder-dir", str(embedder_dir), "--rounds", "4", "--clusters", "2,4"]
    result = runner.invoke(
        app,
        ["train", "router", "--data", str(log), "--out", str(tmp_path / "r"), "--central", "--clients", "3",
         "--test-fraction", "0.3", "--task-alpha", "5", "--mlp-members", "1", *common],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mode: central, 3 organisation(s)" in result.output and "verdict: " in result.output
    held = tmp_path / "r-held-out.jsonl"
    assert f"→ {held}" in result.output and held.is_file()
    result = runner.invoke(
        app,
        ["router", "evaluate", "--artifact", str(tmp_path / "r"), "--data", str(held), "--train", str(log),
         "--plot", str(tmp_path / "curves.png"), "--json", str(tmp_path / "card.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "card.json").read_text())
    assert {"router", "per-model means", "per-task means", "oracle", "always-best"} <= set(card["rows"])
    assert card["rows"]["oracle"]["auc"] >= card["rows"]["router"]["auc"] > card["rows"]["random"]["auc"]
    # Maths needs the big model, poems do with the small one: the router beats routing by model averages.
    assert card["rows"]["router"]["auc"] > card["rows"]["per-model means"]["auc"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and "normalised AUC" in result.output
    # A sparse log (one model per query, as organisations' logs are): nothing on it can be scored.
    sparse = plain_log(tmp_path / "sparse.jsonl")
    result = runner.invoke(app, ["router", "evaluate", "--artifact", str(tmp_path / "r"), "--data", str(sparse)])
    assert result.exit_code == 2 and "has an outcome for every one of the router's 2 models" in result.output
    result = runner.invoke(app, ["train", "router", "--data", str(log), "--federated", "--central", *common])
    assert result.exit_code == 2 and "choose one of --federated, --central and --local" in result.output
