"""``thrifty train budgeter``'s job: choosing the thinking price μ on validation problems."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.budgeter import world_tables
from thrifty.budgeter.tab.artifact import read_artifact
from thrifty.budgeter.tab.grpo import GrpoSettings
from thrifty.budgeter.tab.job import TabJobOptions, choose_price, load_world, run_job, static_validation
from thrifty.budgeter.tab.train import BudgetRule
from thrifty.server.kit.jobs import JobError


def _world(folder: Path) -> Path:
    """A world folder around the small table: p1 (easy, then hard) and p2 (easy), both splits."""
    (folder / "data").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"environment": {"serving": ["dense-s"]}}))
    lines = "\n".join(json.dumps(chain.to_json()) for chain in world_tables.chains()) + "\n"
    for split in ("train", "test"):
        (folder / "data" / f"{split}.jsonl").write_text(lines)
        target = folder / "tables" / "dense-s" / f"{split}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        world_tables.table().write(target)
    return folder


def _run(accuracy: float, thinking: float = 10.0) -> dict[str, Any]:
    found = {"reward": accuracy, "accuracy": accuracy, "thinking": thinking, "tokens": thinking + 5}
    return {"validation": found, "test": found}


def _options(tmp_path: Path, grid: tuple[float, ...], tolerance: float = 0.01) -> TabJobOptions:
    return TabJobOptions(
        world=_world(tmp_path / "world"),
        out=tmp_path / "job",
        budget=BudgetRule(per_turn=100),
        price_grid=grid,
        accuracy_tolerance=tolerance,
        seeds=(0, 1),
        grpo=GrpoSettings(steps=2, problems_per_step=1, group=2),
        eval_every=1,
        validation_problems=1,
    )


def test_static_levels_on_validation_are_the_reference(tmp_path: Path) -> None:
    world = load_world(_options(tmp_path, (0.0, 1e-3)))
    assert world.validation_problems and set(world.validation_problems) <= {"p1", "p2"}
    # p1's hard turn is wrong at every level, p2's one easy turn right at both.
    assert static_validation(world) == {"16": float(world.validation_problems == ["p2"])} | {
        "64": float(world.validation_problems == ["p2"])
    }


@pytest.mark.parametrize(
    ("accuracies", "tolerance", "chosen"),
    [
        ({0.0: (0.5, 0.5), 1e-3: (0.5, 0.5), 1e-2: (0.0, 0.5)}, 0.01, 1e-3),  # 1e-2 loses a quarter
        ({0.0: (0.5, 0.5), 1e-3: (0.5, 0.5), 1e-2: (0.0, 0.5)}, 0.25, 1e-2),  # ... unless that is allowed
        ({0.0: (0.0, 0.5), 1e-3: (0.0, 0.0)}, 0.01, 0.0),  # none keeps it: the most accurate
        ({0.0: (0.0, 0.0), 1e-3: (0.0, 0.0)}, 0.01, 0.0),  # a tie: the smaller price
    ],
)
def test_the_largest_price_that_keeps_validation_accuracy_is_chosen(
    tmp_path: Path, accuracies: dict[float, tuple[float, float]], tolerance: float, chosen: float
) -> None:
    options = _options(tmp_path, tuple(accuracies), tolerance)
    world = load_world(options)
    world = replace(world, validation_problems=["p1", "p2"])  # the best static level solves p2: 0.5
    runs = {
        f"mu{mu:g}-seed{seed}": _run(a)
        for mu, seeds in accuracies.items()
        for seed, a in zip((0, 1), seeds, strict=True)
    }
    choice = choose_price(options, world, runs)
    assert choice["reference"] == 0.5 and choice["chosen"] == chosen
    assert choice["prices"]["0"]["validation_accuracy"] == pytest.approx(sum(accuracies[0.0]) / 2)


def test_a_job_with_a_price_grid_trains_every_price_and_serves_the_chosen_one(tmp_path: Path) -> None:
    options = _options(tmp_path, (0.0, 0.5))
    record = run_job(options, progress=False)
    # p2 is solved at every level, so even 0.5 a token keeps the validation accuracy: the larger wins.
    assert record["price"]["chosen"] == 0.5
    assert set(record["runs"]) == {"mu0-seed0", "mu0-seed1", "mu0.5-seed0", "mu0.5-seed1"}
    assert set(record["seeds"]) == {"seed0", "seed1"}
    assert all(record["seeds"][f"seed{s}"]["folder"] == f"mu0.5-seed{s}" for s in (0, 1))
    for name in record["runs"]:
        assert read_artifact(options.out / "seeds" / name).spec.thinking_price == float(name[2:].split("-")[0])
    policy = read_artifact(options.out / "policy")
    assert policy.spec.thinking_price == 0.5
    manifest = json.loads((options.out / "policy" / "manifest.json").read_text())
    assert manifest["metrics"]["thinking_price"]["chosen"] == 0.5
    again = run_job(options, progress=False)  # resumed: every stage done, the same choice
    assert again["price"] == record["price"] and again["chosen"] == record["chosen"]


def test_a_price_grid_is_part_of_the_settings_a_resumed_job_must_match(tmp_path: Path) -> None:
    plain = TabJobOptions(world=Path("world"), out=Path("out"))
    assert "price_grid" not in plain.settings() and "accuracy_tolerance" not in plain.settings()
    options = _options(tmp_path, (0.0, 0.5))
    run_job(options, progress=False)
    with pytest.raises(JobError):
        run_job(replace(options, price_grid=(0.0, 0.1)), progress=False)


def test_a_grid_naming_a_price_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="twice"):
        run_job(_options(tmp_path, (0.0, 0.0)), progress=False)


@pytest.mark.parametrize("grid", ["0", "0,x", "0,-1e-3", "1e-3,1e-3", "0,nan"])
def test_the_command_refuses_a_grid_it_cannot_choose_from(tmp_path: Path, grid: str) -> None:
    from typer.testing import CliRunner

    from thrifty.server.cli import app

    args = ["train", "budgeter", "--world", str(_world(tmp_path / "w")), "--out", str(tmp_path / "job")]
    done = CliRunner().invoke(app, [*args, "--choose-price-from", grid])
    assert done.exit_code != 0 and "--choose-price-from" in done.output
    assert not (tmp_path / "job").exists()  # refused before anything was written


def test_the_command_says_which_price_it_chose(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from thrifty.server.cli import app

    args = [
        *("train", "budgeter", "--world", str(_world(tmp_path / "w")), "--out", str(tmp_path / "job")),
        *("--budget", "100/turn", "--seeds", "0", "--steps", "2", "--problems-per-step", "1", "--group", "2"),
        *("--validation-problems", "1", "--choose-price-from", "0,0.5", "--accuracy-tolerance", "0.05"),
    ]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "thinking price μ = 0.5 (the largest μ keeping validation accuracy" in done.output
    assert json.loads((tmp_path / "job" / "policy" / "manifest.json").read_text())["metrics"]["thinking_price"][
        "tolerance"
    ] == pytest.approx(0.05)
