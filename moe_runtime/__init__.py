"""Serve mixture-of-experts models from a small accelerator: all experts in host memory, C per layer on the
device, fetched on demand (``ExpertCache``), with eviction policies chosen by name.

The transformers integration lives in ``thrifty.moe_runtime.hf``, the vLLM plugin in
``thrifty.moe_runtime.vllm_plugin``; neither is imported here.
"""

from thrifty.moe_runtime.compute import cached_experts_forward
from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.eviction import POLICY_NAMES, EvictionPolicy, build_policy
from thrifty.moe_runtime.expert_cache import CacheStats, ExpertCache

__all__ = [
    "POLICY_NAMES",
    "CacheConfig",
    "CacheStats",
    "EvictionPolicy",
    "ExpertCache",
    "build_policy",
    "cached_experts_forward",
]
