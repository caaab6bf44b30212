"""The ``tab`` budgeter: what it reads of a request is what training read, and how it decides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.budgeter import world_tables
from thrifty.budgeter import BudgetRequest, build_budgeter
from thrifty.budgeter.tab.artifact import PolicySpec, ProblemBudget, write_fast
from thrifty.budgeter.tab.fast import FastLearner
from thrifty.budgeter.tab.features import context_of, featurize
from thrifty.budgeter.tab.grpo import GrpoSettings
from thrifty.budgeter.tab.serving import TabBudgeter, context_of_request, environment_policy
from thrifty.budgeter.tab.train import RunSettings, train
from thrifty.budgeter.world.environment import TableEnv, run_episode
from thrifty.server.sessions.model import Session, Turn


def _turn(budget: int, thinking: int, completion: int) -> Turn:
    return Turn("dense-s", budget, 20, completion, thinking, 0.1, "stop", 0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast policy trained on the synthetic table, where p1's hard turn needs 64 and easy turns 16."""
    folder = tmp_path_factory.mktemp("tab")
    env = TableEnv(world_tables.table(hard_right_at_64=True), world_tables.chains())
    learner = FastLearner(env.ladder, True, seed=0)
    grpo = GrpoSettings(steps=40, problems_per_step=2, group=8, learning_rate=0.03)
    train(learner, env, env.problems, None, RunSettings(200, 0.05, 0, grpo), folder / "run")
    policy = learner.export()
    spec = PolicySpec(
        policy="fast",
        ladder=env.ladder,
        all_subq=True,
        solvers=("dense-s",),
        budget=ProblemBudget(tokens=200),
        penalty=0.05,
        features=policy.names,
        hidden=64,
    )
    return write_fast(folder / "policy", spec, policy)


def test_the_gateway_rebuilds_the_context_training_saw() -> None:
    env = TableEnv(world_tables.table(), world_tables.chains())
    env.reset("p1")
    observation = env.step(16).observation
    assert observation is not None
    session = Session("s", 0.0, 200, spent=observation.spent, turn_count=1, turns=[_turn(16, 15, 18)])
    request = BudgetRequest("dense-s", {"messages": list(observation.messages)}, session, observation.sub_questions)
    served, trained = context_of_request(request, True), context_of(observation, 200, True)
    assert served == trained
    np.testing.assert_array_equal(featurize([served], True), featurize([trained], True))


async def test_it_budgets_easy_and_hard_turns_apart_and_records_why(trained: Path) -> None:
    budgeter = build_budgeter("tab", {"artifact": str(trained)})
    plan = ("x1 = 2+3", "x2 = x1*123456")
    first = BudgetRequest("dense-s", {"messages": [{"role": "user", "content": plan[0]}]}, Session("s", 0.0, 200), plan)
    easy = await budgeter.assign_decision(first)
    history = [
        {"role": "user", "content": plan[0]},
        {"role": "assistant", "content": "x1 is 5"},
        {"role": "user", "content": plan[1]},
    ]
    session = Session("s", 0.0, 200, spent=18, turn_count=1, turns=[_turn(16, 15, 18)])
    hard = await budgeter.assign_decision(BudgetRequest("dense-s", {"messages": history}, session, plan))
    assert (easy.budget, hard.budget) == (16, 64)
    assert easy.policy == hard.policy == "tab:fast"
    assert set(hard.detail["distribution"]) == {"16", "64"} and hard.detail["distribution"]["64"] > 0.5
    tight = Session("s", 0.0, 200, spent=150, turn_count=1, turns=[_turn(16, 15, 150)])
    squeezed = await budgeter.assign_decision(BudgetRequest("dense-s", {"messages": history}, tight, plan))
    assert squeezed.budget == 16  # 64 does not fit in the 50 tokens left
    broke = Session("s", 0.0, 200, spent=195, turn_count=1, turns=[_turn(16, 15, 195)])
    assert (await budgeter.assign(BudgetRequest("dense-s", {"messages": history}, broke, plan))) == 0


async def test_other_models_go_to_the_fallback_and_effort_maps_to_levels(trained: Path) -> None:
    budgeter = build_budgeter("tab", {"artifact": str(trained), "fallback": {"static": {"budget": 128}}})
    other = await budgeter.assign_decision(BudgetRequest("dense-m", {"messages": [{"role": "user", "content": "hi"}]}))
    assert (other.budget, other.policy) == (128, "fallback:static")
    default = build_budgeter("tab", {"artifact": str(trained)})
    assert (await default.assign(BudgetRequest("dense-m", {"messages": []}))) == 256
    assert [budgeter.effort_budget(e) for e in ("none", "minimal", "low", "medium", "high")] == [0, 16, 16, 64, 64]
    with pytest.raises(ValueError, match="fallback"):
        TabBudgeter(str(trained), fallback={"tab": {"artifact": str(trained)}})


async def test_a_broken_artifact_is_refused_and_the_loaded_policy_keeps_serving(trained: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(trained, folder)
    budgeter = TabBudgeter(str(folder))
    request = BudgetRequest("dense-s", {"messages": [{"role": "user", "content": "x1 = 2+3"}]}, Session("s", 0.0, 200))
    before = await budgeter.assign(request)
    (folder / "policy.safetensors").write_bytes(b"torn")
    with pytest.raises(ValueError, match="does not match its hash"):
        await budgeter.reload()
    assert await budgeter.assign(request) == before
    with pytest.raises(ValueError, match="TAB policy .*no manifest.json"):
        TabBudgeter(str(tmp_path / "missing"))
    assert budgeter.status()["solvers"] == ["dense-s"]


def test_the_artifact_plays_the_table_as_the_gateway_decides(trained: Path) -> None:
    """environment_policy (what the live benchmark predicts with) runs the gateway's decision code."""
    env = TableEnv(world_tables.table(hard_right_at_64=True), world_tables.chains())
    episode = run_episode(env, "p1", environment_policy(trained, lambda problem, turns: 200))
    assert episode.budgets == (16, 64) and episode.correct
    starved = run_episode(env, "p1", environment_policy(trained, lambda problem, turns: 40))
    assert starved.budgets == (16, 16) and not starved.correct  # 64 never fits in B = 40
