"""The learned router: argmax A − λ·C over healthy models, λ per request, and reloads that never tear."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.router.fixtures import MATH, POEM, PRESETS, tiny_static_embedder, two_topic_artifact, two_topic_folder
from thrifty.router import InvalidRouting, ModelCandidate, NoRoute, RoutingRequest, build_router
from thrifty.router.learned import LearnedRouter, query_text

BIG = ModelCandidate("big", 10.0, 30.0, False, 4096)
SMALL = ModelCandidate("small", 0.1, 0.3, False, 4096)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return two_topic_folder(tmp_path)


def ask(text: str, model: str = "auto", **headers: str) -> RoutingRequest:
    return RoutingRequest("chat", model, {"model": model, "messages": [{"role": "user", "content": text}]}, headers)


async def test_lambda_trades_accuracy_for_cost(folder: Path) -> None:
    router = build_router("learned", {"artifact": str(folder), "presets": PRESETS})
    assert router.virtual_models == ("auto", "auto:best", "auto:balanced", "auto:cheap")
    both = [BIG, SMALL]
    assert (await router.route(ask(MATH, "auto:best"), both)).model == "big"
    assert (await router.route(ask(POEM, "auto:best"), both)).model == "big"
    # Balanced: maths needs the big model, a poem does not.
    decision = await router.route(ask(MATH, "auto:balanced"), both)
    assert decision.model == "big"
    assert decision.details["lambda"] == 100.0
    assert decision.details["accuracy"] == pytest.approx(0.9) and decision.details["cost"] == pytest.approx(1e-3)
    assert (await router.route(ask(POEM, "auto:balanced"), both)).model == "small"
    assert (await router.route(ask(MATH, "auto:cheap"), both)).model == "small"
    # The header wins over the preset and over plain auto's λ (0 here).
    assert (await router.route(ask(POEM, "auto"), both)).model == "big"
    assert (await router.route(ask(POEM, "auto", **{"x-thrifty-lambda": "100"}), both)).model == "small"
    assert (await router.route(ask(MATH, "auto:best", **{"x-thrifty-lambda": "1e6"}), both)).model == "small"


async def test_only_healthy_models_the_artifact_knows_are_chosen(folder: Path) -> None:
    router = LearnedRouter(str(folder), presets=PRESETS)
    assert (await router.route(ask(MATH, "auto:best"), [SMALL])).model == "small"  # big is down
    stranger = ModelCandidate("unknown", 0.0, 0.0, False, 4096)
    assert (await router.route(ask(POEM, "auto:best"), [stranger, SMALL])).model == "small"
    with pytest.raises(NoRoute, match="trained for"):
        await router.route(ask(MATH), [stranger])


@pytest.mark.parametrize("value", ["-1", "cheap", "nan", "inf", ""])
async def test_a_bad_lambda_header_is_the_clients_error(folder: Path, value: str) -> None:
    router = LearnedRouter(str(folder))
    with pytest.raises(InvalidRouting, match="x-thrifty-lambda"):
        await router.route(ask(MATH, **{"x-thrifty-lambda": value}), [BIG, SMALL])


def test_bad_options_are_refused_before_serving(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="presets.cheap: Input should be greater than or equal to 0"):
        build_router("learned", {"artifact": str(folder), "presets": {"cheap": -1}})
    with pytest.raises(ValueError, match="lamda: Extra inputs are not permitted"):
        build_router("learned", {"artifact": str(folder), "lamda": 3})
    with pytest.raises(ValueError, match="lambda: Input should be a finite number"):
        build_router("learned", {"artifact": str(folder), "lambda": float("inf")})
    with pytest.raises(ValueError, match="no manifest.json"):
        build_router("learned", {"artifact": str(tmp_path / "missing")})


async def test_reload_swaps_only_a_complete_artifact(folder: Path, tmp_path: Path) -> None:
    router = LearnedRouter(str(folder), presets=PRESETS)
    before = router.loaded
    status = await router.reload()
    assert router.loaded is not before and status["models"] == ["big", "small"]
    # A broken artifact in place: the reload fails and the previous one keeps serving.
    (folder / "weights.safetensors").write_bytes(b"torn")
    kept = router.loaded
    with pytest.raises(ValueError):
        await router.reload()
    assert router.loaded is kept
    assert (await router.route(ask(POEM, "auto:balanced"), [BIG, SMALL])).model == "small"
    # Replaced by a good one (as a deploy would: a new folder renamed into place): picked up.
    shutil.rmtree(folder)
    embedder = tiny_static_embedder(tmp_path / "emb2", seed=3)
    two_topic_artifact(folder, embedder, tmp_path / "emb2")
    await router.reload()
    assert router.loaded.embedder.identity == embedder.identity


def test_query_text_reads_the_last_user_message() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ]
    }
    assert query_text(chat) == "second"
    assert query_text({"prompt": "a prompt"}) == "a prompt"
    assert query_text({"prompt": ["one", "two"]}) == "one"
    assert query_text({"prompt": [[1, 2, 3]]}) == ""


async def test_a_moved_embedder_is_found_through_the_embedder_dir_option(folder: Path, tmp_path: Path) -> None:
    shutil.move(tmp_path / "emb", tmp_path / "mounted")  # e.g. the artifact and embedder mounted in a container
    with pytest.raises(ValueError, match="set the router's embedder_dir"):
        build_router("learned", {"artifact": str(folder)})
    router = build_router("learned", {"artifact": str(folder), "embedder_dir": str(tmp_path / "mounted")})
    assert (await router.route(ask(POEM, "auto", **{"x-thrifty-lambda": "100"}), [BIG, SMALL])).model == "small"
