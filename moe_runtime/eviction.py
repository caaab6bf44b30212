"""Which resident expert to give up when a slot is needed: eviction policies, chosen by name.

A policy sees one event per forward pass of its layer (``observe``: the experts that pass used) and the
cache's admissions and evictions; ``victim`` picks, among the experts the cache offers (resident and not
needed by the pass in progress), the one to evict. Every policy breaks ties by least recent use, then by
expert id, so a run repeats exactly.

``none`` is not a policy object: the cache keeps nothing between passes (``CacheConfig.keeps_nothing``).
``predicted`` is ``Pinned`` whose pins the cache sets itself from its predictor at every prefill.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence


class EvictionPolicy(ABC):
    """Scores resident experts; the lowest score is evicted first."""

    name: str = ""

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.clock = 0  # forward passes seen
        self.last_use = [-1] * num_experts
        self.uses = [0] * num_experts
        self.admitted_at = [0] * num_experts
        self.uses_since_admission = [0] * num_experts

    def observe(self, experts: Sequence[int]) -> None:
        """One forward pass used ``experts`` (each once)."""
        self.clock += 1
        for expert in experts:
            self.last_use[expert] = self.clock
            self.uses[expert] += 1
            self.uses_since_admission[expert] += 1

    def admitted(self, expert: int) -> None:
        self.admitted_at[expert] = self.clock
        self.uses_since_admission[expert] = 0

    def evicted(self, expert: int) -> None:  # noqa: B027 - a hook policies may use; most need nothing
        pass

    @abstractmethod
    def score(self, expert: int) -> float:
        """How much keeping ``expert`` is worth; the lowest is evicted."""

    def victim(self, candidates: Iterable[int]) -> int | None:
        """The expert to evict among ``candidates``, or None when none may go."""
        pool = list(candidates)
        if not pool:
            return None
        return min(pool, key=lambda e: (self.score(e), self.last_use[e], e))


class LeastRecentlyUsed(EvictionPolicy):
    name = "lru"

    def score(self, expert: int) -> float:
        return float(self.last_use[expert])


class LeastFrequentlyUsed(EvictionPolicy):
    """Uses over the cache's whole life (an expert's history survives its eviction)."""

    name = "lfu"

    def score(self, expert: int) -> float:
        return float(self.uses[expert])


class FrequencyOverAge(EvictionPolicy):
    """Uses since admission divided by passes since admission: an access rate that forgets old favourites."""

    name = "lfru"

    def score(self, expert: int) -> float:
        return self.uses_since_admission[expert] / (self.clock - self.admitted_at[expert] + 1)


class DecayedState(EvictionPolicy):
    """MELINOE's soft cache state: s ← γ·s + (1 − γ)·[used this pass], per expert; the lowest s goes."""

    name = "decay"

    def __init__(self, num_experts: int, gamma: float = 0.9) -> None:
        super().__init__(num_experts)
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"decay policy: gamma must be in (0, 1), got {gamma}")
        self.gamma = gamma
        self.state = [0.0] * num_experts

    def observe(self, experts: Sequence[int]) -> None:
        super().observe(experts)
        used = set(experts)
        for expert in range(self.num_experts):
            self.state[expert] = self.gamma * self.state[expert] + (1.0 - self.gamma) * (expert in used)

    def score(self, expert: int) -> float:
        return self.state[expert]


class Pinned(EvictionPolicy):
    """A per-sequence set given at prefill stays resident; ``base`` decides among the other experts.

    Pinned experts are never offered as victims. When the set is replaced (a new sequence), the old pins
    become ordinary residents that ``base`` may evict.
    """

    name = "pinned"

    def __init__(self, num_experts: int, base: EvictionPolicy) -> None:
        super().__init__(num_experts)
        if isinstance(base, Pinned):
            raise ValueError("pinned policy: the base policy cannot itself be pinned")
        self.base = base
        self.pins: frozenset[int] = frozenset()

    def pin(self, experts: Iterable[int]) -> None:
        pins = frozenset(experts)
        if any(not 0 <= e < self.num_experts for e in pins):
            raise ValueError(f"pinned experts must be in [0, {self.num_experts})")
        self.pins = pins

    def observe(self, experts: Sequence[int]) -> None:
        super().observe(experts)
        self.base.observe(experts)

    def admitted(self, expert: int) -> None:
        super().admitted(expert)
        self.base.admitted(expert)

    def evicted(self, expert: int) -> None:
        self.base.evicted(expert)

    def score(self, expert: int) -> float:
        return self.base.score(expert)

    def victim(self, candidates: Iterable[int]) -> int | None:
        return self.base.victim(e for e in candidates if e not in self.pins)


POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls for cls in (LeastRecentlyUsed, LeastFrequentlyUsed, FrequencyOverAge, DecayedState)
}
POLICY_NAMES = ("none", *POLICIES, "pinned", "predicted")


def build_policy(name: str, num_experts: int, *, gamma: float = 0.9, base: str = "lru") -> EvictionPolicy | None:
    """The policy called ``name`` (None for ``none``); a ValueError names the choices."""
    if name == "none":
        return None
    if name in ("pinned", "predicted"):  # predicted: pins that the cache's predictor sets at each prefill
        inner = build_policy(base, num_experts, gamma=gamma)
        if inner is None:
            raise ValueError(f"{name} policy: the base policy must keep experts (lru, lfu, lfru or decay)")
        return Pinned(num_experts, inner)
    if name not in POLICIES:
        raise ValueError(f"unknown expert-cache policy '{name}'; choose one of: {', '.join(POLICY_NAMES)}")
    if name == "decay":
        return DecayedState(num_experts, gamma)
    return POLICIES[name](num_experts)
