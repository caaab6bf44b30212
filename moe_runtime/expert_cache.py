"""One MoE layer's experts: all E in host memory, C slots on the compute device, and the map between them.

```
 host (pinned on CUDA)            device
 gate_up[E, 2I, H]  ──copy──▶  slot gate_up[C, 2I, H]      slot_of[E]: slot or −1 (host side; the
 down[E, H, I]      ──copy──▶  slot down[C, H, I]          computation asks for weights by slot)
                    ──copy──▶  staging (one expert): the overflow of a pass that needs more than C
```

A forward pass calls ``prepare(experts)`` with the experts its tokens were routed to (the model's own
routing, never changed), then ``weights(expert, slot)`` for each before computing it, then ``release()``.
Experts already resident are hits; each miss takes a free slot, or evicts the policy's victim among
residents the *same pass does not need*; when every slot holds an expert the pass needs, the remaining
misses stream through the staging buffer and are not kept. With the ``none`` policy nothing survives a
pass: every needed expert is fetched every time (the transfer-heavy baseline). Between ``prepare`` and
``release`` the pass's experts are protected from ``prefetch`` too.

On CUDA every copy runs on the cache's copy stream, asynchronously from pinned memory, and records an
event; the compute stream waits on an expert's event only in ``weights``, just before that expert is
computed, so the copies of a pass's later experts overlap the computation of its earlier ones, and a
prefetch (say, of the next layer's predicted experts) overlaps whatever is computing. Before it writes a
slot, the copy stream waits for the work already queued on the compute stream, which may still read it.
Nothing here synchronises with the host. Host copies are pinned in place (``cudaHostRegister``, no
rounding up and no second copy) where the driver allows, else copied into pinned memory.

Time stalled is what the compute stream spends waiting on copies: CUDA events on the cache device's
compute stream around each wait, resolved when ``stats`` is read; on CPU, where copies are synchronous,
the wall time of the copies.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.eviction import EvictionPolicy, Pinned, build_policy
from thrifty.moe_runtime.melinoe.predictor import pinned_count

if TYPE_CHECKING:
    from thrifty.moe_runtime.melinoe.predictor import LayerPredictor

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
    """Accumulates time the computation waits on transfers: CUDA events on the compute stream of the
    cache's device, or wall time on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._pairs: list[tuple[Any, Any]] = []
        self._started: Any = None

    def begin(self) -> None:
        if self.cuda:
            self._started = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            self._started.record(torch.cuda.current_stream(self.device))
        else:
            self._started = time.perf_counter()

    def end(self) -> None:
        if self.cuda:
            finished = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            finished.record(torch.cuda.current_stream(self.device))
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


def host_copy(tensor: torch.Tensor, *, pin: bool) -> torch.Tensor:
    """``tensor`` in host memory, contiguous; with ``pin``, page-locked for asynchronous copies.

    Pinning registers the memory with the driver (``cudaHostRegister``) instead of copying it into the
    caching host allocator, which rounds every block up to a power of two. A tensor that owns an ordinary
    host allocation is registered where it lies (no second copy); one that is a view into a larger
    buffer or a file mapping is copied into a fresh allocation first. ``unpin`` undoes a registration.
    """
    host = tensor.detach().to("cpu")
    if not host.is_contiguous():
        host = host.contiguous()
    if not pin or host.numel() == 0:
        return host
    storage = host.untyped_storage()
    owns_its_memory = (
        storage.resizable()  # false for file mappings and borrowed buffers
        and host.storage_offset() == 0
        and storage.nbytes() == host.numel() * host.element_size()
        and not host.is_pinned()
    )
    if not owns_its_memory:
        fresh = torch.empty_like(host)
        fresh.copy_(host)
        host = fresh
    _register(host)
    return host


def _register(host: torch.Tensor) -> None:
    cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
    error = cudart.cudaHostRegister(host.data_ptr(), host.numel() * host.element_size(), 0)
    if int(error) != 0:
        raise RuntimeError(
            f"could not pin {host.numel() * host.element_size() / 2**20:.0f} MiB of expert weights in host "
            f"memory (cudaHostRegister: {cudart.cudaGetErrorString(error)}); is the locked-memory limit too low?"
        )
    _REGISTERED.add(host.data_ptr())


