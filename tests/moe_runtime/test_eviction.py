from __future__ import annotations

import pytest

from thrifty.moe_runtime.config import ENV_ENABLE, ENV_SLOTS, CacheConfig
from thrifty.moe_runtime.eviction import POLICY_NAMES, DecayedState, Pinned, build_policy


def _run(name: str, passes: list[list[int]], **options: float | str) -> object:
    policy = build_policy(name, 8, **options)  # type: ignore[arg-type]
    assert policy is not None
    for experts in passes:
        policy.observe(experts)
    return policy


def test_lru_evicts_the_least_recently_used() -> None:
    policy = _run("lru", [[0], [1], [2], [0]])
    assert policy.victim([0, 1, 2]) == 1  # type: ignore[attr-defined]


def test_lfu_counts_uses_over_the_whole_life() -> None:
    policy = _run("lfu", [[0], [0], [0], [1], [2], [2]])
    assert policy.victim([0, 1, 2]) == 1  # type: ignore[attr-defined]


def test_lfru_forgets_old_favourites_that_lfu_keeps() -> None:
    passes = [[0]] * 5 + [[3]] * 10 + [[1], [1]]
    lfu, lfru = build_policy("lfu", 8), build_policy("lfru", 8)
    assert lfu is not None and lfru is not None
    for policy in (lfu, lfru):
        policy.admitted(0)
        for step, experts in enumerate(passes):
            if step == len(passes) - 2:
                policy.admitted(1)  # 1 arrives late and is used at every pass since
            policy.observe(experts)
    assert lfu.victim([0, 1]) == 1
    assert lfru.victim([0, 1]) == 0


def test_decay_follows_the_gamma_recurrence() -> None:
    policy = _run("decay", [[0], [1], [1, 2]], gamma=0.5)
    assert isinstance(policy, DecayedState)
    assert policy.state[:3] == pytest.approx([0.125, 0.75, 0.5])
    assert policy.victim([0, 1, 2]) == 0


def test_ties_break_by_recency_then_id() -> None:
    policy = _run("lfu", [[4], [5]])
    assert policy.victim([5, 4]) == 4
    assert build_policy("lru", 8).victim([7, 3]) == 3  # type: ignore[union-attr]


def test_pinned_never_offers_its_pins_and_defers_to_its_base() -> None:
    policy = build_policy("pinned", 8, base="lfu")
    assert isinstance(policy, Pinned)
    policy.pin([1, 2])
    for experts in ([3], [3], [4], [1], [2]):
        policy.observe(experts)
    assert policy.victim([1, 2, 3, 4]) == 4
    assert policy.victim([1, 2]) is None
    policy.pin([])  # a new sequence: the old pins are ordinary residents again
    assert policy.victim([1, 2]) == 1


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fifo", {}, "unknown expert-cache policy 'fifo'; choose one of: none, lru, lfu, lfru, decay, pinned"),
        ("decay", {"gamma": 1.0}, "gamma must be in (0, 1)"),
        ("pinned", {"base": "none"}, "base policy must keep experts"),
        ("pinned", {"base": "pinned"}, "cannot itself be pinned"),
    ],
)
def test_bad_policies_are_named(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_policy(name, 8, **options)  # type: ignore[arg-type]


def test_none_keeps_nothing_and_every_name_builds() -> None:
    assert build_policy("none", 8) is None
    for name in POLICY_NAMES:
        predictor = "artifact" if name == "predicted" else None
        assert CacheConfig(slots=2, policy=name, predictor=predictor).keeps_nothing == (name == "none")
    with pytest.raises(ValueError, match="predicted policy needs a predictor"):
        CacheConfig(slots=2, policy="predicted")
    with pytest.raises(ValueError, match="only it takes one"):
        CacheConfig(slots=2, policy="lru", predictor="artifact")


def test_config_travels_through_the_environment() -> None:
    config = CacheConfig(slots=3, policy="pinned", gamma=0.75, base="decay")
    assert CacheConfig.from_env(config.to_env()) == config
    predicted = CacheConfig(slots=2, policy="predicted", predictor="/models/tuned", base="lfru")
    assert CacheConfig.from_env(predicted.to_env()) == predicted
    shared = CacheConfig(slots=2, policy="predicted", predictor="/models/tuned", pin_share=0.25)
    assert CacheConfig.from_env(shared.to_env()) == shared and "THRIFTY_MOE_PIN_SHARE" not in predicted.to_env()
    with pytest.raises(ValueError, match="THRIFTY_MOE_PIN_SHARE numbers"):
        CacheConfig.from_env(shared.to_env() | {"THRIFTY_MOE_PIN_SHARE": "half"})
    assert CacheConfig.from_env({}) is None
    assert CacheConfig.from_env({ENV_ENABLE: "0", ENV_SLOTS: "2"}) is None
    with pytest.raises(ValueError, match="needs THRIFTY_MOE_SLOTS"):
        CacheConfig.from_env({ENV_ENABLE: "1"})
    with pytest.raises(ValueError, match="must be an integer"):
        CacheConfig.from_env({ENV_ENABLE: "1", ENV_SLOTS: "two"})
    with pytest.raises(ValueError, match="slots must be ≥ 1"):
        CacheConfig(slots=0)
    with pytest.raises(ValueError, match="base must be lru, lfu, lfru or decay"):
        CacheConfig(slots=2, base="none")
