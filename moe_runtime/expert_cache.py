"""One MoE layer's experts: all E in host memory, C slots on the compute device, and the map between them.

```
 host (pinned on CUDA)            device
 gate_up[E, 2I, H]  ──copy──▶  slot gate_up[C, 2I, H]      expert_to_slot[E]: slot or −1
 down[E, H, I]      ──copy──▶  slot down[C, H, I]          (read by the expert computation)
                    ──copy──▶  staging (one expert): the overflow of a pass that needs more than C
```

A forward pass calls ``prepare(experts)`` with the experts its tokens were routed to (the model's own
routing, never changed). Experts already resident are hits; each miss takes a free slot, or evicts the
policy's victim among residents the *same pass does not need*; when every slot holds an expert the pass
needs, the remaining misses stream through the staging buffer and are not kept. With the ``none`` policy
nothing survives a pass: every needed expert is fetched every time (the transfer-heavy baseline).

On CUDA, copies from pinned memory are asynchronous: demand fetches run on the compute stream, prefetches
on a side stream with an event that the compute stream waits on before the expert is used. Time stalled is
measured on the device (CUDA events around each demand copy and each wait) and read when ``stats`` is
asked for; on CPU it is the wall time of the copies, which are synchronous there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.eviction import EvictionPolicy, Pinned, build_policy

WEIGHT_NAMES = ("gate_up", "down")  # [E, 2I, H] and [E, H, I]: the layout transformers and vLLM share


@dataclass(slots=True)
class CacheStats:
    """Counters for one layer since it was built. Hits and misses count (pass, expert) pairs."""

    passes: int = 0
    hits: int = 0
    misses: int = 0
    streamed: int = 0  # misses served from the staging buffer because every slot was needed
    evictions: int = 0
    prefetched: int = 0
    bytes_moved: int = 0  # host → device, demand fetches, overflow and prefetches together
    stall_seconds: float = 0.0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def add(self, other: CacheStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "hit_rate": self.hit_rate}


class _StallClock:
    """Accumulates time the computation waits on transfers: CUDA events on the compute stream, or wall time."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._pairs: list[tuple[Any, Any]] = []
        self._started: Any = None

    def begin(self) -> None:
        if self.cuda:
            self._started = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            self._started.record()
        else:
            self._started = time.perf_counter()

    def end(self) -> None:
        if self.cuda:
            finished = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            finished.record()
            self._pairs.append((self._started, finished))
            if len(self._pairs) >= 4096:
                self.resolve()
        else:
            self.seconds += time.perf_counter() - self._started

    def resolve(self) -> float:
        for start, end in self._pairs:
            end.synchronize()
            self.seconds += start.elapsed_time(end) / 1000.0
        self._pairs.clear()
        return self.seconds


