"""The fast TAB policy: its difficulty estimate and features, the mask, rollouts, training and artifacts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.budgeter import world_tables
from thrifty.budgeter.tab.artifact import PolicySpec, ProblemBudget, read_artifact, write_fast
from thrifty.budgeter.tab.baselines import budgeted, calibrate_heuristic, fit, static_level
from thrifty.budgeter.tab.difficulty import estimate_turn
from thrifty.budgeter.tab.fast import FastLearner
from thrifty.budgeter.tab.features import PLAN, SCALARS, Context, context_of, feature_names, scalars
from thrifty.budgeter.tab.grpo import GrpoSettings, rollout, update
from thrifty.budgeter.tab.job import TabJobOptions
from thrifty.budgeter.tab.policy import allowed
from thrifty.budgeter.tab.train import RunSettings, evaluate, train
from thrifty.budgeter.world.arithmetic import tokenize, work
from thrifty.budgeter.world.chat_format import messages_for
from thrifty.budgeter.world.environment import TableEnv, run_episode
from thrifty.server.kit.artifacts import ArtifactError

HISTORY = [
    {"role": "user", "content": "x1 = 3*20"},
    {"role": "assistant", "content": "x1 is 60"},
    {"role": "user", "content": "x2 = x1*123+7"},
]


def _env() -> TableEnv:
    return TableEnv(world_tables.table(), world_tables.chains())


def test_difficulty_resolves_earlier_results_and_never_fails() -> None:
    found = estimate_turn(HISTORY)
    assert found.parsed and found.references == 1 and found.operators == 2
    assert found.digit_steps > estimate_turn(HISTORY[:1]).digit_steps  # 60*123+7 is more work than 3*20
    assert found.working == len("x1 is 60\n") + len(work(tokenize("60*123+7"), {}).scratchpad)
    unknown = estimate_turn([{"role": "user", "content": "x2 = x1+1"}])  # x1 was never stated
    assert not unknown.parsed and unknown.need == unknown.digits == 3
    chat = estimate_turn([{"role": "user", "content": [{"type": "text", "text": "What is 12 + 30?"}]}])
    assert not chat.parsed and chat.digits == 4 and chat.operators == 1


def test_features_have_a_fixed_layout() -> None:
    context = Context(tuple(HISTORY), 1, 300, 40, 64, 63, ("x1 = 3*20", "x2 = x1*123+7", "x3 = x2*x1"))
    plain, planned = scalars(context, False), scalars(context, True)
    assert len(plain) == len(SCALARS) and len(planned) == len(SCALARS) + len(PLAN)
    named = dict(zip(feature_names(True, 0), planned, strict=True))
    assert named["remaining_fraction"] == pytest.approx(260 / 300) and named["last_hit_budget"] == 1.0
    assert named["has_plan"] == 1.0 and 0 < named["share_of_remaining_steps"] < 1
    assert feature_names(False, 2)[-2:] == ("embedding_0", "embedding_1")
    no_plan = dict(zip(feature_names(True, 0), scalars(Context(tuple(HISTORY), 1, None, 0), True), strict=True))
    assert no_plan["has_plan"] == 0.0 and no_plan["no_budget"] == 1.0 and no_plan["remaining_fraction"] == 1.0


def test_the_mask_keeps_levels_within_what_is_left() -> None:
    assert allowed((16, 64), 40).tolist() == [True, False]
    assert allowed((16, 64), None).all() and not allowed((16, 64), 10).any()
    assert fit((16, 64), 64, 40) == 16 and fit((16, 64), 64, 10) == 0 and fit((16, 64), None, None) == 64


def test_rollouts_play_the_environment_exactly_as_run_episode_does() -> None:
    env = _env()
    learner = FastLearner(env.ladder, all_subq=True)
    greedy = rollout(env, learner, env.problems, 1, lambda p, t: None, 0.0, 1.0, None)
    for trajectory in greedy:  # the uniform initial policy picks the first level; replay it in the environment
        episode = run_episode(env, trajectory.problem, budgeted(static_level(16), env.ladder, lambda p, t: None))
        assert (episode.correct, episode.tokens, episode.thinking_tokens) == (
            trajectory.solved,
            trajectory.tokens,
            trajectory.thinking,
        )
    limited = rollout(env, learner, ["p1"], 1, lambda p, t: 20, 0.0, 1.0, None)[0]
    assert limited.budgets == [16, 0]  # 16 fits in 20; after 18 tokens spent nothing does: budget 0
    assert limited.actions == [0, -1]


def test_training_resumes_to_the_same_policy(tmp_path: Path) -> None:
    env = _env()
    settings = RunSettings(budget=100, penalty=0.01, seed=3, grpo=GrpoSettings(steps=6, problems_per_step=2, group=4))
    straight = FastLearner(env.ladder, False, seed=3)
    train(straight, env, env.problems, (env, env.problems), settings, tmp_path / "a")
    resumed = FastLearner(env.ladder, False, seed=3)
    train(resumed, env, env.problems, (env, env.problems), settings, tmp_path / "b", stop_at=3)
    again = FastLearner(env.ladder, False, seed=3)
    history = train(again, env, env.problems, (env, env.problems), settings, tmp_path / "b")
    assert history["step"] == 6 and [h["step"] for h in history["history"]] == [0, 6]
    for a, b in zip(straight.export().layers, again.export().layers, strict=True):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_training_learns_what_the_table_rewards(tmp_path: Path) -> None:
    """On the synthetic table the hard turn of p1 is right only with unlimited thinking or, here, at
    64; with B loose a trained policy gives it 64 and the easy turns 16."""
    table = world_tables.table(hard_right_at_64=True)
    env = TableEnv(table, world_tables.chains())
    learner = FastLearner(env.ladder, False, seed=0)
    settings = RunSettings(
        budget=200, penalty=0.05, seed=0, grpo=GrpoSettings(steps=40, problems_per_step=2, group=8, learning_rate=0.03)
    )
    before = evaluate(env, learner, env.problems, 200, 0.05)
    history = train(learner, env, env.problems, (env, env.problems), settings, tmp_path / "run")
    after = evaluate(env, learner, env.problems, 200, 0.05)
    assert before["accuracy"] == 0.5 and after["accuracy"] == 1.0, history["history"]


def test_a_thinking_price_makes_the_cheaper_of_two_solving_levels_win(tmp_path: Path) -> None:
    """p2's one turn is right at 16 (thinking 15) and at 64 (thinking 20, its unlimited use): TAB's
    reward, flat within B, cannot tell them apart and the policy stays where it started; with μ the
    5 tokens decide every group, and the policy learns to give that turn 16."""
    env = _env()
    grpo = GrpoSettings(steps=30, problems_per_step=2, group=8, learning_rate=0.03)
    context = context_of(env.reset("p2"), 200, False)
    found = {}
    for price in (0.0, 0.01):
        learner = FastLearner(env.ladder, False, seed=0)
        start = learner.probabilities([context], np.ones((1, 2), dtype=bool), 1.0)[0]
        settings = RunSettings(budget=200, penalty=0.05, seed=0, grpo=grpo, thinking_price=price)
        train(learner, env, env.problems, None, settings, tmp_path / f"run{price}")
        found[price] = learner.probabilities([context], np.ones((1, 2), dtype=bool), 1.0)[0]
    np.testing.assert_allclose(found[0.0], start, atol=1e-6)  # nothing in the reward to learn from
    assert found[0.01][0] > 0.9, found
    priced = evaluate(env, learner, ["p2"], 200, 0.05, thinking_price=0.01)
    assert priced["thinking"] == 15 and priced["reward"] == pytest.approx(1.0 - 0.15)


def test_artifacts_round_trip_and_refuse_what_they_cannot_serve(tmp_path: Path) -> None:
    env = _env()
    learner = FastLearner(env.ladder, True, seed=1)
    policy = learner.export()
    spec = PolicySpec(
        policy="fast",
        ladder=env.ladder,
        all_subq=True,
        solvers=("dense-s",),
        budget=ProblemBudget(tokens=300),
        penalty=0.01,
        features=policy.names,
        hidden=64,
    )
    folder = write_fast(tmp_path / "tab", spec, policy, metrics={"test": {"accuracy": 0.5}})
    loaded = read_artifact(folder)
    assert loaded.spec == spec and loaded.serves("dense-s") and not loaded.serves("dense-m")
    assert loaded.fast is not None
    x = np.random.default_rng(0).normal(size=(3, len(policy.names))).astype(np.float32)
    np.testing.assert_allclose(loaded.fast.logits(x), policy.logits(x), rtol=1e-6)
    with pytest.raises(FileExistsError):
        write_fast(tmp_path / "tab", spec, policy)
    (folder / "policy.safetensors").write_bytes(b"torn")
    with pytest.raises(ArtifactError, match="does not match its hash"):
        read_artifact(folder)
    other = spec.model_copy(update={"features": spec.features[:-1]})
    with pytest.raises(ValueError, match="differ from its spec"):
        write_fast(tmp_path / "other", other, policy)
    raw = json.loads((folder / "policy.json").read_text())
    assert raw["budget"] == {"tokens": 300, "per_turn": None} and raw["solvers"] == ["dense-s"]


def test_the_heuristic_calibrates_a_level_per_amount_of_work() -> None:
    table = world_tables.table(hard_right_at_64=True)
    chains = {c.id: c for c in world_tables.chains()}
    heuristic = calibrate_heuristic(table, lambda p, t: messages_for(chains[p], t), minimum=1)
    easy = estimate_turn(messages_for(chains["p2"], 0)).need
    hard = estimate_turn(messages_for(chains["p1"], 1)).need
    assert heuristic.level(easy) == 16 and heuristic.level(hard) == 64
    env = TableEnv(table, chains.values())
    episode = run_episode(env, "p1", budgeted(heuristic, env.ladder, lambda p, t: None))
    assert episode.budgets == (16, 64) and episode.correct
    observation = env.reset("p1")
    assert context_of(observation, 50, True).plan == ("x1 = 2+3", "x2 = x1*123456")


def test_micro_batched_updates_equal_the_whole_batch_update() -> None:
    """An LLM policy backpropagates a step's actions a micro-batch at a time; the summed gradients must
    be the whole batch's, so the update is the same (here on the fast network, micro-batches of 3)."""
    import torch

    env = _env()
    whole, parts = FastLearner(env.ladder, False, seed=1), FastLearner(env.ladder, False, seed=1)
    parts.micro_batch = 3
    settings = GrpoSettings(problems_per_step=2, group=4, learning_rate=0.05)
    for learner in (whole, parts):  # move off the uniform start, so the ratios and KL are not trivial
        last = learner.network[-1]
        assert isinstance(last, torch.nn.Linear)
        torch.nn.init.normal_(last.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    played = rollout(env, whole, env.problems, 4, lambda p, t: 100, 0.01, 1.0, np.random.default_rng(5))
    assert sum(len(t.contexts) for t in played) > 3  # more than one micro-batch
    found = [
        update(learner, torch.optim.Adam(learner.parameters(), lr=0.05), played, 4, settings)
        for learner in (whole, parts)
    ]
    assert found[0]["loss"] == pytest.approx(found[1]["loss"], rel=1e-5)
    assert found[0]["kl"] == pytest.approx(found[1]["kl"], rel=1e-5) and found[0]["kl"] > 0
    for a, b in zip(whole.export().layers, parts.export().layers, strict=True):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_a_job_records_unscaled_advantages_and_still_resumes_folders_from_before_the_option() -> None:
    plain = TabJobOptions(world=Path("world"), out=Path("out"))
    assert "scale_rewards" not in plain.settings()["grpo"]  # the settings such folders were written with
    unscaled = replace(plain, grpo=GrpoSettings(scale_rewards=False))
    assert unscaled.settings()["grpo"]["scale_rewards"] is False
    assert plain.settings() != unscaled.settings()  # so a rerun with the other choice is refused
