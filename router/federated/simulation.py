"""Run the federation in Flower's Simulation Engine: one process, a virtual supernode per client folder."""

from __future__ import annotations

import io
import logging
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from thrifty.router.artifact import read_manifest
from thrifty.router.federated.plan import FederatedPlan


class SimulationFailed(RuntimeError):
    """The ServerApp did not write its artifact; the message carries the end of Flower's log."""


def simulate(plan: FederatedPlan, clients: int, cpus: int | None = None, quiet: bool = True) -> Path:
    """Train with ``clients`` simulated organisations, each reading ``plan.clients_dir/client-<i>``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation
    from thrifty.router.federated.client_app import app as client_app
    from thrifty.router.federated.server_app import make_server_app

    for i in range(clients):
        if not (Path(plan.clients_dir) / f"client-{i}").is_dir():
            raise FileNotFoundError(f"{plan.clients_dir} has no client-{i} folder")
    cpus = cpus or os.cpu_count() or 1
    overrides = plan.to_run_config()
    server_app = make_server_app(**{k.replace("-", "_"): v for k, v in overrides.items()})
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": not quiet},
    }
    log = io.StringIO()
    flwr_logger = logging.getLogger("flwr")
    handler = logging.StreamHandler(log)
    flwr_logger.addHandler(handler)
    try:
        if quiet:
            with redirect_stdout(log), redirect_stderr(log):
                run_simulation(server_app, client_app, num_supernodes=clients, backend_config=backend)  # type: ignore[arg-type]
        else:
            run_simulation(server_app, client_app, num_supernodes=clients, backend_config=backend)  # type: ignore[arg-type]
    finally:
        flwr_logger.removeHandler(handler)
    out = Path(plan.out)
    try:
        read_manifest(out)
    except ValueError:
        tail = "\n".join(log.getvalue().strip().splitlines()[-25:])
        raise SimulationFailed(f"the federated run wrote no artifact to {out}; Flower's log ends:\n{tail}") from None
    return out
