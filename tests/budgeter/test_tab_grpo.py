"""GRPO for budgets: the reward, the group advantage and the loss, on numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thrifty.budgeter.tab.grpo import EPSILON, group_advantages, grpo_loss, reward


def test_reward_is_solved_less_lambda_per_token_over_budget() -> None:
    assert reward(True, 300, 400, 0.01) == 1.0  # within B: no penalty
    assert reward(True, 450, 400, 0.01) == pytest.approx(1.0 - 0.5)  # 50 tokens over, λ = 0.01
    assert reward(False, 450, 400, 0.01) == pytest.approx(-0.5)
    assert reward(False, 10_000, None, 0.01) == 0.0  # no B: nothing to overrun


def test_the_thinking_price_charges_tokens_used_within_budget_too() -> None:
    assert reward(True, 300, 400, 0.01, thinking=120) == 1.0  # μ = 0: TAB's reward ignores what was used
    assert reward(True, 300, 400, 0.01, thinking=120, price=0.001) == pytest.approx(1.0 - 0.12)
    assert reward(True, 450, 400, 0.01, thinking=120, price=0.001) == pytest.approx(1.0 - 0.5 - 0.12)


def test_group_advantages_normalise_within_each_group() -> None:
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    found = group_advantages(rewards)
    std = math.sqrt(((0.5**2) * 4) / 3)  # Bessel's correction: the sample std of 1, 0, 0, 1
    assert found[0] == pytest.approx(np.array([0.5, -0.5, -0.5, 0.5]) / (std + EPSILON))
    assert np.all(found[1] == 0.0)  # a group that agrees teaches nothing
    with pytest.raises(ValueError, match="groups of at least 2"):
        group_advantages(np.array([[1.0], [0.0]]))


def test_unscaled_advantages_keep_a_small_price_small() -> None:
    # Both trajectories of the first group solve; the second spent 100 more thinking tokens at μ = 1e-4.
    # The second group is split by solving. Scaled, both groups push equally hard; unscaled, the price
    # only breaks the tie: a hundredth of what solving is worth.
    rewards = np.array([[1.0, 0.99], [1.0, 0.0]])
    scaled = group_advantages(rewards)
    assert abs(scaled[0, 0]) == pytest.approx(abs(scaled[1, 0]), rel=0.02)
    unscaled = group_advantages(rewards, scale=False)
    assert unscaled[0] == pytest.approx([0.005, -0.005])
    assert unscaled[1] == pytest.approx([0.5, -0.5])
    assert np.all(group_advantages(np.array([[0.3, 0.3]]), scale=False) == 0.0)


def test_grpo_loss_by_hand() -> None:
    # Two trajectories: the first took two actions (advantage +1), the second one (advantage -1).
    old = torch.log(torch.tensor([0.5, 0.25, 0.5]))
    new = torch.log(torch.tensor([0.55, 0.25, 0.8]))  # ratios 1.1, 1.0, 1.6
    ref = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    advantages = torch.tensor([1.0, 1.0, -1.0])
    owner = torch.tensor([0, 0, 1])
    loss, info = grpo_loss(new, old, ref, advantages, owner, 2, clip=0.2, beta=0.1)

    def kl(p_new: float, p_ref: float) -> float:
        d = math.log(p_ref) - math.log(p_new)
        return math.exp(d) - d - 1

    # Surrogates: min(1.1·1, clip(1.1)·1) = 1.1; min(1.0, 1.0) = 1.0; min(1.6·-1, 1.2·-1) = -1.6.
    first = ((-1.1 + 0.1 * kl(0.55, 0.5)) + (-1.0 + 0.1 * kl(0.25, 0.5))) / 2
    second = 1.6 + 0.1 * kl(0.8, 0.5)
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-5)
    assert info["clipped"] == pytest.approx(1 / 3)  # the 1.6 ratio is outside 1 ± 0.2
    assert info["kl"] == pytest.approx((kl(0.55, 0.5) + kl(0.25, 0.5) + kl(0.8, 0.5)) / 3, rel=1e-5)


def test_the_loss_pushes_towards_actions_with_positive_advantage() -> None:
    logits = torch.zeros(3, requires_grad=True)
    log_probs = torch.log_softmax(logits, dim=0)
    taken = log_probs[torch.tensor([0, 1])]
    loss, _ = grpo_loss(
        taken, taken.detach(), taken.detach(), torch.tensor([1.0, -1.0]), torch.tensor([0, 1]), 2, 0.2, 0.0
    )
    loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None and logits.grad[0] < 0 < logits.grad[1]  # descent raises 0, lowers 1


def test_rollouts_through_forks_equal_rollouts_through_replays() -> None:
    """A table environment forks one episode per trajectory; one that cannot is replayed: same result."""
    from tests.budgeter import world_tables
    from thrifty.budgeter.tab.fast import FastLearner
    from thrifty.budgeter.tab.grpo import rollout
    from thrifty.budgeter.world.environment import TableEnv

    env = TableEnv(world_tables.table(hard_right_at_64=True), world_tables.chains())

    class Unforkable:  # the BudgetEnv protocol only: reset and step
        ladder = env.ladder

        def reset(self, problem: str):  # type: ignore[no-untyped-def]
            return env.reset(problem)

        def step(self, budget: int | None):  # type: ignore[no-untyped-def]
            return env.step(budget)

    learner = FastLearner(env.ladder, False, seed=0)
    played = {
        name: rollout(source, learner, ["p1", "p2"], 6, lambda p, t: 70, 0.01, 1.0, np.random.default_rng(5))  # type: ignore[arg-type]
        for name, source in (("fork", env), ("replay", Unforkable()))
    }
    summary = {
        name: [(t.problem, t.budgets, t.solved, t.tokens, t.reward) for t in trajectories]
        for name, trajectories in played.items()
    }
    assert summary["fork"] == summary["replay"]
    assert {b for _, budgets, *_ in summary["fork"] for b in budgets} == {16, 64}  # both levels were sampled
    assert any(solved for _, _, solved, *_ in summary["fork"]) and not all(s for _, _, s, *_ in summary["fork"])
