"""The quick reasoning world, built once per test session for the modules that need its solvers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("THRIFTY_TEST_DATA_DIR", "data")).absolute()
THRIFTY = [sys.executable, "-m", "thrifty.server.cli"]


# A safety net against a hung build, not a speed requirement: the quick build computes a fixed number of
# steps (about 3 minutes on an idle 2-core machine) and its own limit per solver is in solvers.yaml.
BUILD_TIMEOUT_S = 2400


def build_world(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [*THRIFTY, "world", "build", "--quick", "--out", str(out), *extra]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the quick world build was still running after {BUILD_TIMEOUT_S} s: a hang?") from exc


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    done = build_world(out)
    assert done.returncode == 0, f"quick world build failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out