class ExpertCache:
    """The expert cache of one MoE layer (see the module docstring)."""

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        config: CacheConfig,
        device: torch.device | str = "cpu",
        name: str = "",
    ) -> None:
        if set(weights) != set(WEIGHT_NAMES):
            raise ValueError(f"expert weights must be exactly {WEIGHT_NAMES}, got {sorted(weights)}")
        sizes = {t.shape[0] for t in weights.values()}
        if len(sizes) != 1:
            raise ValueError(f"every expert weight needs the same leading (expert) dimension, got {sorted(sizes)}")
        self.name = name
        self.config = config
        self.device = torch.device(device)
        self.num_experts = sizes.pop()
        self.capacity = min(config.slots, self.num_experts)
        cuda = self.device.type == "cuda"
        self.host: dict[str, torch.Tensor] = {}
        for key, tensor in weights.items():
            host = tensor.detach().to("cpu").contiguous()
            self.host[key] = host.pin_memory() if cuda else host
        self.slots = {
            k: torch.empty((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
            for k, t in self.host.items()
        }
        self.staging = {k: torch.empty(t.shape[1:], dtype=t.dtype, device=self.device) for k, t in self.host.items()}
        self.expert_bytes = sum(t[0].numel() * t.element_size() for t in self.host.values())
        self.slot_of = [-1] * self.num_experts
        self.expert_in = [-1] * self.capacity
        self.expert_to_slot = torch.full((self.num_experts,), -1, dtype=torch.int32, device=self.device)
        self.policy: EvictionPolicy | None = build_policy(
            config.policy, self.num_experts, gamma=config.gamma, base=config.base
        )
        self._stats = CacheStats()
        self._clock = _StallClock(self.device)
        self._copy_stream: Any = torch.cuda.Stream(self.device) if cuda else None  # type: ignore[no-untyped-call]
        self._ready: dict[int, Any] = {}  # slot → CUDA event of a prefetch not yet waited on
        self._map_changed = False  # the host-side map differs from expert_to_slot

    @property
    def stats(self) -> CacheStats:
        self._stats.stall_seconds = self._clock.resolve()
        return self._stats

    @property
    def passes(self) -> int:
        return self._stats.passes

    def resident(self) -> list[int]:
        return [e for e in self.expert_in if e >= 0]

    def prepare(self, experts: Iterable[int]) -> dict[int, int]:
        """Make the experts of one forward pass available: expert → slot, or −1 for one that streams."""
        needed = sorted(set(experts))
        if needed and not (needed[0] >= 0 and needed[-1] < self.num_experts):
            raise ValueError(f"{self.name}: expert ids must be in [0, {self.num_experts}), got {needed}")
        stats = self._stats
        stats.passes += 1
        if self.policy is None:  # `none`: nothing is kept from the previous pass
            for slot, expert in enumerate(self.expert_in):
                if expert >= 0:
                    self._vacate(slot, count=False)
        protected = set(needed)
        placement: dict[int, int] = {}
        for expert in needed:
            slot = self.slot_of[expert]
            if slot >= 0:
                stats.hits += 1
                self._wait_ready(slot)
                placement[expert] = slot
                continue
            stats.misses += 1
            slot = self._free_slot(protected)
            if slot < 0:
                stats.streamed += 1
                placement[expert] = -1
                continue
            self._clock.begin()
            self._load(expert, slot)
            self._clock.end()
            placement[expert] = slot
        if self.policy is not None:
            self.policy.observe(needed)
        self._publish()
        return placement

    def weights(self, expert: int, slot: int) -> dict[str, torch.Tensor]:
        """The weights to compute ``expert`` with: its slot, or (slot −1) the staging buffer, filled now."""
        if slot >= 0:
            return {k: t[slot] for k, t in self.slots.items()}
        self._clock.begin()
        for key, buffer in self.staging.items():
            buffer.copy_(self.host[key][expert], non_blocking=True)
        self._clock.end()
        self._stats.bytes_moved += self.expert_bytes
        return self.staging

    def prefetch(self, experts: Sequence[int]) -> int:
        """Start fetching ``experts`` (in order of preference) into free or evictable slots; returns how many.

        Experts named in the same call protect each other; pinned experts are never evicted.
        """
        protected = set(experts)
        started = 0
        for expert in experts:
            if not 0 <= expert < self.num_experts:
                raise ValueError(f"{self.name}: expert ids must be in [0, {self.num_experts})")
            if self.slot_of[expert] >= 0:
                continue
            slot = self._free_slot(protected)
            if slot < 0:
                break
            if self._copy_stream is not None:
                self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self._copy_stream):
                    self._load(expert, slot)
                    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                    event.record()
                self._ready[slot] = event
            else:
                self._clock.begin()
                self._load(expert, slot)
                self._clock.end()
            self._stats.prefetched += 1
            started += 1
        self._publish()
        return started

    def pin(self, experts: Sequence[int]) -> list[int]:
        """Keep ``experts`` resident (the first C, in the order given) and fetch them now; returns the pins."""
        if not isinstance(self.policy, Pinned):
            raise ValueError(f"{self.name}: pinning needs the 'pinned' policy, this cache uses '{self.config.policy}'")
        pins = list(dict.fromkeys(experts))[: self.capacity]
        self.policy.pin(pins)
        self.prefetch(pins)
        return pins

    def _free_slot(self, protected: set[int]) -> int:
        for slot, expert in enumerate(self.expert_in):
            if expert < 0:
                return slot
        if self.policy is None:
            return -1
        victim = self.policy.victim(e for e in self.expert_in if e not in protected)
        if victim is None:
            return -1
        slot = self.slot_of[victim]
        self._vacate(slot, count=True)
        return slot

    def _vacate(self, slot: int, *, count: bool) -> None:
        expert = self.expert_in[slot]
        self._wait_ready(slot)  # a prefetch still copying into this slot must land before it is reused
        self.slot_of[expert] = -1
        self.expert_in[slot] = -1
        self._map_changed = True
        if count:
            self._stats.evictions += 1
            assert self.policy is not None
            self.policy.evicted(expert)

    def _load(self, expert: int, slot: int) -> None:
        for key, tensor in self.slots.items():
            tensor[slot].copy_(self.host[key][expert], non_blocking=True)
        self.slot_of[expert] = slot
        self.expert_in[slot] = expert
        self._map_changed = True
        self._stats.bytes_moved += self.expert_bytes
        if self.policy is not None:
            self.policy.admitted(expert)

    def _wait_ready(self, slot: int) -> None:
        event = self._ready.pop(slot, None)
        if event is not None:
            self._clock.begin()
            torch.cuda.current_stream(self.device).wait_event(event)
            self._clock.end()

    def _publish(self) -> None:
        # The device-side map follows the host-side one after every change, for kernels that read it; a
        # pass of hits changes nothing and copies nothing (on CUDA this copy is synchronous).
        if not self._map_changed:
            return
        self._map_changed = False
        self.expert_to_slot.copy_(torch.tensor(self.slot_of, dtype=torch.int32), non_blocking=False)