_REGISTERED: set[int] = set()  # host pointers this module registered with the CUDA driver


def unpin(tensors: Iterable[torch.Tensor]) -> None:
    """Unregister host memory ``host_copy`` registered, once nothing can still be copying from it."""
    tensors = list(tensors)
    if not any(t.data_ptr() in _REGISTERED for t in tensors):
        return
    torch.cuda.synchronize()
    for tensor in tensors:
        if tensor.data_ptr() in _REGISTERED:
            _REGISTERED.discard(tensor.data_ptr())
            torch.cuda.cudart().cudaHostUnregister(tensor.data_ptr())  # type: ignore[no-untyped-call]


class ExpertCache:
    """The expert cache of one MoE layer (see the module docstring)."""

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        config: CacheConfig,
        device: torch.device | str = "cpu",
        name: str = "",
        predictor: LayerPredictor | None = None,
    ) -> None:
        if set(weights) != set(WEIGHT_NAMES):
            raise ValueError(f"expert weights must be exactly {WEIGHT_NAMES}, got {sorted(weights)}")
        sizes = {t.shape[0] for t in weights.values()}
        if len(sizes) != 1:
            raise ValueError(f"every expert weight needs the same leading (expert) dimension, got {sorted(sizes)}")
        self.name = name
        self.config = config
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.num_experts = sizes.pop()
        self.capacity = min(config.slots, self.num_experts)
        if (config.policy == "predicted") != (predictor is not None):
            raise ValueError(f"{name}: the predicted policy needs the layer's predictor, and only it takes one")
        if predictor is not None and predictor.experts != self.num_experts:
            raise ValueError(
                f"{name}: the predictor knows {predictor.experts} experts, the layer has {self.num_experts}"
            )
        self.predictor = predictor
        cuda = self.device.type == "cuda"
        self.host = {key: host_copy(tensor, pin=cuda) for key, tensor in weights.items()}
        self.slots = {
            k: torch.empty((self.capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
            for k, t in self.host.items()
        }
        self.staging = {k: torch.empty(t.shape[1:], dtype=t.dtype, device=self.device) for k, t in self.host.items()}
        self.expert_bytes = sum(t[0].numel() * t.element_size() for t in self.host.values())
        self.slot_of = [-1] * self.num_experts
        self.expert_in = [-1] * self.capacity
        self.policy: EvictionPolicy | None = build_policy(
            config.policy, self.num_experts, gamma=config.gamma, base=config.base
        )
        self._stats = CacheStats()
        self._clock = _StallClock(self.device)
        self._copy_stream: Any = None
        if cuda:
            self._copy_stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            for buffer in (*self.slots.values(), *self.staging.values()):
                buffer.record_stream(self._copy_stream)  # freed only once the copy stream is done with it
            weakref.finalize(self, unpin, list(self.host.values()))
        self._ready: dict[int, Any] = {}  # slot → CUDA event of a copy the compute stream has not waited on
        self._in_use: frozenset[int] = frozenset()  # the current pass's experts, between prepare and release

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
        """Make the experts of one forward pass available: expert → slot, or −1 for one that streams.

        The copies are only started; ``weights`` waits for each. Until ``release``, the pass's experts
        keep their slots even against ``prefetch``.
        """
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
                placement[expert] = slot
                continue
            stats.misses += 1
            slot = self._free_slot(protected)
            if slot < 0:
                stats.streamed += 1
                placement[expert] = -1
                continue
            self._load(expert, slot)
            placement[expert] = slot
        if self.policy is not None:
            self.policy.observe(needed)
        self._in_use = frozenset(needed)
        return placement

    def weights(self, expert: int, slot: int) -> dict[str, torch.Tensor]:
        """The weights to compute ``expert`` with, once its copy has landed: its slot, or (slot −1) the
        staging buffer, filled now."""
        if slot >= 0:
            self._wait_ready(slot)
            return {k: t[slot] for k, t in self.slots.items()}
        if self._copy_stream is not None:
            compute = torch.cuda.current_stream(self.device)
            self._copy_stream.wait_stream(compute)  # the previous streamed expert's computation is queued there
            with torch.cuda.stream(self._copy_stream):
                for key, buffer in self.staging.items():
                    buffer.copy_(self.host[key][expert], non_blocking=True)
                landed = torch.cuda.Event()  # type: ignore[no-untyped-call]
                landed.record(self._copy_stream)
            self._clock.begin()
            compute.wait_event(landed)
            self._clock.end()
        else:
            self._clock.begin()
            for key, buffer in self.staging.items():
                buffer.copy_(self.host[key][expert])
            self._clock.end()
        self._stats.bytes_moved += self.expert_bytes
        return self.staging

    def release(self) -> None:
        """The pass's computation is queued: its experts may now be evicted by a prefetch."""
        self._in_use = frozenset()

    def prefetch(self, experts: Sequence[int]) -> int:
        """Start fetching ``experts`` (in order of preference) into free or evictable slots; returns how many.

        Experts named in the same call protect each other, as do the experts of a pass not yet released;
        pinned experts are never evicted.
        """
        if any(not 0 <= expert < self.num_experts for expert in experts):
            raise ValueError(f"{self.name}: expert ids must be in [0, {self.num_experts})")
        protected = set(experts) | self._in_use
        started = 0
        for expert in experts:
            if self.slot_of[expert] >= 0:
                continue
            slot = self._free_slot(protected)
            if slot < 0:
                break
            self._load(expert, slot)
            self._stats.prefetched += 1
            started += 1
        return started

    def pin(self, experts: Sequence[int]) -> list[int]:
        """Keep ``experts`` resident (the first C, in the order given) and start fetching them; returns the pins."""
        if not isinstance(self.policy, Pinned):
            raise ValueError(
                f"{self.name}: pinning needs the 'pinned' or 'predicted' policy, this cache uses '{self.config.policy}'"
            )
        pins = list(dict.fromkeys(experts))[: self.capacity]
        self.policy.pin(pins)
        self.prefetch(pins)
        return pins

    def start_sequence(self, prompt_counts: Sequence[int]) -> list[int]:
        """A prompt arrives (the ``predicted`` policy): start fetching the C experts the predictor expects
        its decoding to use, from how many of the prompt's pairs each expert got, and pin the best
        ``pin_share`` · C of them; the rest are ordinary residents. Returns the pins."""
        if self.predictor is None or not isinstance(self.policy, Pinned):
            raise ValueError(f"{self.name}: start_sequence needs the 'predicted' policy")
        share = self.config.pin_share if self.config.pin_share is not None else self.predictor.pin_share
        chosen = self.predictor.choose(prompt_counts, self.capacity)
        pins = chosen[: pinned_count(share, self.capacity)]
        self.policy.pin(pins)
        self.prefetch(chosen)
        return pins

    def _free_slot(self, protected: set[int] | frozenset[int]) -> int:
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
        # A copy still landing in this slot is ordered before the next one on the copy stream, and nothing
        # will compute with the expert it brings: its event is simply dropped.
        self._ready.pop(slot, None)
        self.slot_of[expert] = -1
        self.expert_in[slot] = -1
        if count:
            self._stats.evictions += 1
            assert self.policy is not None
            self.policy.evicted(expert)

    def _load(self, expert: int, slot: int) -> None:
        if self._copy_stream is not None:
            # Work queued on the compute stream may still read this slot's previous expert.
            self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._copy_stream):
                for key, tensor in self.slots.items():
                    tensor[slot].copy_(self.host[key][expert], non_blocking=True)
                landed = torch.cuda.Event()  # type: ignore[no-untyped-call]
                landed.record(self._copy_stream)
            self._ready[slot] = landed
        else:
            self._clock.begin()
            for key, tensor in self.slots.items():
                tensor[slot].copy_(self.host[key][expert])
            self._clock.end()
        self.slot_of[expert] = slot
        self.expert_in[slot] = expert
        self._stats.bytes_moved += self.expert_bytes
        if self.policy is not None:
            self.policy.admitted(expert)

    def _wait_ready(self, slot: int) -> None:
        event = self._ready.pop(slot, None)
        if event is not None:
            self._clock.begin()
            torch.cuda.current_stream(self.device).wait_event(event)
            self._clock.end()
