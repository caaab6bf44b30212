"""The check of an outcome table against reality: the solver asked live, through the gateway.

The build starts ``thrifty serve`` (a subprocess: jobs do not import the gateway) with one backend,
the solver's running vLLM server, then plays the first test problems turn by turn with the solver's own
history at three static budgets (:class:`thrifty.budgeter.world.environment.LiveEnv`) and compares
problem accuracy and tokens with what the table predicts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from thrifty.budgeter.world.chains import Chain
from thrifty.budgeter.world.environment import LiveEnv, TableEnv, compare_live
from thrifty.budgeter.world.evaluate import ANSWER_ALLOWANCE
from thrifty.budgeter.world.outcomes import OutcomeTable
from thrifty.budgeter.world.solvers import SolverSpec
from thrifty.server.kit.vllm import free_port

READY_TIMEOUT_S = 120.0


class GatewayError(RuntimeError):
    """The gateway for the live check did not start."""


def gateway_config(
    spec: SolverSpec, backend_url: str, port: int, data_dir: Path, budgeter: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One solver behind the gateway; ``budgeter``: its budget policy (default: static, as the live check
    sends its own ``thinking_token_budget``)."""
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "data_dir": str(data_dir),
        "backends": [
            {
                "name": spec.name,
                "model": spec.name,
                "url": backend_url,
                "reasoning": True,
                "context_length": 4096,
                "price": spec.price,
            }
        ],
        "router": {"cheapest": {}},
        "budgeter": budgeter or {"static": {"budget": 64}},
        "limits": {"answer_tokens": ANSWER_ALLOWANCE},
    }


@contextmanager
def gateway(spec: SolverSpec, backend_url: str, folder: Path, budgeter: dict[str, Any] | None = None) -> Iterator[str]:
    """``thrifty serve`` in front of one running solver; yields its URL, stops it after."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / f"gateway-{spec.name}.yaml"
    config.write_text(yaml.safe_dump(gateway_config(spec, backend_url, port, folder / "gateway-data", budgeter)))
    log_path = folder / f"gateway-{spec.name}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "thrifty.server.cli", "serve", "--config", str(config), "--log-level", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise GatewayError(f"thrifty serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                raise GatewayError(f"thrifty serve not ready after {READY_TIMEOUT_S:g} s:\n{tail}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def live_check(
    spec: SolverSpec,
    backend_url: str,
    table: OutcomeTable,
    chains: Sequence[Chain],
    problems: int,
    budgets: Sequence[int | None],
    unlimited: int,
    folder: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """The first ``problems`` of the table's problems (``chains``: the table's) played live and from it."""
    asked = list(table.problems())[:problems]
    with gateway(spec, backend_url, folder) as url:
        report = compare_live(
            TableEnv(table, chains),
            lambda: LiveEnv(url, spec.name, chains, table.ladder, unlimited=unlimited),
            asked,
            budgets,
            progress=progress,
        )
    return {"problems": len(asked), "through": "thrifty serve", "budgets": report}
