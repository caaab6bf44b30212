"""Replaying a trace through the caches' counters: hit rates worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from thrifty.moe_runtime import CacheConfig
from thrifty.moe_runtime.melinoe.predictor import LayerPredictor
from thrifty.moe_runtime.simulate import choose_pin_share, distinct_per_layer, oracle_sets, replay
from thrifty.moe_runtime.traces import RoutingTrace, TraceSequence

E = 4


def _trace(*sequences: tuple[list[int], list[int]]) -> RoutingTrace:
    """One layer, top-1: (prompt experts, decoded experts) per sequence."""
    out = [
        TraceSequence(torch.tensor(prompt + decode, dtype=torch.int16).reshape(-1, 1, 1), prefill=len(prompt))
        for prompt, decode in sequences
    ]
    return RoutingTrace(E, 1, 1, out)


TRACE = _trace(([0, 1], [2, 0, 2, 3]))


def test_lru_by_hand() -> None:
    # the prompt leaves {0, 1}; 2 misses (evicts 0), 0 misses (evicts 1), 2 hits, 3 misses (evicts 0)
    result = replay(TRACE, CacheConfig(slots=2, policy="lru"))
    assert (result.stats.hits, result.stats.misses, result.stats.evictions) == (1, 3, 3)
    assert result.tokens == 4 and result.hit_rate == 0.25
    assert result.bound == pytest.approx(1 / 0.75)
    assert result.bytes_per_token(1000) == 3 * 1000 / 4  # three experts fetched for four tokens


def test_the_predicted_policy_pins_the_predictors_choice_at_the_prompt() -> None:
    favours_2_and_3 = LayerPredictor(torch.zeros(E, E), torch.tensor([0.0, 0.0, 1.0, 0.5]))
    config = CacheConfig(slots=2, policy="predicted", predictor="in memory")
    result = replay(TRACE, config, [favours_2_and_3])
    # 2, 2 and 3 find their pinned slots; 0 streams past the pins
    assert (result.stats.hits, result.stats.misses, result.stats.streamed) == (3, 1, 1)
    assert result.stats.prefetched == 0  # the pins were fetched during the prompt, not while decoding
    assert result.fetches == 1


def test_the_pin_share_is_chosen_where_the_replay_hits_most() -> None:
    # The predictor favours 2 and 3; decoding uses 2 and then 0 again and again. Pinning both leaves 0 to
    # stream every time (2 hits of 6); pinning 2 alone, or nothing, lets LRU keep 0 (5 of 6): the larger
    # of the tied shares wins.
    favours_2_and_3 = LayerPredictor(torch.zeros(E, E), torch.tensor([0.0, 0.0, 1.0, 0.5]))
    trace = _trace(([2], [2, 0, 0, 0, 0, 2]))
    share, rates = choose_pin_share(trace, [favours_2_and_3], 2)
    assert rates == {0.0: 5 / 6, 0.5: 5 / 6, 1.0: 2 / 6} and share == 0.5
    four = _trace(([2], [2, 3, 2, 3]))  # what the predictor expects: pinning everything is as good as any
    share, rates = choose_pin_share(four, [favours_2_and_3], 2, steps=2)
    assert set(rates) == {0.0, 0.5, 1.0} and share == 1.0 and rates[1.0] == 1.0


def test_the_oracle_pins_what_decoding_uses_most() -> None:
    assert oracle_sets(TRACE.sequences[0], 2) == [[2, 0]]  # 2 twice; 0 and 3 once each, the lower id wins
    result = replay(TRACE, CacheConfig(slots=2, policy="pinned"))
    assert (result.stats.hits, result.stats.misses) == (3, 1)


def test_caches_carry_over_from_one_sequence_to_the_next() -> None:
    two = _trace(([0], [1, 1]), ([1], [0, 1]))
    # sequence 1: 1 misses, 1 hits; sequence 2's prompt (1) hits, then 0 and 1 are both resident
    result = replay(two, CacheConfig(slots=2, policy="lru"))
    assert (result.stats.hits, result.stats.misses, result.tokens) == (3, 1, 4)
    nothing = replay(two, CacheConfig(slots=2, policy="none"))
    assert nothing.hit_rate == 0.0 and math.isclose(nothing.bound, 1.0)
    everything = replay(two, CacheConfig(slots=E, policy="lru"))
    assert everything.stats.misses == 1 and everything.bound == 4.0  # only the first 1 was not there yet


def test_distinct_experts_and_refusals() -> None:
    assert distinct_per_layer(TRACE) == 4 and distinct_per_layer(TRACE, decode_only=True) == 3
    with pytest.raises(ValueError, match="needs one predictor per layer"):
        replay(TRACE, CacheConfig(slots=2, policy="predicted", predictor="x"))
    with pytest.raises(ValueError, match="only it takes them"):
        replay(TRACE, CacheConfig(slots=2, policy="lru"), [LayerPredictor(torch.zeros(E, E), torch.zeros(E))])
    with pytest.raises(ValueError, match="2 predictors for a trace of 1 layers"):
        predictor = LayerPredictor(torch.zeros(E, E), torch.zeros(E))
        replay(TRACE, CacheConfig(slots=2, policy="predicted", predictor="x"), [predictor, predictor])
