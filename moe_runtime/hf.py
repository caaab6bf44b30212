"""Hugging Face ``transformers`` MoE models with cached experts.

transformers 5 keeps a layer's experts in one module holding ``gate_up_proj`` [E, 2I, H] and ``down_proj``
[E, H, I] and called as ``experts(hidden_states, top_k_index, top_k_weights)`` after the model's own router
(Qwen3-MoE, OLMoE and Mixtral alike). ``convert`` swaps each such module for ``CachedExperts``, which keeps
the same call and reads the weights through an ``ExpertCache``. The router, and so every routing
decision, is untouched.

    model = AutoModelForCausalLM.from_pretrained(path)        # on the host
    cached = convert(model, CacheConfig(slots=2, policy="lru"), device="cuda")
    model.to("cuda")                                           # everything but the experts' host copies
    model.generate(...); cached.stats()
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from thrifty.moe_runtime.compute import Activation, cached_experts_forward
from thrifty.moe_runtime.config import CacheConfig
from thrifty.moe_runtime.expert_cache import CacheStats, ExpertCache

if TYPE_CHECKING:
    from thrifty.moe_runtime.melinoe.predictor import LayerPredictor


class CachedExperts(nn.Module):
    """A drop-in for a transformers experts module; its weights live in ``cache``."""

    def __init__(self, cache: ExpertCache, act_fn: Activation, layer: int) -> None:
        super().__init__()
        self.cache = cache
        self.act_fn = act_fn
        self.layer = layer
        self.num_experts = cache.num_experts
        self.recording: list[torch.Tensor] | None = None

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        if self.recording is not None:
            self.recording.append(top_k_index.detach().to("cpu", torch.int16))
        return cached_experts_forward(self.cache, hidden_states, top_k_index, top_k_weights, self.act_fn)


@dataclass(slots=True)
class CachedModel:
    """The converted layers, in model order, and what can be asked of them together."""

    layers: list[CachedExperts]
    recordings: list[list[torch.Tensor]] = field(default_factory=list)

    @property
    def caches(self) -> list[ExpertCache]:
        return [layer.cache for layer in self.layers]

    def stats(self) -> CacheStats:
        total = CacheStats()
        for cache in self.caches:
            total.add(cache.stats)
        return total

    def pin(self, experts_per_layer: Sequence[Sequence[int]]) -> None:
        """Give every layer its per-sequence set (the ``pinned`` policy), as a predictor would at prefill."""
        if len(experts_per_layer) != len(self.layers):
            raise ValueError(
                f"pin needs one expert set per MoE layer ({len(self.layers)}), got {len(experts_per_layer)}"
            )
        for cache, experts in zip(self.caches, experts_per_layer, strict=True):
            cache.pin(experts)

    @contextmanager
    def record(self) -> Iterator[list[torch.Tensor]]:
        """Record routing while the block runs: yields a list that receives, per forward pass, a
        [tokens, layers, k] tensor of the experts each token was routed to."""
        passes: list[torch.Tensor] = []
        for layer in self.layers:
            layer.recording = []
        try:
            yield passes
        finally:
            per_layer = [layer.recording or [] for layer in self.layers]
            for layer in self.layers:
                layer.recording = None
            for step in zip(*per_layer, strict=True):
                passes.append(torch.stack(step, dim=1))


def _is_experts_module(module: nn.Module) -> bool:
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (
        isinstance(gate_up, nn.Parameter)
        and isinstance(down, nn.Parameter)
        and gate_up.dim() == 3
        and down.dim() == 3
        and callable(getattr(module, "act_fn", None))
    )


def convert(model: nn.Module, config: CacheConfig, device: torch.device | str | None = None) -> CachedModel:
    """Replace every experts module of ``model`` by a cached one with ``config.slots`` slots on ``device``
    (default: where the experts are now). Raises ValueError, with the model unchanged, if it has no experts
    it can convert.

    Layer by layer: each layer's original weights are released as soon as its cache holds them, so the
    host never holds more than the experts plus one layer's copy (none at all where the cache can use the
    weights where they lie).
    """
    names = [name for name, module in model.named_modules() if _is_experts_module(module)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no experts module with 3-D gate_up_proj/down_proj weights "
            "(transformers ≥ 5 MoE layout: Qwen3-MoE, OLMoE, Mixtral)"
        )
    for name in names:
        if any("bias" in param_name for param_name, _ in model.get_submodule(name).named_parameters()):
            raise ValueError(f"{name}: experts with biases are not supported by the expert cache")
    shares: list[LayerPredictor | None] = [None] * len(names)
    if config.policy == "predicted":
        from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor

        assert config.predictor is not None  # CacheConfig holds predicted to a predictor
        predictor = ExpertPredictor.load(Path(config.predictor))
        if predictor.layers != len(names):
            raise ValueError(
                f"the predictor at {config.predictor} covers {predictor.layers} MoE layers, the model has {len(names)}"
            )
        shares = [predictor.layer_named(name, index) for index, name in enumerate(names)]
    layers: list[CachedExperts] = []
    for index, name in enumerate(names):
        module = model.get_submodule(name)
        gate_up, down = module.gate_up_proj, module.down_proj
        assert isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter)
        target = torch.device(device) if device is not None else gate_up.device
        cache = ExpertCache(
            {"gate_up": gate_up.data, "down": down.data},
            config,
            target,
            name=name,
            predictor=shares[index],
        )
        act_fn: Activation = getattr(module, "act_fn")  # noqa: B009 - checked callable above
        cached = CachedExperts(cache, act_fn, index)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, cached)
        # Whoever still holds the old module keeps an empty shell, not a second copy of the experts.
        for param in (gate_up, down):
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
        del module, gate_up, down
        layers.append(cached)
    return CachedModel(layers)
