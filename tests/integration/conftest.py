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


def build_world(out: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*THRIFTY, "world", "build", "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    done = build_world(out)
    assert done.returncode == 0, f"quick world build failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out
