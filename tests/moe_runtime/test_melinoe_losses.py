"""MELINOE's losses against hand-computed values and against the recurrence they unroll."""

from __future__ import annotations

import pytest
import torch

from thrifty.moe_runtime import CacheConfig, ExpertCache
from thrifty.moe_runtime.melinoe.losses import (
    cache_simulation_loss,
    distinct_experts,
    rank_matching_loss,
    soft_cache_states,
    straight_through_top_k,
)


def _one_hot(rows: list[list[int]], experts: int) -> torch.Tensor:
    out = torch.zeros(len(rows), experts)
    for t, row in enumerate(rows):
        out[t, row] = 1.0
    return out


def _peaked(rows: list[list[int]], experts: int) -> torch.Tensor:
    """Router probabilities whose top-k are the given experts."""
    logits = torch.full((len(rows), experts), -4.0)
    for t, row in enumerate(rows):
        logits[t, row] = 4.0
    return torch.softmax(logits, dim=-1)


def _recurrence(routed: torch.Tensor, *, slots: int, top_k: int, gamma: float) -> torch.Tensor:
    """c_{t+1} = (γ·Z_t·c_t + r_t) / Z_{t+1}, Z_{t+1} = γ·Z_t + K/C, step by step."""
    state, z = torch.zeros(routed.shape[-1]), 0.0
    states = []
    for r in routed:
        states.append(state)
        z_next = gamma * z + top_k / slots
        state = (gamma * z * state + r) / z_next
        z = z_next
    return torch.stack(states)


def test_the_unrolled_states_follow_the_recurrence_and_hold_c_slots() -> None:
    g = torch.Generator().manual_seed(0)
    routed = torch.zeros(40, 16)
    routed.scatter_(1, torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(40)]), 1.0)
    for slots, gamma in ((4, 0.9), (8, 0.5), (2, 0.99)):
        states = soft_cache_states(routed, None, slots=slots, top_k=4, gamma=gamma)
        assert torch.allclose(states, _recurrence(routed, slots=slots, top_k=4, gamma=gamma), atol=1e-5)
        assert torch.equal(states[0], torch.zeros(16))  # cold start
        assert torch.allclose(states[1:].sum(-1), torch.full((39,), float(slots)), atol=1e-4)


def test_soft_cache_states_by_hand() -> None:
    # E = 4, K = 1, C = 2, γ = 0.5, experts 0, 1, 2: Z = 0.5, 0.75; c_1 = 2·e0; c_2 = (0.5·e0 + e1) / 0.75
    states = soft_cache_states(_one_hot([[0], [1], [2]], 4), None, slots=2, top_k=1, gamma=0.5)
    expected = torch.tensor([[0.0, 0, 0, 0], [2.0, 0, 0, 0], [2 / 3, 4 / 3, 0, 0]])
    assert torch.allclose(states, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("rows", "slots", "top_k", "gamma", "expected"),
    [
        # a cold miss, a hit (c = 2 is clamped to 1: resident), a miss
        ([[0], [0], [1]], 2, 1, 0.5, (1 + 0 + 1) / 3),
        # E = 4, K = C = 2: the pair is resident after its first token; {2, 3} misses both
        ([[0, 1], [0, 1], [2, 3]], 2, 2, 0.9, (2 + 0 + 2) / 3),
        # c_3 = (0.25·e0 + 0.5·e1 + e2) / 0.875: expert 0 is 2/7 resident, a 5/7 miss
        ([[0], [1], [2], [0]], 2, 1, 0.5, (1 + 1 + 1 + 5 / 7) / 4),
    ],
)
def test_cache_simulation_loss_by_hand(
    rows: list[list[int]], slots: int, top_k: int, gamma: float, expected: float
) -> None:
    loss = cache_simulation_loss(_peaked(rows, 4), None, slots=slots, top_k=top_k, gamma=gamma)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_padding_neither_enters_the_cache_nor_counts() -> None:
    rows = [[0], [1], [2], [0]]
    plain = cache_simulation_loss(_peaked(rows, 4), None, slots=2, top_k=1, gamma=0.5)
    padded = torch.cat([_peaked([[3], [3]], 4), _peaked(rows, 4), _peaked([[1]], 4)])
    mask = torch.tensor([0, 0, 1, 1, 1, 1, 0])
    assert cache_simulation_loss(padded, mask, slots=2, top_k=1, gamma=0.5).item() == pytest.approx(plain.item())
    batch = torch.stack([padded, torch.cat([_peaked(rows, 4), _peaked([[2], [2], [2]], 4)])])
    masks = torch.stack([mask, torch.tensor([1, 1, 1, 1, 0, 0, 0])])
    assert cache_simulation_loss(batch, masks, slots=2, top_k=1, gamma=0.5).item() == pytest.approx(plain.item())


