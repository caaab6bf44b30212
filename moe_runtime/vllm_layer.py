"""vLLM's routed-experts layer with an expert cache (imported only by the plugin, inside vLLM).

vLLM's ``FusedMoE`` runs ``[router] → RoutedExperts.forward_modular(x, topk_weights, topk_ids)``; the
layer owns the expert weights (``w13_weight`` [E, 2I, H], ``w2_weight`` [E, H, I]). ``CachedRoutedExperts``
replaces that class (``PluggableLayer.register_oot``): it loads weights as vLLM does, then, after loading,
hands them to an ``ExpertCache`` and computes the routed experts through it. vLLM's router still chooses
every expert: the modular path is forced, so routing happens in vLLM before this layer sees the ids.

Supported: unquantized weights, SiLU-gated experts, no expert parallelism, router weights applied to the
output (Qwen3-MoE, Mixtral, OLMoE). Anything else raises at model construction with the reason. On a GPU
the expert weights are created in host memory, so the full set never has to fit on the device; CUDA
graphs cannot capture the cache's host-side decisions, so run such a server with ``--enforce-eager``.

The ``predicted`` policy (a MELINOE predictor, ``THRIFTY_MOE_PREDICTOR``) re-pins each layer's slots at
every pass that carries a prompt, from that pass's routing. With one request at a time that is the
request's own prediction; when prompts join a batch of running requests, the pins follow the newest
prompts (plus what the running requests route in that pass), and the base policy serves the rest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod

from thrifty.moe_runtime.compute import cached_experts_forward
from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.expert_cache import ExpertCache
from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor
from thrifty.moe_runtime.metrics import CacheMetrics

logger = logging.getLogger(__name__)

# Publishing resolves CUDA timing events (a synchronisation), so on a GPU it happens every N passes.
_PUBLISH_EVERY_CUDA = 64


class _Process:
    """What one vLLM worker process shares between its layers: the configuration, the counters, the
    predictor (``predicted``), and the layers by name (the custom op below receives a name, not a module)."""

    config: CacheConfig | None = None
    metrics: CacheMetrics | None = None
    predictor: ExpertPredictor | None = None
    layers: dict[str, CachedRoutedExperts] = {}

    @classmethod
    def settings(cls) -> CacheConfig:
        if cls.config is None:
            config = CacheConfig.from_env(os.environ)
            if config is None:
                raise RuntimeError("the expert-cache layer was registered without THRIFTY_MOE_CACHE=1")
            cls.config = config
        return cls.config

    @classmethod
    def expert_predictor(cls) -> ExpertPredictor:
        if cls.predictor is None:
            config = cls.settings()
            if config.predictor is None:
                raise RuntimeError("the predicted policy was configured without a predictor")
            cls.predictor = ExpertPredictor.load(Path(config.predictor))
        return cls.predictor

    @classmethod
    def counters(cls) -> CacheMetrics:
        if cls.metrics is None:
            cls.metrics = CacheMetrics()
        return cls.metrics


def _holds_prompt(tokens: int) -> bool:
    """Whether this forward pass carries prompt tokens: some request in it has more than one query token
    (a prefill or a chunk of one), as vLLM's attention metadata says; without metadata, more than one token."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if is_forward_context_available():
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):  # micro-batches: one dict each
            metadata = metadata[0] if metadata else None
        if isinstance(metadata, dict):
            metadata = next(iter(metadata.values()), None)
        longest = getattr(metadata, "max_query_len", None)
        if isinstance(longest, int):
            return longest > 1
    return tokens > 1


def _cuda_graphs_on() -> bool:
    from vllm.config import CUDAGraphMode, get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    return config is not None and config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE


