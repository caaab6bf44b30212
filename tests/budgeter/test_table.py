"""The budget table: budgets per model and turn from an artifact, reloaded whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thrifty.budgeter import BudgetRequest, build_budgeter
from thrifty.budgeter.table import TABLE, TableBudgeter, write_table
from thrifty.server.sessions.model import Session


def _ask(model: str, turns: int = 0, remaining_of: int | None = None) -> BudgetRequest:
    session = Session("s", 0.0, remaining_of, turn_count=turns)
    return BudgetRequest(model, {}, session)


async def test_budgets_by_model_then_turn_then_default(tmp_path: Path) -> None:
    write_table(tmp_path / "t", 256, {"big": 64, "free": None}, [512, 128])
    budgeter = build_budgeter("table", {"artifact": str(tmp_path / "t")})
    assert await budgeter.assign(_ask("big")) == 64
    assert await budgeter.assign(_ask("free")) is None  # no limit
    assert [await budgeter.assign(_ask("small", turns=t)) for t in (0, 1, 5)] == [512, 128, 128]
    assert await budgeter.assign(_ask("small", remaining_of=100)) == 100  # never past what is left of B
    write_table(tmp_path / "d", 32)
    assert await TableBudgeter(str(tmp_path / "d")).assign(_ask("small", turns=3)) == 32


async def test_a_reload_takes_a_new_table_and_refuses_a_broken_one(tmp_path: Path) -> None:
    folder = write_table(tmp_path / "t", 256)
    budgeter = TableBudgeter(str(folder))
    write_table(folder, 8, replace=True)
    status = await budgeter.reload()
    assert status["table"]["default"] == 8 and await budgeter.assign(_ask("m")) == 8
    (folder / TABLE).write_text(json.dumps({"default": -1}))
    with pytest.raises(ValueError, match="does not match its hash"):
        await budgeter.reload()
    assert await budgeter.assign(_ask("m")) == 8  # still the last good table
    with pytest.raises(ValueError, match="budget table .*no manifest.json"):
        TableBudgeter(str(tmp_path / "missing"))


def test_the_command_writes_a_table_and_replaces_it_only_when_told(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from thrifty.budgeter.table import read_table
    from thrifty.server.cli import app

    runner = CliRunner()
    args = [
        "budgeter",
        "table",
        "--out",
        str(tmp_path / "t"),
        "--default",
        "256",
        "--model",
        "big=32",
        "--turn",
        "none",
    ]
    assert runner.invoke(app, args).exit_code == 0
    table = read_table(tmp_path / "t")
    assert table.default == 256 and table.models == {"big": 32} and table.turns == [None]
    again = runner.invoke(app, ["budgeter", "table", "--out", str(tmp_path / "t"), "--default", "8"])
    assert again.exit_code == 2 and "--replace" in again.output
    assert (
        runner.invoke(app, ["budgeter", "table", "--out", str(tmp_path / "t"), "--default", "8", "--replace"]).exit_code
        == 0
    )
    assert read_table(tmp_path / "t").default == 8
    bad = runner.invoke(app, ["budgeter", "table", "--out", str(tmp_path / "u"), "--model", "big"])
    assert bad.exit_code == 2 and "NAME=BUDGET" in bad.output