def test_straight_through_forwards_the_indicator_and_passes_the_gradient() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]], requires_grad=True)
    routed = straight_through_top_k(probs, 2)
    assert torch.equal(routed.detach(), torch.tensor([[0.0, 1, 0, 1]]))
    (routed * torch.tensor([[1.0, 2, 3, 4]])).sum().backward()
    assert torch.equal(probs.grad, torch.tensor([[1.0, 2, 3, 4]]))  # type: ignore[arg-type]


def test_descending_the_cache_loss_concentrates_routing() -> None:
    torch.manual_seed(0)
    logits = torch.randn(48, 16, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    before_ids = logits.detach().topk(4, dim=-1).indices
    first = None
    for _ in range(150):
        loss = cache_simulation_loss(torch.softmax(logits, -1), None, slots=4, top_k=4, gamma=0.9)
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after_ids = logits.detach().topk(4, dim=-1).indices
    assert loss.item() < 0.5 * first
    before, after = _lru_hit_rate(before_ids, slots=4), _lru_hit_rate(after_ids, slots=4)
    assert after > before + 0.3, (before, after)  # a real cache of the same size hits far more


def _lru_hit_rate(ids: torch.Tensor, slots: int) -> float:
    cache = ExpertCache({"gate_up": torch.zeros(16, 2, 1), "down": torch.zeros(16, 1, 1)}, CacheConfig(slots=slots))
    for row in ids.tolist():
        cache.prepare(row)
        cache.release()
    return cache.stats.hit_rate


def test_distinct_experts_per_layer() -> None:
    ids = torch.tensor([[[0, 1], [2, 3]], [[1, 0], [2, 5]], [[0, 4], [2, 3]]])
    assert distinct_experts(ids, 8).tolist() == [3, 3]


def test_rank_matching_by_hand() -> None:
    base = torch.tensor([[0.5, 0.3, 0.2]])
    # only the pair (0, 1) is out of order: relu(0.1 − (0.40 − 0.45)) = 0.15; the others are ≥ ρ apart
    tuned = torch.tensor([[0.40, 0.45, 0.15]])
    assert rank_matching_loss(tuned, base, None).item() == pytest.approx(0.15)
    # the base itself: (0,1) 0.2 apart, (0,2) 0.3, (1,2) 0.1 → all at or beyond the margin
    assert rank_matching_loss(base, base, None).item() == pytest.approx(0.0, abs=1e-7)
    # ties in the base order nothing; a masked token counts for nothing
    tied = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]])
    flat = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.1, 0.7]])
    assert rank_matching_loss(flat, tied, torch.tensor([1, 0])).item() == pytest.approx(0.0)
    # token 2: expert 0 was above the three others; now level with two (0.1 each) and 0.6 below one (0.7)
    assert rank_matching_loss(flat, tied, None).item() == pytest.approx((0.1 + 0.1 + 0.7) / 2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="gamma"):
        soft_cache_states(torch.zeros(2, 4), None, slots=1, top_k=1, gamma=1.0)
    with pytest.raises(ValueError, match="top_k"):
        straight_through_top_k(torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match="shape"):
        rank_matching_loss(torch.zeros(2, 4), torch.zeros(2, 3), None)
