"""Serve mixture-of-experts models from a small accelerator: all experts in host memory, C per layer on the
device, fetched on demand (``ExpertCache``), with eviction policies chosen by name.

The configuration and policies import without torch (the gateway validates its config with them); the
cache and its computation load torch when first asked for. The transformers integration lives in
``thrifty.moe_runtime.hf``, the vLLM plugin in ``thrifty.moe_runtime.vllm_plugin``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.eviction import POLICY_NAMES, EvictionPolicy, build_policy

if TYPE_CHECKING:
    from thrifty.moe_runtime.compute import cached_experts_forward
    from thrifty.moe_runtime.expert_cache import CacheStats, ExpertCache

_LAZY = {
    "cached_experts_forward": "thrifty.moe_runtime.compute",
    "CacheStats": "thrifty.moe_runtime.expert_cache",
    "ExpertCache": "thrifty.moe_runtime.expert_cache",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "POLICY_NAMES",
    "CacheConfig",
    "CacheStats",
    "EvictionPolicy",
    "ExpertCache",
    "build_policy",
    "cached_experts_forward",
]
