"""The gateway with a learned router: presets as virtual models, λ per request, decisions recorded,
reloads (admin endpoint and SIGHUP) that drop no request."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import config_for, free_port, gateway, sample, standins
from tests.router.fixtures import MATH, POEM, PRESETS, two_topic_folder
from thrifty.server.access import hash_key
from thrifty.server.standin import StandinState


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return two_topic_folder(tmp_path)


def _config(artifact: Path, big_url: str, small_url: str, **extra: Any) -> Any:
    backends = [
        {"name": "b-big", "model": "big", "url": big_url, "price": {"input": 10, "output": 30}},
        {"name": "b-small", "model": "small", "url": small_url, "price": {"input": 0.1, "output": 0.3}},
    ]
    return config_for(backends, router={"learned": {"artifact": str(artifact), "presets": PRESETS}}, **extra)


def chat(text: str, model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def test_presets_route_by_predicted_accuracy_and_cost(artifact: Path) -> None:
    with standins(StandinState(model="big"), StandinState(model="small")) as (big, small):
        async with gateway(_config(artifact, big.url, small.url)) as (http, app):
            listed = {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
            assert listed == {"big", "small", "auto", "auto:best", "auto:balanced", "auto:cheap"}

            maths = await http.post("/v1/chat/completions", json=chat(MATH, "auto:balanced"))
            poem = await http.post(
                "/v1/chat/completions", json=chat(POEM, "auto:balanced"), headers={"X-Session-ID": "s1"}
            )
            assert maths.status_code == 200 and maths.headers["x-thrifty-model"] == "big"
            assert poem.status_code == 200 and poem.headers["x-thrifty-model"] == "small"
            assert poem.headers["x-thrifty-routing-policy"] == "learned"
            assert float(poem.headers["x-thrifty-routing-lambda"]) == 100.0
            assert float(poem.headers["x-thrifty-routing-accuracy"]) == pytest.approx(0.8, abs=1e-4)
            assert float(poem.headers["x-thrifty-routing-cost"]) == pytest.approx(1e-4, rel=1e-4)
            # The header overrides the preset; a name asked for directly is never routed.
            cheap = await http.post(
                "/v1/chat/completions", json=chat(MATH, "auto:best"), headers={"x-thrifty-lambda": "1e6"}
            )
            assert cheap.headers["x-thrifty-model"] == "small"
            direct = await http.post("/v1/chat/completions", json=chat(MATH, "small"))
            assert direct.headers["x-thrifty-model"] == "small" and "x-thrifty-routing-lambda" not in direct.headers

            turn = (await http.get("/v1/sessions/s1")).json()["turns"][0]
            assert turn["model"] == "small"
            assert turn["routing"]["lambda"] == 100.0 and turn["routing"]["accuracy"] == pytest.approx(0.8, abs=1e-4)
            assert sample(app, "thrifty_routing_decisions_total", policy="learned", model="small") == 2
            assert sample(app, "thrifty_routing_predicted_accuracy_count", model="big") == 1
            assert sample(app, "thrifty_routing_predicted_cost_usd_sum", model="small") == pytest.approx(2e-4, rel=1e-3)


async def test_client_mistakes_get_openai_errors(artifact: Path) -> None:
    with standins(StandinState(model="big"), StandinState(model="small")) as (big, small):
        async with gateway(_config(artifact, big.url, small.url)) as (http, _):
            bad = await http.post("/v1/chat/completions", json=chat(MATH, "auto"), headers={"x-thrifty-lambda": "lots"})
            assert bad.status_code == 400
            assert bad.json()["error"]["param"] == "x-thrifty-lambda" and "≥ 0" in bad.json()["error"]["message"]
            unknown = await http.post("/v1/chat/completions", json=chat(MATH, "auto:free"))
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_a_model_without_a_healthy_backend_is_never_chosen(artifact: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with standins(StandinState(model="big")) as (big,):
        async with gateway(_config(artifact, big.url, dead)) as (http, _):
            for text in (MATH, POEM):
                response = await http.post("/v1/chat/completions", json=chat(text, "auto:cheap"))
                assert response.status_code == 200 and response.headers["x-thrifty-model"] == "big"


async def test_reload_under_load_drops_nothing(artifact: Path, tmp_path: Path) -> None:
    with standins(StandinState(model="big"), StandinState(model="small")) as (big, small):
        async with gateway(_config(artifact, big.url, small.url)) as (http, app):

            async def requests() -> list[int]:
                out = []
                for i in range(40):
                    text = MATH if i % 2 else POEM
                    out.append((await http.post("/v1/chat/completions", json=chat(text, "auto:balanced"))).status_code)
                return out

            async def reloads() -> list[int]:
                out = []
                for _ in range(5):
                    out.append((await http.post("/admin/router/reload")).status_code)
                    await asyncio.sleep(0.01)
                return out

            statuses, reloaded = await asyncio.gather(requests(), reloads())
            assert statuses == [200] * 40 and reloaded == [200] * 5
            assert sample(app, "thrifty_router_reloads_total", outcome="ok") == 5

            # A torn artifact: the reload is refused, the previous one keeps serving.
            (artifact / "weights.safetensors").write_bytes(b"torn")
            failed = await http.post("/admin/router/reload")
            assert (
                failed.status_code == 422 and "still serving the previous artifact" in failed.json()["error"]["message"]
            )
            assert sample(app, "thrifty_router_reloads_total", outcome="failed") == 1
            poem = await http.post("/v1/chat/completions", json=chat(POEM, "auto:balanced"))
            assert poem.status_code == 200 and poem.headers["x-thrifty-model"] == "small"
            status = (await http.get("/admin/router")).json()
            assert (
                status["policy"] == "learned" and status["family"] == "kmeans" and status["models"] == ["big", "small"]
            )


async def test_sighup_reloads_the_router(artifact: Path) -> None:
    with standins(StandinState(model="big"), StandinState(model="small")) as (big, small):
        async with gateway(_config(artifact, big.url, small.url)) as (_, app):
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(200):
                if sample(app, "thrifty_router_reloads_total", outcome="ok") == 1:
                    break
                await asyncio.sleep(0.02)
            assert sample(app, "thrifty_router_reloads_total", outcome="ok") == 1


async def test_admin_endpoints_need_an_admin_key(artifact: Path) -> None:
    keys = [{"name": "app", "sha256": hash_key("k-app")}, {"name": "ops", "sha256": hash_key("k-ops"), "admin": True}]
    with standins(StandinState(model="big"), StandinState(model="small")) as (big, small):
        async with gateway(_config(artifact, big.url, small.url, auth={"keys": keys})) as (http, _):
            assert (await http.post("/admin/router/reload")).status_code == 401
            refused = await http.post("/admin/router/reload", headers={"Authorization": "Bearer k-app"})
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
            allowed = await http.post("/admin/router/reload", headers={"Authorization": "Bearer k-ops"})
            assert allowed.status_code == 200 and allowed.json()["status"] == "reloaded"


async def test_a_router_without_an_artifact_has_nothing_to_reload() -> None:
    with standins(StandinState(model="m")) as (b,):
        async with gateway(config_for([{"name": "b", "model": "m", "url": b.url}])) as (http, _):
            response = await http.post("/admin/router/reload")
            assert response.status_code == 409 and "no artifact" in response.json()["error"]["message"]


def _malformed(manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """Manifests that are valid JSON but not a router's: each with the words its refusal should carry."""
    without = {key: {k: v for k, v in manifest.items() if k != key} for key in ("files", "family", "models")}
    return [
        ("files", without["files"]),
        ("family", without["family"]),
        ("models", without["models"]),
        ("a JSON object", [manifest]),
        ("models", {**manifest, "models": "big"}),
        ("files", {**manifest, "files": ["weights.safetensors"]}),
        ("family", {**manifest, "family": 7}),
        ("embedder", {**manifest, "embedder": None}),
        ("not a file of the artifact", {**manifest, "files": {**manifest["files"], "../elsewhere": "0" * 64}}),
        ("weights", {**manifest, "models": ["big", "small", "third"]}),  # more models than the weights have
    ]