class CachedExpertsMethod(UnquantizedFusedMoEMethod):
    """vLLM's unquantized method, minus its kernels: weights go to the cache, ``apply`` computes through it."""

    # vLLM's loader would otherwise move every layer's full w13/w2 to the device around
    # process_weights_after_loading (and back): the whole expert set would have to fit on the GPU after all,
    # at twice its size in host ↔ device traffic. The cache takes the weights from host memory where they
    # were loaded.
    requires_device_loading = False

    @property
    def is_monolithic(self) -> bool:
        return False  # routing must happen in vLLM's router, before the layer, so ids are never changed

    def process_weights_after_loading(self, layer: Any) -> None:
        assert isinstance(layer, CachedRoutedExperts)
        layer.build_cache()

    def apply(
        self,
        layer: Any,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        shared_experts: Any,
        shared_experts_input: torch.Tensor | None,
    ) -> torch.Tensor:
        if shared_experts is not None:
            raise NotImplementedError("the expert cache does not run shared experts inside the routed layer")
        assert isinstance(layer, CachedRoutedExperts)
        return torch.ops.thrifty_moe.cached_experts(x, topk_weights, topk_ids, layer.layer_name)


# vLLM compiles the model with torch.compile, and on CPU it traces into the MoE layer; the cache's
# decisions depend on the routing ids' values, so the computation is an opaque custom op.
@torch.library.custom_op("thrifty_moe::cached_experts", mutates_args=())
def _cached_experts_op(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer: str) -> torch.Tensor:
    return _Process.layers[layer].cached_forward(x, topk_weights, topk_ids)


@_cached_experts_op.register_fake
def _(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer: str) -> torch.Tensor:
    return torch.empty_like(x)


class CachedRoutedExperts(RoutedExperts):
    """``RoutedExperts`` whose weights live in an ``ExpertCache``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = _Process.settings()
        device = torch.get_default_device()
        if device.type == "cuda" and _cuda_graphs_on():
            raise ValueError(
                "the expert cache decides on the host at every forward pass, which CUDA graphs would freeze: "
                "start vLLM with --enforce-eager"
            )
        # Experts are created (and loaded) in host memory; only the cache's slots go to the device.
        with torch.device("cpu"):
            super().__init__(*args, **kwargs)
        self.device = device
        if self.local_num_experts != self.global_num_experts:
            raise ValueError(f"{self.layer_name}: the expert cache does not support expert parallelism")
        if self.activation.value != "silu" or self.apply_router_weight_on_input:
            raise ValueError(f"{self.layer_name}: the expert cache supports SiLU-gated experts weighted on output")
        self.cache_config = config
        self.expert_cache: ExpertCache | None = None
        _Process.layers[self.layer_name] = self

    def _get_quant_method(self, prefix: str, quant_config: Any, moe_config: Any) -> Any:
        if quant_config is not None:
            raise ValueError(f"{prefix}: the expert cache supports unquantized models only")
        return CachedExpertsMethod(moe_config)

    def build_cache(self) -> None:
        weights = {"gate_up": self.w13_weight.data, "down": self.w2_weight.data}
        share = None
        if self.cache_config.policy == "predicted":
            share = _Process.expert_predictor().layer_named(
                self.layer_name, list(_Process.layers).index(self.layer_name)
            )
        self.expert_cache = ExpertCache(weights, self.cache_config, self.device, name=self.layer_name, predictor=share)
        # The cache holds the host copy; the parameters stay as empty placeholders for vLLM's bookkeeping.
        self.w13_weight.data = torch.empty(0, dtype=self.w13_weight.dtype)
        self.w2_weight.data = torch.empty(0, dtype=self.w2_weight.dtype)
        logger.info(
            "expert cache for %s: %d of %d experts on %s, policy %s",
            self.layer_name,
            self.expert_cache.capacity,
            self.expert_cache.num_experts,
            self.device,
            self.cache_config.policy,
        )

    def cached_forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        cache = self.expert_cache
        if cache is None:
            raise RuntimeError(f"{self.layer_name}: expert cache used before weights were loaded")
        prompt = _holds_prompt(x.shape[0]) if cache.predictor is not None else None
        out = cached_experts_forward(cache, x, topk_ids, topk_weights, prompt=prompt)
        if cache.device.type != "cuda" or cache.passes % _PUBLISH_EVERY_CUDA == 0:
            _Process.counters().publish(self.layer_name, self.cache_config.policy, cache.capacity, cache.stats)
        return out
