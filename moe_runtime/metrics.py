"""Prometheus counters for expert caches, per layer.

They are plain ``prometheus_client`` counters, so a vLLM server exposes them on its own ``/metrics`` when
the process that runs the model and the one that serves HTTP share ``PROMETHEUS_MULTIPROC_DIR`` (the
gateway's launcher sets one for every backend that declares an expert cache).
"""

from __future__ import annotations

from dataclasses import fields

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from thrifty.moe_runtime.expert_cache import CacheStats

LABELS = ("layer", "policy", "slots")

# CacheStats field → (metric name, help). Hits and misses count (forward pass, expert) pairs.
_COUNTERS = {
    "passes": ("thrifty_moe_cache_passes_total", "Forward passes through the layer's experts"),
    "hits": ("thrifty_moe_cache_hits_total", "Experts a pass needed that were resident"),
    "misses": ("thrifty_moe_cache_misses_total", "Experts a pass needed that had to be fetched"),
    "streamed": ("thrifty_moe_cache_streamed_total", "Misses that streamed through (every slot needed)"),
    "evictions": ("thrifty_moe_cache_evictions_total", "Experts evicted to make room"),
    "prefetched": ("thrifty_moe_cache_prefetched_total", "Experts fetched ahead of need"),
    "bytes_moved": ("thrifty_moe_cache_transfer_bytes_total", "Expert weight bytes moved host to device"),
    "stall_seconds": ("thrifty_moe_cache_stall_seconds_total", "Time the computation waited on transfers"),
}


class CacheMetrics:
    """The counters, registered once per process; ``publish`` adds what a cache did since its last call."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self._counters = {
            key: Counter(name, text, LABELS, registry=registry) for key, (name, text) in _COUNTERS.items()
        }
        self._published: dict[str, CacheStats] = {}

    def publish(self, layer: str, policy: str, slots: int, stats: CacheStats) -> None:
        before = self._published.setdefault(layer, CacheStats())
        for f in fields(CacheStats):
            delta = getattr(stats, f.name) - getattr(before, f.name)
            if delta > 0:
                self._counters[f.name].labels(layer=layer, policy=policy, slots=str(slots)).inc(delta)
            setattr(before, f.name, getattr(stats, f.name))
