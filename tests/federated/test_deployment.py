"""The Deployment Engine on localhost: a SuperLink, one SuperNode per organisation (each with its own
data-dir), and `flwr run` of the packaged app; the ServerApp writes the artifact. Also the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.federated.synthetic import write_log
from tests.helpers import free_port
from tests.router.fixtures import tiny_static_embedder
from thrifty.router.training import by_client_label, load_outcomes, write_clients

APP = Path(__file__).resolve().parents[2] / "examples" / "federated-router"
BIN = Path(sys.executable).parent


def _env(home: Path) -> dict[str, str]:
    return os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the SuperLink starts flower-superexec
    }


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], list[Path]]]:
    """A SuperLink and two SuperNodes on free ports; yields (FLWR_HOME, env, log files)."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = _env(home)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    tiny_static_embedder(tmp_path / "emb")
    table, _ = load_outcomes([write_log(tmp_path / "eval.jsonl", clients=2)])
    write_clients(by_client_label(table), tmp_path / "orgs")
    logs, processes = [], []

    def start(name: str, command: list[str]) -> None:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))

    start(
        "superlink",
        [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation", "--port", str(port)],
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise AssertionError("the SuperLink did not start:\n" + logs[0].read_text())
            time.sleep(0.3)
        for i in range(2):
            config = f'data-dir="{tmp_path / "orgs" / f"client-{i}"}" embedder-dir="{tmp_path / "emb"}"'
            start(
                f"supernode-{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    config,
                ],
            )
        yield home, env, logs
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # The SuperLink's helpers (SuperExec, ServerApp/ClientApp processes) are its children; make sure.
        subprocess.run(["pkill", "-f", str(home)], check=False)


def test_flwr_run_on_the_deployment_engine_writes_the_artifact(
    tmp_path: Path, federation: tuple[Path, dict[str, str], list[Path]]
) -> None:
    home, env, logs = federation
    out = tmp_path / "router"
    overrides = f'family="mlp" rounds=2 width=64 out="{out}" embedder-dir="{tmp_path / "emb"}" timeout=600.0'
    run = subprocess.run(
        [str(BIN / "flwr"), "run", str(APP), "local", "--stream", "--run-config", overrides],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    # `flwr run --stream` exits 0 even when the ServerApp failed: the artifact is the proof.
    journal = run.stdout + run.stderr + "".join(log.read_text(errors="replace")[-3000:] for log in logs)
    assert (out / "manifest.json").is_file(), f"no artifact; flwr run said:\n{journal[-6000:]}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["federated"] is True and manifest["inputs"]["clients"] == 2
    assert len(manifest["metrics"]["validation_loss_by_round"]) == 2
    assert manifest["models"] == ["big", "small"]


def test_the_cli_trains_and_extends_a_router(tmp_path: Path) -> None:
    tiny_static_embedder(tmp_path / "emb")
    log = write_log(tmp_path / "eval.jsonl", models=("big",))
    cli = [sys.executable, "-m", "thrifty.server.cli"]
    common = ["--embedder", "static", "--embedder-dir", str(tmp_path / "emb"), "--data", str(log)]
    trained = subprocess.run(
        [
            *cli,
            "train",
            "router",
            *common,
            "--family",
            "kmeans",
            "--federated",
            "--clusters",
            "2,4",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr + trained.stdout
    assert "router artifact:" in trained.stdout and "selected_clusters" in trained.stdout
    # A model that came later: only its cell statistics are computed, from a calibration log.
    calibration = write_log(tmp_path / "calibration.jsonl", clients=1, per_client=60, seed=5, models=("small",))
    added = subprocess.run(
        [
            *cli,
            "router",
            "add-model",
            "--artifact",
            str(tmp_path / "r"),
            "--data",
            str(calibration),
            "--model",
            "small",
            "--out",
            str(tmp_path / "r2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    manifest = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert manifest["models"] == ["big", "small"] and manifest["metrics"]["added_models"] == ["small"]
    # Mistakes: a clear message, exit status 2, nothing written.
    again = subprocess.run(
        [*cli, "train", "router", *common, "--out", str(tmp_path / "r")], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2 and "exists" in again.stderr
    no_embedder = subprocess.run(
        [*cli, "train", "router", "--data", str(log), "--out", str(tmp_path / "r3")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert no_embedder.returncode == 2 and "--embedder-dir" in no_embedder.stderr
    assert not (tmp_path / "r3").exists()
    shutil.rmtree(tmp_path / "r.work", ignore_errors=True)
