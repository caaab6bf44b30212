"""vLLM general plugin (entry point ``vllm.general_plugins``): the expert cache, when the environment asks.

vLLM calls ``register`` in every process it starts. With ``THRIFTY_MOE_CACHE=1`` (and ``THRIFTY_MOE_SLOTS``,
``THRIFTY_MOE_POLICY``, … — see ``config.py``) it replaces vLLM's ``RoutedExperts`` layer by the cached one;
otherwise it does nothing, so installing the plugin changes no other server.
"""

from __future__ import annotations

import logging
import os

from thrifty.moe_runtime.config import CacheConfig

logger = logging.getLogger(__name__)


def register() -> None:
    config = CacheConfig.from_env(os.environ)  # a bad setting raises here, before any model loads
    if config is None:
        return
    from vllm.model_executor.custom_op import op_registry_oot
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    from thrifty.moe_runtime.vllm_layer import CachedRoutedExperts

    if op_registry_oot.get("RoutedExperts") is CachedRoutedExperts:
        return
    RoutedExperts.register_oot(CachedRoutedExperts)
    logger.info("thrifty expert cache: %d slots per layer, policy %s", config.slots, config.policy)
