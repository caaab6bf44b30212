"""Reloading the gateway's stages under load: a learned router and a budget table, through the admin route
and SIGHUP, with no request failing and a broken artifact refused while the old one keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import config_for, gateway, sample, standins
from tests.router.fixtures import MATH, POEM, PRESETS, two_topic_folder
from thrifty.budgeter.table import TABLE, write_table
from thrifty.server.standin import StandinState


@pytest.fixture
def artifacts(tmp_path: Path) -> tuple[Path, Path]:
    return two_topic_folder(tmp_path), write_table(tmp_path / "budgets", 64, {"big": 32})


def _config(router: Path, table: Path, big_url: str, small_url: str) -> Any:
    backends = [
        {"name": "b-big", "model": "big", "url": big_url, "reasoning": True, "price": {"input": 10, "output": 30}},
        {
            "name": "b-small",
            "model": "small",
            "url": small_url,
            "reasoning": True,
            "price": {"input": 0.1, "output": 0.3},
        },
    ]
    return config_for(
        backends,
        router={"learned": {"artifact": str(router), "presets": PRESETS}},
        budgeter={"table": {"artifact": str(table)}},
        timeouts={"connect": 60.0},  # on a busy machine a stand-in can take seconds to accept
    )


async def _until(condition: Any, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_router_and_budgeter_reload_under_load_without_a_failed_request(artifacts: tuple[Path, Path]) -> None:
    router, table = artifacts
    with standins(StandinState(model="big"), StandinState(model="small")) as (big, small):
        async with gateway(_config(router, table, big.url, small.url)) as (http, app):
            budgets: list[tuple[str, str]] = []

            async def load(n: int) -> list[int]:
                statuses = []
                for i in range(n):
                    text = MATH if i % 2 else POEM
                    body = {"model": "auto:balanced", "messages": [{"role": "user", "content": text}]}
                    response = await http.post("/v1/chat/completions", json=body)
                    statuses.append(response.status_code)
                    budgets.append((response.headers["x-thrifty-model"], response.headers["x-thrifty-thinking-budget"]))
                return statuses

            async def reloads() -> list[int]:
                codes = []
                for round_ in range(4):
                    for stage in ("router", "budgeter"):
                        codes.append((await http.post(f"/admin/{stage}/reload")).status_code)
                    os.kill(os.getpid(), signal.SIGHUP)  # reloads both
                    await asyncio.sleep(0.01)
                    if round_ == 1:  # a new table, swapped in atomically, reaches requests after a reload
                        write_table(table, 64, {"big": 16}, replace=True)
                return codes

            loaded = asyncio.gather(*(load(30) for _ in range(4)))
            codes = await reloads()
            statuses = [s for batch in await loaded for s in batch]
            assert statuses == [200] * 120 and codes == [200] * 8
            await _until(lambda: sample(app, "thrifty_budgeter_reloads_total", outcome="ok") == 8, "every reload")
            assert sample(app, "thrifty_router_reloads_total", outcome="ok") == 8
            assert sample(app, "thrifty_budgeter_reloads_total", outcome="failed") == 0

            after = await http.post(
                "/v1/chat/completions", json={"model": "big", "messages": [{"role": "user", "content": MATH}]}
            )
            assert after.headers["x-thrifty-thinking-budget"] == "16"
            assert {budget for model, budget in budgets if model == "small"} == {"64"}
            status = (await http.get("/admin/budgeter")).json()
            assert status["policy"] == "table" and status["table"]["models"] == {"big": 16}
            assert (await http.get("/admin/router")).json()["family"] == "kmeans"

            # A broken table is refused (422) and the last good one keeps serving; the same through SIGHUP.
            (table / TABLE).write_text(json.dumps({"default": "lots"}))
            refused = await http.post("/admin/budgeter/reload")
            assert (
                refused.status_code == 422
                and "still serving the previous artifact" in refused.json()["error"]["message"]
            )
            os.kill(os.getpid(), signal.SIGHUP)
            await _until(lambda: sample(app, "thrifty_budgeter_reloads_total", outcome="failed") == 2, "the refusal")
            again = await http.post(
                "/v1/chat/completions", json={"model": "big", "messages": [{"role": "user", "content": MATH}]}
            )
            assert again.status_code == 200 and again.headers["x-thrifty-thinking-budget"] == "16"


async def test_a_stage_without_an_artifact_and_an_unknown_stage() -> None:
    with standins(StandinState(model="m")) as (b,):
        config = config_for([{"name": "b", "model": "m", "url": b.url}], budgeter={"static": {"budget": 9}})
        async with gateway(config) as (http, _):
            status = (await http.get("/admin/budgeter")).json()
            assert status == {"policy": "static", "budget": 9}
            conflict = await http.post("/admin/budgeter/reload")
            assert conflict.status_code == 409 and "no artifact" in conflict.json()["error"]["message"]
            assert (await http.get("/admin/nothing")).status_code == 404
