"""MELINOE's training losses, on router probabilities of shape [..., T, E] (any leading dimensions:
layers, batch), with a token mask [..., T] that is 1 for real tokens.

**Soft cache.** A cache of C slots under top-K routing is simulated by a state c_t ∈ [0, C]^E with
‖c_t‖₁ = C, updated after each token from r_t, the token's top-K indicator:

    c_{t+1} = (γ·Z_t·c_t + r_t) / Z_{t+1},   Z_{t+1} = γ·Z_t + K/C,   c_0 = 0, Z_0 = 0.

Unrolled, c_t = N_t / Z_t with N_t = Σ_{s<t} γ^{t−1−s}·r_s and Z_t = (K/C)·Σ_{s<t} γ^{t−1−s}, which is
how it is computed here: one [T, T] matrix of decays, no loop over tokens. Masked tokens neither enter
the cache nor count, so left and right padding are both harmless.

Decided where the method is silent:
- the cache is empty before the first token (c_0 = 0: a cold start, K misses), as the expert cache
  is at a sequence's start when nothing is pinned;
- an entry of c can exceed 1 (an expert that every recent token used holds C/K of the mass); an
  expert cannot be more than resident, so the expected misses of a token are ⟨r_t, 1 − min(c_t, 1)⟩;
- r_t is straight-through: the hard top-K indicator forwards, the router's softmax takes the gradient
  (r = hard + p − stop_grad(p)), and gradient flows through c_t into the earlier tokens' routing too.

**Rank matching.** Against the frozen base router's probabilities p_b, per token
Σ_{i,j} 1[p_b,i > p_b,j]·relu(ρ − (p_f,i − p_f,j)): every pair the base model orders must stay ordered
by a margin ρ in the tuned router, unless the cache term pays for changing it. Averaged over tokens.
"""

from __future__ import annotations

import torch


def straight_through_top_k(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """The top-K indicator of ``probs`` [..., E] forward, the identity on ``probs`` backward."""
    if not 1 <= top_k <= probs.shape[-1]:
        raise ValueError(f"top_k must be in [1, {probs.shape[-1]}], got {top_k}")
    hard = torch.zeros_like(probs).scatter_(-1, probs.topk(top_k, dim=-1).indices, 1.0)
    return hard + probs - probs.detach()


def _decays(tokens: int, gamma: float, like: torch.Tensor) -> torch.Tensor:
    """W[t, s] = γ^(t−1−s) for s < t, else 0."""
    t = torch.arange(tokens, device=like.device)
    gap = (t[:, None] - 1 - t[None, :]).to(like.dtype)
    weights = torch.pow(torch.tensor(gamma, dtype=like.dtype, device=like.device), gap.clamp(min=0))
    return torch.where(gap >= 0, weights, torch.zeros((), dtype=like.dtype, device=like.device))


def soft_cache_states(
    routed: torch.Tensor, mask: torch.Tensor | None, *, slots: int, top_k: int, gamma: float
) -> torch.Tensor:
    """c_t, the soft cache before token t, for every token: [..., T, E] from the indicators ``routed``."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    if slots < 1:
        raise ValueError(f"slots must be ≥ 1, got {slots}")
    tokens = routed.shape[-2]
    if mask is None:
        mask = torch.ones(routed.shape[:-1], dtype=routed.dtype, device=routed.device)
    mask = mask.to(routed.dtype)
    decays = _decays(tokens, gamma, routed)
    numerator = decays @ (routed * mask[..., None])  # N_t
    normaliser = (top_k / slots) * (decays @ mask[..., None])  # Z_t, [..., T, 1]
    safe = torch.where(normaliser > 0, normaliser, torch.ones_like(normaliser))
    return torch.where(normaliser > 0, numerator / safe, torch.zeros_like(numerator))


def cache_simulation_loss(
    probs: torch.Tensor, mask: torch.Tensor | None, *, slots: int, top_k: int, gamma: float = 0.9
) -> torch.Tensor:
    """L_cs: expected misses per real token of a soft cache of ``slots`` experts (a scalar)."""
    routed = straight_through_top_k(probs, top_k)
    states = soft_cache_states(routed, mask, slots=slots, top_k=top_k, gamma=gamma)
    misses = (routed * (1.0 - states.clamp(max=1.0))).sum(-1)  # [..., T]
    if mask is None:
        return misses.mean()
    weight = mask.to(misses.dtype)
    return (misses * weight).sum() / weight.sum().clamp(min=1.0)


def rank_matching_loss(
    probs: torch.Tensor, base_probs: torch.Tensor, mask: torch.Tensor | None, *, margin: float = 0.1
) -> torch.Tensor:
    """L_rm: pairs the frozen base router orders (p_b,i > p_b,j) that the tuned one does not keep apart
    by ``margin``, summed per token and averaged over real tokens (a scalar)."""
    if probs.shape != base_probs.shape:
        raise ValueError(f"router probabilities differ in shape: {tuple(probs.shape)} vs {tuple(base_probs.shape)}")
    base = base_probs.detach()
    ordered = (base[..., :, None] > base[..., None, :]).to(probs.dtype)
    gaps = probs[..., :, None] - probs[..., None, :]
    per_token = (ordered * torch.relu(margin - gaps)).sum((-1, -2))
    if mask is None:
        return per_token.mean()
    weight = mask.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)


def distinct_experts(routed_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Distinct experts a sequence used, per layer: ``routed_ids`` [tokens, layers, k] → [layers]."""
    layers = routed_ids.shape[1]
    used = torch.zeros(layers, num_experts, dtype=torch.bool)
    for layer in range(layers):
        used[layer, routed_ids[:, layer].reshape(-1).long()] = True
    return used.sum(-1)
