"""GRPO for thinking budgets: groups of allocation trajectories, one advantage per trajectory.

For a problem with token budget B, one *trajectory* is a budget per turn, sampled from the policy at a
temperature; the solver's outcome at each budget comes from the budget environment. Its reward is
read once, at the end (TAB's):

    R = [every turn right] − λ · max(0, Σ_t b_t − B) − μ · Σ_t thinking_t

where μ, a price on the thinking tokens the solver actually used, is 0 in TAB's reward (the default):
that reward is flat within B, so a policy has no reason to spend less than B allows. A small μ makes
the cheaper of two allocations that both solve the problem the better one (within a group whose
trajectories all solve, it alone sets the advantages), which is what savings in tokens used ask for.

A *group* is G trajectories of the same problem. Each trajectory's advantage is its reward normalised
within its group, ``(R − mean) / (std + ε)`` (std with Bessel's correction, as TRL computes it; a group
whose rewards are all equal teaches nothing and gets 0), and every turn's action of that trajectory
shares it. The loss per action is PPO's clipped surrogate plus β times the k3 estimate of the KL
divergence to the reference policy; actions are averaged within a trajectory, trajectories over the
batch. No value network.

What is policy-specific (how a context becomes a distribution) is a :class:`Learner`: the fast
network (:mod:`thrifty.budgeter.tab.fast`) or the LLM (:mod:`thrifty.budgeter.tab.llm`). Rollouts go
through the budget environment's API (:class:`thrifty.budgeter.world.environment.TableEnv`), the
same one the baselines and the evaluation use.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from thrifty.budgeter.tab.features import Context, context_of
from thrifty.budgeter.tab.policy import allowed

if TYPE_CHECKING:
    import torch

    from thrifty.budgeter.world.environment import BudgetEnv, Observation, StepResult

EPSILON = 1e-4


def reward(
    solved: bool, allocated: int, budget: int | None, penalty: float, thinking: int = 0, price: float = 0.0
) -> float:
    """TAB's reward: the problem solved or not, less λ per token allocated beyond B (and, when ``price``
    μ is set, μ per thinking token used)."""
    overrun = 0 if budget is None else max(0, allocated - budget)
    return float(solved) - penalty * overrun - price * thinking


def group_advantages(rewards: np.ndarray, scale: bool = True) -> np.ndarray:
    """(problems, G) rewards → advantages centred within each row (0 where a row is constant) and, with
    ``scale`` (GRPO's), divided by the row's standard deviation.

    Scaling makes a group's advantages the same size whatever its rewards' spread: in a group whose
    trajectories all solve the problem, or all fail it, a thinking price of 1e-4 per token then weighs
    as much as solving does elsewhere. Without it (as Dr. GRPO and TRL's ``scale_rewards="none"`` do;
    only the std goes, each turn's action keeps its weight) such a group pushes only as hard as its
    rewards differ, so a small price breaks ties without outweighing accuracy.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError("advantages need groups of at least 2 trajectories: rewards of shape (problems, G ≥ 2)")
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    spread = rewards.std(axis=1, ddof=1, keepdims=True)
    if not scale:
        return np.where(spread > 0, centred, 0.0)
    return np.where(spread > 0, centred / (spread + EPSILON), 0.0)


def grpo_terms(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per action: the loss term (clipped surrogate, negated, plus β·KL), the k3 KL and whether clipped."""
    import torch

    ratio = torch.exp(log_probs - old_log_probs)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    difference = reference_log_probs - log_probs
    kl = torch.exp(difference) - difference - 1
    return -surrogate + beta * kl, kl, ((ratio - 1).abs() > clip).float()


def action_weights(trajectory: torch.Tensor, trajectories: int) -> torch.Tensor:
    """Each action's weight in the loss: averaged within its trajectory, trajectories averaged."""
    import torch

    counts = torch.zeros(trajectories).index_add_(0, trajectory, torch.ones(len(trajectory)))
    present = int((counts > 0).sum())
    return 1.0 / (counts[trajectory] * max(present, 1))


def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    reference_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    trajectory: torch.Tensor,
    trajectories: int,
    clip: float,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss over a batch of actions (1-D tensors, one entry per action).

    ``trajectory`` says which trajectory each action belongs to (0..trajectories-1); each action's
    term is averaged within its trajectory, then trajectories are averaged.
    """
    per_action, kl, clipped = grpo_terms(log_probs, old_log_probs, reference_log_probs, advantages, clip, beta)
    loss = (per_action * action_weights(trajectory, trajectories).to(per_action.dtype)).sum()
    return loss, {"kl": float(kl.detach().mean()), "clipped": float(clipped.mean())}


class Learner(Protocol):
    """A trainable budget policy."""

    ladder: tuple[int, ...]
    all_subq: bool
    scales_features: bool  # fit_scaling wants the contexts the initial policy meets (the LLM reads text)
    micro_batch: int | None  # actions per backward pass (None: the whole batch at once)

    def probabilities(self, contexts: Sequence[Context], masks: np.ndarray, temperature: float) -> np.ndarray:
        """(n, levels) sampling distributions, no gradient."""
        ...

    def log_probs(
        self, contexts: Sequence[Context], masks: np.ndarray, actions: np.ndarray, temperature: float
    ) -> torch.Tensor:
        """Log-probabilities of ``actions`` under the policy being trained, with gradient."""
        ...

    def reference_log_probs(
        self, contexts: Sequence[Context], masks: np.ndarray, actions: np.ndarray, temperature: float
    ) -> torch.Tensor:
        """Log-probabilities of ``actions`` under the reference policy, without gradient."""
        ...


@dataclass
class Trajectory:
    problem: str
    contexts: list[Context] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)  # ladder index; -1 where no level fitted (budget 0)
    old_log_probs: list[float] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    solved: bool = False
    tokens: int = 0
    thinking: int = 0
    reward: float = 0.0


Budget = Callable[[str, int], int | None]  # (problem, turns) → its token budget B


def rollout(
    env: BudgetEnv,
    learner: Learner,
    problems: Sequence[str],
    group: int,
    budget: Budget,
    penalty: float,
    temperature: float,
    rng: np.random.Generator | None,
    price: float = 0.0,
) -> list[Trajectory]:
    """``group`` trajectories per problem, in lockstep turn by turn so each turn is one batched call.

    ``rng`` None: greedy (the evaluation's); otherwise actions are sampled at ``temperature``.
    ``penalty`` and ``price`` are the reward's λ and μ (:func:`reward`).
    """
    trajectories = [Trajectory(problem) for problem in problems for _ in range(group)]
    # Each trajectory is its own episode: a fork of a table environment each, or else the one
    # environment replayed per trajectory; either way the bookkeeping is exactly the environment's.
    fork = getattr(env, "fork", None)
    states: list[Any] = [fork() for _ in trajectories] if fork is not None else [_Replay(env) for _ in trajectories]
    observations = [state.reset(t.problem) for state, t in zip(states, trajectories, strict=True)]
    limits = [budget(t.problem, o.turns) for t, o in zip(trajectories, observations, strict=True)]
    active = list(range(len(trajectories)))
    while active:
        contexts = [context_of(observations[i], limits[i], learner.all_subq) for i in active]
        masks = np.stack([allowed(learner.ladder, c.remaining) for c in contexts])
        probabilities = learner.probabilities(contexts, masks, temperature if rng is not None else 1.0)
        still = []
        for row, i in enumerate(active):
            trajectory, mask = trajectories[i], masks[row]
            if mask.any():
                p = probabilities[row]
                action = int(rng.choice(len(p), p=p / p.sum())) if rng is not None else int(np.argmax(p))
                level = learner.ladder[action]
                trajectory.contexts.append(contexts[row])
                trajectory.masks.append(mask)
                trajectory.old_log_probs.append(float(np.log(max(p[action], 1e-12))))
            else:
                action, level = -1, 0
            trajectory.actions.append(action)
            trajectory.budgets.append(level)
            result = states[i].step(level)
            trajectory.tokens += result.tokens
            trajectory.thinking += result.thinking_tokens
            if result.done:
                trajectory.solved = bool(result.problem_correct)
                trajectory.reward = reward(
                    trajectory.solved, sum(trajectory.budgets), limits[i], penalty, trajectory.thinking, price
                )
            else:
                assert result.observation is not None
                observations[i] = result.observation
                still.append(i)
        active = still
    return trajectories


class _Replay:
    """One trajectory's episode in an environment that holds one episode at a time and cannot fork:
    each step replays this trajectory's budgets so far (a live environment is never trained on)."""

    def __init__(self, env: BudgetEnv) -> None:
        self.env, self.problem = env, ""
        self.budgets: list[int] = []

    def reset(self, problem: str) -> Observation:
        self.problem, self.budgets = problem, []
        return self.env.reset(problem)

    def step(self, budget: int) -> StepResult:
        self.env.reset(self.problem)
        for earlier in self.budgets:
            self.env.step(earlier)
        self.budgets.append(budget)
        return self.env.step(budget)


@dataclass(frozen=True, slots=True)
class GrpoSettings:
    # The fast policy's defaults: on the world's table, 150 steps of 32 problems left TAB at a 20 % saving
    # where 600 steps of 64 reached 37 % (benchmarks/budgeter/RESULTS.md); that is 2-3 minutes on 2 cores.
    # The paper's LLM policy took 125 steps of 64 problems.
    steps: int = 600
    problems_per_step: int = 64
    group: int = 8
    temperature: float = 0.6
    learning_rate: float = 3e-3
    epochs: int = 2  # optimisation passes over each batch of trajectories
    clip: float = 0.2
    beta: float = 0.01  # weight of the KL to the reference policy
    scale_rewards: bool = True  # divide each group's centred rewards by their std (GRPO); False: Dr. GRPO


def update(
    learner: Learner,
    optimizer: torch.optim.Optimizer,
    trajectories: Sequence[Trajectory],
    group: int,
    settings: GrpoSettings,
) -> dict[str, float]:
    """One GRPO update from a batch of groups (trajectories ordered problem by problem)."""
    import torch

    rewards = np.asarray([t.reward for t in trajectories]).reshape(-1, group)
    advantages = group_advantages(rewards, settings.scale_rewards).reshape(-1)
    contexts, masks, actions, old, owner, weight = [], [], [], [], [], []
    for index, (trajectory, advantage) in enumerate(zip(trajectories, advantages, strict=True)):
        taken = [k for k, a in enumerate(trajectory.actions) if a >= 0]
        for position, k in enumerate(taken):
            contexts.append(trajectory.contexts[position])
            masks.append(trajectory.masks[position])
            actions.append(trajectory.actions[k])
            old.append(trajectory.old_log_probs[position])
            owner.append(index)
            weight.append(advantage)
    stats = {"reward": float(rewards.mean()), "solved": float(np.mean([t.solved for t in trajectories]))}
    stats["thinking"] = float(np.mean([t.thinking for t in trajectories]))
    if not contexts or not np.any(advantages):
        return stats | {"loss": 0.0, "kl": 0.0, "clipped": 0.0}
    mask_array, action_array = np.stack(masks), np.asarray(actions)
    old_t = torch.tensor(old, dtype=torch.float32)
    advantages_t = torch.tensor(weight, dtype=torch.float32)
    owner_t = torch.tensor(owner, dtype=torch.long)
    weights = action_weights(owner_t, len(trajectories))
    size = learner.micro_batch or len(contexts)
    parts = [slice(start, start + size) for start in range(0, len(contexts), size)]
    # The reference does not move during the update: its log-probabilities are read once, not per epoch.
    references = [
        learner.reference_log_probs(contexts[part], mask_array[part], action_array[part], settings.temperature)
        for part in parts
    ]
    for _ in range(settings.epochs):
        # The loss is a weighted sum over actions, so micro-batches' gradients add up to the batch's:
        # an LLM policy keeps one micro-batch's activations at a time, not the whole step's.
        optimizer.zero_grad(set_to_none=True)
        loss, kl, clipped = 0.0, 0.0, 0.0
        for part, reference in zip(parts, references, strict=True):
            new = learner.log_probs(contexts[part], mask_array[part], action_array[part], settings.temperature)
            terms, kls, clips = grpo_terms(
                new, old_t[part], reference, advantages_t[part], settings.clip, settings.beta
            )
            piece = (terms * weights[part].to(terms.dtype)).sum()
            piece.backward()  # type: ignore[no-untyped-call]
            loss += float(piece.detach())
            kl += float(kls.detach().sum())
            clipped += float(clips.sum())
        optimizer.step()
    return stats | {"loss": loss, "kl": kl / len(contexts), "clipped": clipped / len(contexts)}


def batch_of(problems: Sequence[str], size: int, seed: int, step: int) -> list[str]:
    """The problems of step ``step``: depends only on the seed and the step, so a resumed run sees the same."""
    rng = random.Random(seed * 1_000_003 + step)
    return rng.sample(list(problems), min(size, len(problems)))
