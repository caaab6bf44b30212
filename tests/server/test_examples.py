from pathlib import Path

import pytest

from thrifty.server.app import build_app
from thrifty.server.config import load_config

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + [ROOT / "docker" / "gateway.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_are_valid(path: Path) -> None:
    build_app(load_config(path, environ={}))
