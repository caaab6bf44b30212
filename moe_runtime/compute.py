"""The routed experts' computation, reading weights through an expert cache.

It follows transformers' eager loop (experts in ascending id; within one, tokens ordered by top-k position
then token; results added with ``index_add_``), so on CPU a cached layer gives the same numbers as the
resident one computed the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from thrifty.moe_runtime.expert_cache import ExpertCache

Activation = Callable[[torch.Tensor], torch.Tensor]


def cached_experts_forward(
    cache: ExpertCache,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    act_fn: Activation = F.silu,
) -> torch.Tensor:
    """Σ_k w_k · down_e(act(gate_e(x)) · up_e(x)) over each token's routed experts ``e``.

    ``hidden_states`` is [tokens, H]; ``top_k_index`` and ``top_k_weights`` are [tokens, k]. Ids outside
    [0, E) are padding (transformers uses E for dropped tokens) and contribute nothing.
    """
    final = torch.zeros_like(hidden_states)
    ids = top_k_index.to(torch.long)
    experts = [e for e in torch.unique(ids).tolist() if 0 <= e < cache.num_experts]
    placement = cache.prepare(experts)
    for expert in experts:
        top_k_pos, token_idx = torch.where((ids == expert).T)
        weights = cache.weights(expert, placement[expert])
        gate, up = F.linear(hidden_states[token_idx], weights["gate_up"]).chunk(2, dim=-1)
        out = F.linear(act_fn(gate) * up, weights["down"])
        out = out * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, out.to(final.dtype))
    return final
