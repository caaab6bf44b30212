"""Run the federation in Flower's Simulation Engine: a virtual supernode per client folder.

The engine (Ray) runs in a child process of its own, so that its workers, signal handlers and open
files never outlive the run inside the caller (a CLI, a benchmark, a test session).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from thrifty.router.artifact import read_manifest
from thrifty.router.federated.plan import FederatedPlan

FAILED = "thrifty-simulation-failed: "


class SimulationFailed(RuntimeError):
    """The ServerApp did not write its artifact; the message says why (or ends Flower's log)."""


def simulate(plan: FederatedPlan, clients: int, quiet: bool = True) -> Path:
    """Train with ``clients`` simulated organisations, each reading ``plan.clients_dir/client-<i>``."""
    for i in range(clients):
        if not (Path(plan.clients_dir) / f"client-{i}").is_dir():
            raise FileNotFoundError(f"{plan.clients_dir} has no client-{i} folder")
    env = os.environ | {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    command = [
        sys.executable,
        "-m",
        "thrifty.router.federated.simulation",
        json.dumps(plan.to_run_config()),
        str(clients),
    ]
    with tempfile.TemporaryFile("w+") as log:
        result = subprocess.run(
            command,
            check=False,
            env=env,
            stdout=log if quiet else None,
            stderr=subprocess.STDOUT if quiet else subprocess.PIPE,
            text=True,
        )
        log.seek(0)
        output = log.read() if quiet else (result.stderr or "")
    out = Path(plan.out)
    try:
        read_manifest(out)
    except ValueError:
        reasons = [line[len(FAILED) :] for line in output.splitlines() if line.startswith(FAILED)]
        tail = "\n".join(output.strip().splitlines()[-25:])
        reason = reasons[-1] if reasons else f"exit status {result.returncode}; Flower's log ends:\n{tail}"
        raise SimulationFailed(f"the federated run wrote no artifact to {out}: {reason}") from None
    return out


def _run_here(plan: FederatedPlan, clients: int) -> None:
    from flwr.simulation import run_simulation

    from thrifty.router.federated.client_app import app as client_app
    from thrifty.router.federated.server_app import make_server_app

    cpus = os.cpu_count() or 1
    server_app = make_server_app(**plan.settings())
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False},
    }
    run_simulation(server_app, client_app, num_supernodes=clients, backend_config=backend)  # type: ignore[arg-type]


if __name__ == "__main__":
    settings, count = json.loads(sys.argv[1]), int(sys.argv[2])
    try:
        _run_here(FederatedPlan.from_run_config(settings), count)
    except Exception as exc:  # noqa: BLE001 - Flower re-raises whatever the ServerApp raised; report it
        print(f"{FAILED}{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}", flush=True)
        sys.exit(1)
