"""The routed experts' computation, reading weights through an expert cache.

It follows transformers' eager loop (experts in ascending id; within one, tokens ordered by top-k position
then token; results added with ``index_add_``), so on CPU a cached layer gives the same numbers as the
resident one computed the same way.

A pass reads the routing back to the host exactly once: how many (token, position) pairs each expert
got, which is all the cache needs to decide, and all the loop needs to slice one sort of the ids into
per-expert groups. Everything else stays on the device, so on a GPU the pass synchronises once.
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
    prompt: bool | None = None,
) -> torch.Tensor:
    """Σ_k w_k · down_e(act(gate_e(x)) · up_e(x)) over each token's routed experts ``e``.

    ``hidden_states`` is [tokens, H]; ``top_k_index`` and ``top_k_weights`` are [tokens, k]. Ids outside
    [0, E) are padding (transformers uses E for dropped tokens) and contribute nothing.

    ``prompt``: whether the pass holds a prompt (the ``predicted`` policy pins its choice then); by
    default, a pass of more than one token does (one sequence at a time, as transformers generates).
    """
    final = torch.zeros_like(hidden_states)
    tokens = top_k_index.shape[0]
    if tokens == 0:
        return final
    num_experts = cache.num_experts
    # Position-major flattening (index = position·tokens + token): a stable sort by expert then lists each
    # expert's pairs by position, then token — transformers' order.
    ids = top_k_index.to(torch.long).T.reshape(-1)
    ids = torch.where((ids >= 0) & (ids < num_experts), ids, num_experts)  # padding sorts last
    order = torch.sort(ids, stable=True).indices
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(0, ids, torch.ones_like(ids))
    per_expert = counts.tolist()  # the pass's one device → host read
    experts = [e for e in range(num_experts) if per_expert[e]]
    if cache.predictor is not None and (tokens > 1 if prompt is None else prompt):
        cache.start_sequence(per_expert[:num_experts])
    placement = cache.prepare(experts)
    start = 0
    for expert in range(num_experts):
        count = per_expert[expert]
        if not count:
            continue
        pairs = order[start : start + count]
        start += count
        token_idx, top_k_pos = pairs % tokens, pairs // tokens
        weights = cache.weights(expert, placement[expert])
        gate, up = F.linear(hidden_states[token_idx], weights["gate_up"]).chunk(2, dim=-1)
        out = F.linear(act_fn(gate) * up, weights["down"])
        out = out * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, out.to(final.dtype))
    cache.release()
    return final
