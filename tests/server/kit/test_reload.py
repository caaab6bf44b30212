"""The reloadable-stage kit: load and swap off the loop, keep the old object on any failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from thrifty.budgeter import Budgeter
from thrifty.router import Router
from thrifty.server.kit.reload import ArtifactSlot, NothingToReload, Reloadable


def _read(folder: Path) -> str:
    text = (folder / "value").read_text()
    if text == "broken":
        raise ValueError("a broken artifact")
    return text


async def test_a_slot_swaps_only_a_good_artifact(tmp_path: Path) -> None:
    (tmp_path / "value").write_text("one")
    slot = ArtifactSlot(tmp_path, _read)
    held = slot.current  # what a request in flight holds
    (tmp_path / "value").write_text("two")
    assert await slot.reload() == "two" and slot.current == "two" and held == "one"
    (tmp_path / "value").write_text("broken")
    with pytest.raises(ValueError, match="broken"):
        await slot.reload()
    assert slot.current == "two"
    (tmp_path / "value").write_text("three")
    await asyncio.gather(*(slot.reload() for _ in range(5)))  # one at a time, all complete
    assert slot.current == "three" and slot.describe()["artifact"] == str(tmp_path)


async def test_every_stage_speaks_the_protocol() -> None:
    from thrifty.budgeter.builtin import StaticBudgeter
    from thrifty.router.builtin import CheapestRouter

    for stage in (CheapestRouter(), StaticBudgeter(budget=3)):
        assert isinstance(stage, Reloadable) and isinstance(stage, Router | Budgeter)
        with pytest.raises(NothingToReload):
            await stage.reload()
    assert StaticBudgeter(budget=3).status() == {"budget": 3}
