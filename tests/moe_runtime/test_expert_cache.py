"""The cache's invariants and counters, and its computation against transformers' own experts module."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

from thrifty.moe_runtime import POLICY_NAMES, CacheConfig, ExpertCache, cached_experts_forward
from thrifty.moe_runtime.melinoe.predictor import LayerPredictor

E, H, INTER = 6, 16, 12


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"gate_up": torch.randn(E, 2 * INTER, H, generator=g), "down": torch.randn(E, H, INTER, generator=g)}


def _predictor(seed: int = 0) -> LayerPredictor:
    g = torch.Generator().manual_seed(seed)
    return LayerPredictor(torch.randn(E, E, generator=g), torch.randn(E, generator=g))


def _cache(slots: int, policy: str = "lru", **options: object) -> ExpertCache:
    if policy == "predicted":
        config = CacheConfig(slots=slots, policy=policy, predictor="in memory", **options)  # type: ignore[arg-type]
        return ExpertCache(_weights(), config, predictor=_predictor())
    return ExpertCache(_weights(), CacheConfig(slots=slots, policy=policy, **options))  # type: ignore[arg-type]


def _check_invariants(cache: ExpertCache) -> None:
    for expert, slot in enumerate(cache.slot_of):
        if slot >= 0:
            assert cache.expert_in[slot] == expert
    for slot, expert in enumerate(cache.expert_in):
        if expert >= 0:
            assert cache.slot_of[expert] == slot
            for key, tensor in cache.slots.items():
                assert torch.equal(tensor[slot], cache.host[key][expert])


passes_strategy = st.lists(st.sets(st.integers(0, E - 1), min_size=1, max_size=E), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    passes=passes_strategy,
    slots=st.integers(1, E),
    policy=st.sampled_from(POLICY_NAMES),
)
def test_a_pass_keeps_what_it_needs_and_the_map_stays_true(passes: list[set[int]], slots: int, policy: str) -> None:
    cache = _cache(slots, policy)
    for needed in passes:
        placement = cache.prepare(needed)
        assert set(placement) == needed
        in_slots = [s for s in placement.values() if s >= 0]
        assert len(in_slots) == len(set(in_slots)) == min(len(needed), cache.capacity)
        for expert, slot in placement.items():
            if slot >= 0:
                assert cache.expert_in[slot] == expert  # nothing the pass needs was evicted for its own misses
            for key, tensor in cache.weights(expert, slot).items():
                assert torch.equal(tensor, cache.host[key][expert])
        _check_invariants(cache)
    stats = cache.stats
    assert stats.hits + stats.misses == sum(len(p) for p in passes)
    assert stats.passes == len(passes)
    loaded = stats.misses - stats.streamed
    assert stats.bytes_moved == (loaded + stats.streamed) * cache.expert_bytes


def test_none_fetches_every_needed_expert_every_pass() -> None:
    cache = _cache(E, "none")
    for _ in range(3):
        cache.prepare([0, 1])
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.streamed) == (0, 6, 0)
    assert stats.bytes_moved == 6 * cache.expert_bytes


def test_lru_counts_hits_on_a_known_sequence() -> None:
    cache = _cache(2, "lru")
    for needed in ([0], [1], [0], [2], [1], [0]):  # 1 is evicted by 2, then 0 by 1
        cache.prepare(needed)
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.evictions) == (1, 5, 3)
    assert sorted(cache.resident()) == [0, 1]


def test_overflow_streams_through_and_is_not_kept() -> None:
    cache = _cache(2, "lru")
    placement = cache.prepare(range(5))
    assert sorted(placement.values()) == [-1, -1, -1, 0, 1]
    assert cache.stats.streamed == 3 and len(cache.resident()) == 2


def test_all_slots_make_every_later_pass_a_hit() -> None:
    cache = _cache(E + 3, "lfu")
    assert cache.capacity == E
    cache.prepare(range(E))
    for _ in range(4):
        cache.prepare([1, 4])
    assert cache.stats.hits == 8 and cache.stats.evictions == 0


def test_prefetched_experts_are_hits_and_pins_survive() -> None:
    cache = _cache(3, "pinned", base="lru")
    assert cache.pin([5, 4]) == [5, 4]
    assert cache.stats.prefetched == 2
    for needed in ([0], [1], [2], [3], [0, 1]):
        cache.prepare(needed)
    assert {5, 4} <= set(cache.resident())
    cache.prepare([4, 5])
    assert cache.stats.hits == 2
    with pytest.raises(ValueError, match="needs the 'pinned' or 'predicted' policy"):
        _cache(3, "lru").pin([1])


def test_a_prefetch_before_the_pass_computes_leaves_its_slots_alone() -> None:
    cache = _cache(2, "lru")
    placement = cache.prepare([0, 1])
    assert cache.prefetch([2, 3]) == 0  # both slots belong to the pass in progress
    for expert, slot in placement.items():
        assert cache.expert_in[slot] == expert
        assert torch.equal(cache.weights(expert, slot)["down"], cache.host["down"][expert])
    cache.release()
    assert cache.prefetch([2]) == 1  # once it is computed, the slots are the policy's again
    assert 2 in cache.resident()


def test_a_pass_through_the_layer_releases_its_experts() -> None:
    cache = _cache(2, "lru")
    ids = torch.tensor([[0, 1], [1, 0]])
    cached_experts_forward(cache, torch.randn(2, H), ids, torch.full((2, 2), 0.5))
    assert cache.prefetch([4]) == 1


# Calls that make a GPU wait for the device before the host can go on (reading values back, or ops whose
# output size depends on values). On CPU nothing waits, but the calls are the same, so counting them here
# counts the synchronisations a pass would make on a GPU.
_SYNCING = {
    "tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique", "masked_select",
    "bincount", "cpu", "numpy", "repeat_interleave", "argwhere", "unique_consecutive",
}  # fmt: skip


class _SyncCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        one_argument_where = name == "where" and len(args) + len(kwargs or {}) == 1
        boolean_index = name == "__getitem__" and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in _flatten(args[1:])
        )
        if name in _SYNCING or one_argument_where or boolean_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _flatten(items: Any) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out += _flatten(item) if isinstance(item, tuple | list) else [item]
    return out


@pytest.mark.parametrize("policy", ["none", "lru", "pinned", "predicted"])
def test_a_pass_reads_the_routing_back_once_however_many_experts_it_uses(policy: str) -> None:
    cache = _cache(3, policy)
    rng = random.Random(0)
    for tokens in (1, 7, 1, 12, 3):
        ids = torch.tensor([rng.sample(range(E), 2) for _ in range(tokens)])
        ids[0, 0] = E  # padding, as transformers marks a dropped token
        with _SyncCounter() as counter:
            cached_experts_forward(cache, torch.randn(tokens, H), ids, torch.rand(tokens, 2))
        assert counter.calls == ["tolist"], (tokens, counter.calls)


def test_padding_ids_contribute_nothing() -> None:
    reference = _reference(seed=2)
    cache = ExpertCache(_weights(2), CacheConfig(slots=2))
    x, gates = torch.randn(3, H), torch.rand(3, 2)
    ids = torch.tensor([[0, E], [E, E], [3, 1]])
    expected = torch.zeros(3, H)
    with torch.no_grad():
        for token, row in enumerate(ids.tolist()):
            for pos, expert in enumerate(row):
                if expert < E:
                    one = reference(
                        x[token : token + 1], torch.tensor([[expert]]), gates[token : token + 1, pos : pos + 1]
                    )
                    expected[token] += one[0]
    assert torch.allclose(cached_experts_forward(cache, x, ids, gates), expected, atol=1e-5)
    assert cache.stats.hits + cache.stats.misses == 3  # experts 0, 1 and 3


def test_bad_expert_ids_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expert ids must be in \[0, 6\)"):
        _cache(2).prepare([6])
    with pytest.raises(ValueError, match="exactly"):
        ExpertCache({"w": torch.zeros(2, 2)}, CacheConfig(slots=1))


def _reference(seed: int) -> Qwen3MoeExperts:
    config = Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=INTER, num_experts=E, num_experts_per_tok=2)
    config._experts_implementation = "eager"
    module = Qwen3MoeExperts(config)
    weights = _weights(seed)
    module.gate_up_proj.data.copy_(weights["gate_up"])
    module.down_proj.data.copy_(weights["down"])
    return module


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_cached_experts_compute_what_transformers_computes(policy: str) -> None:
    reference = _reference(seed=3)
    rng = random.Random(7)
    for slots in range(1, E + 1):
        if policy == "predicted":
            config = CacheConfig(slots=slots, policy=policy, predictor="in memory")
            cache = ExpertCache(_weights(3), config, predictor=_predictor(slots))
        else:
            cache = ExpertCache(_weights(3), CacheConfig(slots=slots, policy=policy))
        if policy == "pinned":
            cache.pin(rng.sample(range(E), slots))
        for tokens in (1, 1, 5, 1, 9, 1):
            x = torch.randn(tokens, H)
            ids = torch.tensor([rng.sample(range(E), 2) for _ in range(tokens)])
            weights = torch.softmax(torch.randn(tokens, 2), dim=-1)
            with torch.no_grad():
                expected = reference(x, ids, weights)
            assert torch.equal(cached_experts_forward(cache, x, ids, weights), expected), (slots, tokens)


def test_the_predicted_policy_pins_the_predictors_choice_at_each_prompt() -> None:
    # A predictor that ignores the prompt and always favours experts 5 and 2 (its bias), then one that
    # follows the prompt (W = identity): the experts the prompt used most.
    fixed = LayerPredictor(torch.zeros(E, E), torch.tensor([0.0, 0, 0.5, 0, 0, 0.9]))
    cache = ExpertCache(_weights(), CacheConfig(slots=2, policy="predicted", predictor="x"), predictor=fixed)
    ids = torch.tensor([[0, 1], [0, 3], [1, 0]])
    cached_experts_forward(cache, torch.randn(3, H), ids, torch.rand(3, 2))  # the prompt
    assert sorted(cache.resident()) == [2, 5] and cache.stats.prefetched == 2
    for token in ([0, 1], [3, 4], [5, 2]):  # decoding: the pins stay, whatever else is needed
        cached_experts_forward(cache, torch.randn(1, H), torch.tensor([token]), torch.rand(1, 2))
        assert sorted(cache.resident()) == [2, 5]
    assert cache.stats.hits == 2  # the last token found both of its experts pinned

    follow = LayerPredictor(torch.eye(E), torch.zeros(E))
    cache = ExpertCache(_weights(), CacheConfig(slots=2, policy="predicted", predictor="x"), predictor=follow)
    cached_experts_forward(cache, torch.randn(3, H), ids, torch.rand(3, 2))
    assert sorted(cache.resident()) == [0, 1]  # 0 got three pairs, 1 two, 3 one
    prompt = torch.tensor([[4, 3], [4, 2], [3, 4]])  # a new sequence re-pins
    cached_experts_forward(cache, torch.randn(3, H), prompt, torch.rand(3, 2))
    assert sorted(cache.resident()) == [3, 4]


def test_the_predicted_policy_pins_only_its_share_and_lets_the_base_policy_keep_the_rest() -> None:
    # The predictor favours 5, then 2. Pinning half of C = 2 pins 5; 2 is fetched too but may be evicted.
    favours = torch.tensor([0.0, 0, 0.5, 0, 0, 0.9])
    for own, configured, pinned in ((0.5, None, [5]), (1.0, 0.5, [5]), (0.5, 0.0, []), (0.0, 1.0, [2, 5])):
        predictor = LayerPredictor(torch.zeros(E, E), favours, pin_share=own)
        config = CacheConfig(slots=2, policy="predicted", predictor="x", pin_share=configured)
        cache = ExpertCache(_weights(), config, predictor=predictor)
        assert sorted(cache.start_sequence([3, 2, 0, 1, 0, 0])) == pinned, (own, configured)
        assert sorted(cache.resident()) == [2, 5] and cache.stats.prefetched == 2  # all C fetched either way
        for token in ([3, 5], [3, 5]):
            cached_experts_forward(cache, torch.randn(1, H), torch.tensor([token]), torch.rand(1, 2))
        if pinned == [2, 5]:  # 3 streams past the pins every time
            assert sorted(cache.resident()) == [2, 5] and (cache.stats.hits, cache.stats.streamed) == (2, 2)
        elif pinned == [5]:  # 3 takes 2's slot, then hits
            assert sorted(cache.resident()) == [3, 5] and (cache.stats.hits, cache.stats.misses) == (3, 1)
        else:  # nothing pinned: LRU gives up 2, the one the token does not need, as with one pin
            assert sorted(cache.resident()) == [3, 5] and (cache.stats.hits, cache.stats.misses) == (3, 1)
    with pytest.raises(ValueError, match="pin_share must be in"):
        CacheConfig(slots=2, policy="predicted", predictor="x", pin_share=1.5)
    with pytest.raises(ValueError, match="pin_share is the predicted policy's setting"):
        CacheConfig(slots=2, policy="pinned", pin_share=0.5)
    with pytest.raises(ValueError, match="share of the C predicted experts"):
        LayerPredictor(torch.zeros(E, E), favours, pin_share=-0.1)


def test_the_predicted_policy_needs_its_predictor() -> None:
    with pytest.raises(ValueError, match="needs the layer's predictor"):
        ExpertCache(_weights(), CacheConfig(slots=2, policy="predicted", predictor="x"))
    with pytest.raises(ValueError, match="knows 4 experts"):
        small = LayerPredictor(torch.zeros(4, 4), torch.zeros(4))
        ExpertCache(_weights(), CacheConfig(slots=2, policy="predicted", predictor="x"), predictor=small)
