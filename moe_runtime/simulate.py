"""What a policy would do with a routing trace, counted without computing anything.

Each MoE layer of the trace gets an ``ExpertCache`` over one-number stand-in experts, and the trace's
passes go through ``prepare`` / ``release`` exactly as ``cached_experts_forward`` drives them (the
prompt as one pass, then one pass per generated token; the ``predicted`` policy pins its choice at the
prompt, ``pinned`` is given an oracle's set). The counters are the cache's own, so hits, misses,
evictions and prefetches are what serving with those weights would count; bytes scale with the real
expert size (``CacheStats`` counts stand-in bytes: use :attr:`Replay.fetches`).

Caches persist across a trace's sequences, as in a server answering one request after another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.expert_cache import CacheStats, ExpertCache
from thrifty.moe_runtime.melinoe.predictor import LayerPredictor
from thrifty.moe_runtime.traces import RoutingTrace, TraceSequence


@dataclass(frozen=True, slots=True)
class Replay:
    """Counters over the generated tokens of every sequence (prompts excluded), all layers together."""

    stats: CacheStats
    tokens: int  # generated tokens
    layers: int

    @property
    def hit_rate(self) -> float:
        return self.stats.hit_rate

    @property
    def fetches(self) -> int:
        """Experts copied host → device while decoding: demand loads, streamed ones and prefetches."""
        return self.stats.misses + self.stats.prefetched

    def bytes_per_token(self, expert_bytes: int) -> float:
        return self.fetches * expert_bytes / max(self.tokens, 1)

    @property
    def bound(self) -> float:
        """1 / (1 − h): the most any policy at this hit rate can gain over fetching every expert, when
        transfers are all the time there is."""
        misses = 1.0 - self.hit_rate
        return float("inf") if misses <= 0 else 1.0 / misses


def oracle_sets(sequence: TraceSequence, slots: int) -> list[list[int]]:
    """Per layer, the ``slots`` experts the sequence's generated tokens use most (ties: lower id)."""
    decode = sequence.ids[sequence.prefill :].to(torch.long)
    sets = []
    for layer in range(sequence.ids.shape[1]):
        counts = Counter(decode[:, layer].reshape(-1).tolist())
        sets.append(sorted(counts, key=lambda e: (-counts[e], e))[:slots])
    return sets


def replay(trace: RoutingTrace, config: CacheConfig, predictors: Sequence[LayerPredictor] | None = None) -> Replay:
    """Run ``trace`` through one cache per layer under ``config``; counters cover generated tokens only.

    ``predicted`` needs ``predictors`` (one per layer); ``pinned`` pins :func:`oracle_sets` at each
    sequence's start, what a perfect predictor would choose.
    """
    if (config.policy == "predicted") != (predictors is not None):
        raise ValueError("replay: the predicted policy needs one predictor per layer, and only it takes them")
    if predictors is not None and len(predictors) != trace.layers:
        raise ValueError(f"replay: {len(predictors)} predictors for a trace of {trace.layers} layers")
    stand_in = {"gate_up": torch.zeros(trace.experts, 1, 1), "down": torch.zeros(trace.experts, 1, 1)}
    caches = [
        ExpertCache(stand_in, config, name=f"layer{layer}", predictor=None if predictors is None else predictors[layer])
        for layer in range(trace.layers)
    ]
    total = CacheStats()
    tokens = 0
    for sequence in trace.sequences:
        if config.policy == "pinned":
            for cache, experts in zip(caches, oracle_sets(sequence, caches[0].capacity), strict=True):
                cache.pin(experts)
        prompt = sequence.ids[: sequence.prefill].to(torch.long)
        for layer, cache in enumerate(caches):
            ids = prompt[:, layer].reshape(-1)
            if cache.predictor is not None:
                cache.start_sequence(torch.bincount(ids, minlength=trace.experts).tolist())
            cache.prepare(ids.tolist())
            cache.release()
        before = [replace(cache.stats) for cache in caches]
        for t in range(sequence.prefill, sequence.ids.shape[0]):
            step = sequence.ids[t].to(torch.long)
            for layer, cache in enumerate(caches):
                cache.prepare(step[layer].tolist())
                cache.release()
        for cache, old in zip(caches, before, strict=True):
            now = cache.stats
            total.add(CacheStats(**{f.name: getattr(now, f.name) - getattr(old, f.name) for f in fields(now)}))
        tokens += sequence.ids.shape[0] - sequence.prefill
    return Replay(total, tokens, trace.layers)


def choose_pin_share(
    trace: RoutingTrace, predictors: Sequence[LayerPredictor], slots: int, *, base: str = "lru", steps: int = 8
) -> tuple[float, dict[float, float]]:
    """The share of its C predicted experts the ``predicted`` policy should pin, judged on ``trace`` (held-out
    routing): replays pinning 0, C/``steps``, …, C of them (fetching all C either way; ``base`` keeps the
    rest) and returns the share with the highest hit rate (ties: the larger share) and every share's."""
    counts = sorted({round(slots * k / steps) for k in range(steps + 1)})
    config = CacheConfig(slots=slots, policy="predicted", base=base, predictor="in memory")
    rates: dict[float, float] = {}
    for count in counts:
        share = count / slots
        rates[share] = replay(trace, replace(config, pin_share=share), predictors).hit_rate
    best = max(rates, key=lambda share: (rates[share], share))
    return best, rates


def distinct_per_layer(trace: RoutingTrace, *, decode_only: bool = False) -> float:
    """Mean over sequences and layers of how many distinct experts a sequence used in a layer."""
    counts = []
    for sequence in trace.sequences:
        ids = sequence.ids[sequence.prefill :] if decode_only else sequence.ids
        if ids.shape[0] == 0:
            continue
        for layer in range(trace.layers):
            counts.append(len(set(ids[:, layer].reshape(-1).tolist())))
    if not counts:
        raise ValueError("the trace has no tokens to count")
    return sum(counts) / len(counts)
