"""The llm TAB policy and the LLM judge on the bundled SmolLM2-135M-Instruct (``make model`` prepares it).

What the policy reads and how its letters become a distribution over the levels that fit; a GRPO
update moving a LoRA adapter toward the trajectory with the higher reward while the reference (the
adapter switched off) stays the base model; the adapter saved and loaded back scoring the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from thrifty.budgeter.tab.features import Context
from thrifty.budgeter.tab.grpo import GrpoSettings, Trajectory, update
from thrifty.budgeter.tab.llm import LlmScorer, prompt_messages
from thrifty.server.bundled_model import is_prepared, model_dir

pytestmark = pytest.mark.integration

DATA_DIR = Path(os.environ.get("THRIFTY_TEST_DATA_DIR", "data")).absolute()
LADDER = (16, 32, 64, 128, 256, 512)
EASY = Context(({"role": "user", "content": "x1 = 12+30"},), turn=0, budget=300, spent=0)
HARD = Context(
    (
        {"role": "user", "content": "x1 = 12+30"},
        {"role": "assistant", "content": "x1 is 42"},
        {"role": "user", "content": "x2 = x1*4587"},
    ),
    turn=1,
    budget=300,
    spent=40,
    last_budget=64,
    last_thinking=30,
    plan=("x1 = 12+30", "x2 = x1*4587", "x3 = x2-7"),
)


@pytest.fixture(scope="module")
def model() -> Path:
    folder = model_dir(DATA_DIR)
    if not is_prepared(folder):
        pytest.fail(f"the bundled model is not prepared in {DATA_DIR}: run 'make model' (make test does)")
    return folder


def test_each_view_reads_what_it_names() -> None:
    def text(view: str) -> str:
        return prompt_messages(HARD, LADDER, view)[-1]["content"]  # type: ignore[arg-type]

    assert "x1 = 12+30 -> x1 is 42" not in text("subq")
    assert "x1 = 12+30 -> x1 is 42" in text("history")
    assert "Steps still to come: x3 = x2-7" in text("all")
    assert "Steps still to come" not in text("history")
    for view in ("subq", "history", "all"):
        assert "Next step: x2 = x1*4587" in text(view)
        assert "Tokens left for this problem: 260 of 300." in text(view)
        assert "A) 16  B) 32  C) 64  D) 128  E) 256  F) 512" in text(view)


def test_scores_are_a_distribution_over_the_levels_that_fit(model: Path) -> None:
    scorer = LlmScorer(model, LADDER, "history")
    masks = np.array([[True] * 6, [True, True, True, False, False, False]])
    p = scorer.probabilities([EASY, HARD], masks, 1.0)
    assert p.shape == (2, 6)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert (p[1, 3:] == 0).all() and (p[1, :3] > 0).all()
    level, distribution = scorer.choose(HARD, masks[1])
    assert level == LADDER[int(np.argmax(distribution))] and level in (16, 32, 64)
    assert scorer.choose(HARD, np.zeros(6, dtype=bool))[0] == 0  # nothing fits: no thinking
    # Batching pads on the left: one context scores the same alone as beside a longer one.
    alone = scorer.probabilities([EASY], masks[:1], 1.0)
    assert np.allclose(alone[0], p[0], atol=1e-4)
    # Prompts are batched by length, and the rows come back in the order asked.
    swapped = scorer.probabilities([HARD, EASY], masks[::-1].copy(), 1.0)
    assert np.allclose(swapped[::-1], p, atol=1e-4)


def test_grpo_moves_the_adapter_toward_the_better_trajectory_and_saves_it(model: Path, tmp_path: Path) -> None:
    scorer = LlmScorer(model, LADDER, "history", lora=(8, 16), seed=0, batch_size=4)
    contexts, masks = [EASY, HARD], np.ones((2, 6), dtype=bool)
    before = scorer.probabilities(contexts, masks, 1.0)
    good, bad = [0, 4], [5, 1]  # level indices per turn: the rewarded trajectory and the other
    log_before = np.log(before)
    trajectories = [
        Trajectory(
            "p",
            contexts=list(contexts),
            masks=list(masks),
            actions=actions,
            old_log_probs=[float(log_before[t, a]) for t, a in enumerate(actions)],
            reward=reward,
        )
        for actions, reward in ((good, 1.0), (bad, 0.0))
    ]
    optimizer = torch.optim.Adam(scorer.parameters(), lr=5e-4)
    stats = update(scorer, optimizer, trajectories, 2, GrpoSettings(epochs=1, beta=0.0))
    assert stats["reward"] == 0.5 and stats["loss"] != 0.0
    after = scorer.probabilities(contexts, masks, 1.0)

    def ratio(actions: list[int]) -> float:  # a trajectory's mean policy ratio over its turns
        return float(np.mean([after[t, a] / before[t, a] for t, a in enumerate(actions)]))

    # One small step up the GRPO surrogate (advantage +1 for the rewarded trajectory, -1 for the other;
    # the turns share the adapter, so both trajectories' levels can move the same way, not by as much):
    assert ratio(good) - ratio(bad) > 0.01
    # The reference is the base model: switching the adapter off scores as before training.
    with torch.no_grad():
        reference = scorer._letter_logits(contexts, reference=True)
    assert np.allclose(torch.softmax(reference, dim=1).numpy(), before, atol=1e-4)
    scorer.save_adapter(tmp_path / "adapter")
    loaded = LlmScorer(model, LADDER, "history", adapter=tmp_path / "adapter")
    assert np.allclose(loaded.probabilities(contexts, masks, 1.0), after, atol=1e-4)