async def test_a_malformed_manifest_is_a_422_and_the_old_router_keeps_serving(
    artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = artifact / "manifest.json"
    good = path.read_text()
    with standins(StandinState(model="big"), StandinState(model="small")) as (big, small):
        async with gateway(_config(artifact, big.url, small.url)) as (http, app):
            for words, manifest in _malformed(json.loads(good)):
                path.write_text(json.dumps(manifest))
                failed = await http.post("/admin/router/reload")
                assert failed.status_code == 422, (words, failed.text)
                message = failed.json()["error"]["message"]
                assert "still serving the previous artifact" in message and words in message, (words, message)
                poem = await http.post("/v1/chat/completions", json=chat(POEM, "auto:balanced"))
                assert poem.status_code == 200 and poem.headers["x-thrifty-model"] == "small"

            # SIGHUP with a malformed manifest: one clear log line, no task dying unseen.
            path.write_text(json.dumps(_malformed(json.loads(good))[0][1]))
            failures = sample(app, "thrifty_router_reloads_total", outcome="failed")
            with caplog.at_level(logging.ERROR):
                os.kill(os.getpid(), signal.SIGHUP)
                for _ in range(500):
                    if sample(app, "thrifty_router_reloads_total", outcome="failed") > failures:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0)
            lines = [r for r in caplog.records if "SIGHUP" in r.getMessage()]
            assert len(lines) == 1 and "files" in lines[0].getMessage() and lines[0].exc_info is None
            path.write_text(good)
            assert (await http.post("/admin/router/reload")).status_code == 200
