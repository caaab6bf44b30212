"""The MELINOE fine-tune of a transformers mixture-of-experts model.

    L = L_NLL + λ_cs·L_cs + λ_rm·L_rm  (+ the model's own load-balancing term, only if kept)

transformers 5 lays out Qwen3-MoE, OLMoE and Mixtral alike: each MoE block holds ``gate`` (the router,
``weight`` [E, H], ``top_k``) and ``experts`` (``gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I]).
The routers are trained fully; the experts through PEFT LoRA on those two 3-D parameters
(``target_parameters``: one low-rank update per expert); everything else is frozen. Merging folds the
updates in, leaving a plain model of the base's architecture that vLLM and ``moe_runtime`` load as is.

What each router decides is read by a forward hook (its input and logits): p_f = softmax(logits) for
both MELINOE terms, and p_b = softmax(h · W_bᵀ) from a frozen copy of the base router's weights applied
to the *same* input h. Decided where the method is silent: p_b is the base router on the tuned model's
own hidden states (no second forward pass through a base model), so the rank term asks each router to
keep the base router's preferences for whatever reaches it. It is not zero at the start: every pair the
base orders by less than ρ already costs (a router's probabilities over many experts are mostly that
close), so it also sharpens each router along its base order. Both terms are averaged over the MoE
layers, so λ does not scale with depth.

The load-balancing loss (``router_aux_loss_coef`` · aux) pushes every sequence's tokens across all the
experts, against what L_cs asks; it is dropped unless ``load_balance`` keeps it (the ablation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from thrifty.moe_runtime.melinoe.losses import cache_simulation_loss, rank_matching_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel

IGNORE = -100
EXPERT_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")


@dataclass(frozen=True, slots=True)
class TuningSettings:
    """The fine-tune's knobs. Defaults follow a public reimplementation of the paper (λ_cs 0.5, λ_rm 0.1,
    ρ 0.1, γ 0.9, LoRA r 32 / α 16, lr 1e-5) for models of billions of parameters; a model trained from
    scratch a few minutes ago (the world's solvers) needs a far larger learning rate."""

    slots: int  # C, the cache the soft simulation models
    gamma: float = 0.9
    cache_weight: float = 0.5  # λ_cs
    rank_weight: float = 0.1  # λ_rm
    margin: float = 0.1  # ρ
    load_balance: bool = False  # keep the model's load-balancing term (the ablation)
    lora_rank: int = 32
    lora_alpha: int = 16
    learning_rate: float = 1e-5
    steps: int = 500
    batch_size: int = 8
    warmup_steps: int = 20
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"--slots (C) must be ≥ 1, got {self.slots}")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if min(self.cache_weight, self.rank_weight, self.margin) < 0:
            raise ValueError("the loss weights λ_cs, λ_rm and the margin ρ must be ≥ 0")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ValueError("LoRA needs rank ≥ 1 and alpha > 0")
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            raise ValueError("steps and batch size must be ≥ 1, warm-up ≥ 0")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"the learning rate must be > 0, got {self.learning_rate}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def learning_rate_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to a tenth."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True, slots=True)
class MoeBlock:
    name: str  # the block's module path, e.g. model.layers.3.mlp
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int


def moe_blocks(model: nn.Module) -> list[MoeBlock]:
    """The model's MoE blocks in order; a ValueError names what is missing for an unknown layout."""
    blocks = []
    for name, module in model.named_modules():
        experts, router = getattr(module, "experts", None), getattr(module, "gate", None)
        if experts is None or router is None:
            continue
        gate_up, weight = getattr(experts, "gate_up_proj", None), getattr(router, "weight", None)
        if not (isinstance(gate_up, torch.Tensor) and gate_up.dim() == 3 and isinstance(weight, torch.Tensor)):
            continue
        top_k = getattr(router, "top_k", None)
        if not isinstance(top_k, int) or weight.shape[0] != gate_up.shape[0]:
            raise ValueError(
                f"{name}: a router without top_k or with {weight.shape[0]} rows for {gate_up.shape[0]} experts"
            )
        blocks.append(MoeBlock(name, router, experts, int(gate_up.shape[0]), top_k))
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no MoE block with a `gate` router and `experts` holding 3-D "
            "gate_up_proj/down_proj (transformers 5's Qwen3-MoE, OLMoE and Mixtral layout)"
        )
    return blocks


def decoder_layer_ids(blocks: list[MoeBlock]) -> list[int]:
    """Each block's decoder-layer number (``…layers.<n>.…``), or none at all if a name lacks one."""
    found = [re.search(r"(?:^|\.)layers\.(\d+)\.", block.name + ".") for block in blocks]
    return [int(m.group(1)) for m in found if m is not None] if all(found) else []


@dataclass(slots=True)
class LossParts:
    total: torch.Tensor
    nll: float
    cache: float  # L_cs: expected misses per token, per layer
    rank: float
    balance: float  # the load-balancing term as the model weighs it (0 when not computed)

    def to_json(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), "nll": self.nll, "cache": self.cache, "rank": self.rank,
                "balance": self.balance}  # fmt: skip


class Tuner:
    """A model wrapped for the fine-tune: LoRA on the experts, routers trainable, router hooks installed."""

    def __init__(self, model: PreTrainedModel, settings: TuningSettings) -> None:
        from peft import LoraConfig, get_peft_model

        self.settings = settings
        blocks = moe_blocks(model)
        self.top_k = {b.top_k for b in blocks}
        if len(self.top_k) != 1:
            raise ValueError(f"MoE blocks route to different top-k {sorted(self.top_k)}: not supported")
        self.base_routers = [b.router.weight.detach().clone() for b in blocks]  # type: ignore[operator]
        self.balance_coef = float(getattr(model.config, "router_aux_loss_coef", 0.0) or 0.0)
        config = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=0.0,
            target_modules=[],
            target_parameters=list(EXPERT_PARAMETERS),
        )
        self.model = get_peft_model(model, config)
        self.blocks = blocks  # PEFT wraps the experts; the routers stay the modules found above
        for block in self.blocks:
            block.router.weight.requires_grad_(True)
        self._seen: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.blocks)
        self._hooks = [block.router.register_forward_hook(self._hook(i)) for i, block in enumerate(self.blocks)]

    def _hook(self, index: int) -> Any:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            logits = output[0] if isinstance(output, tuple) else output
            self._seen[index] = (inputs[0], logits)

        return record

    def trainable(self) -> dict[str, torch.Tensor]:
        """The parameters the fine-tune changes, by name (what a checkpoint holds)."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    @contextmanager
    def _recording(self) -> Iterator[None]:
        self._seen = [None] * len(self.blocks)
        try:
            yield
        finally:
            self._seen = [None] * len(self.blocks)

    def router_probabilities(self, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """p_f and p_b, [layers, batch, tokens, E], from the last forward pass."""
        tuned, base = [], []
        for seen, weight in zip(self._seen, self.base_routers, strict=True):
            if seen is None:
                raise RuntimeError("a router did not run in the forward pass")
            hidden, logits = seen
            hidden = hidden.reshape(-1, hidden.shape[-1])
            tuned.append(F.softmax(logits.float(), dim=-1).reshape(batch, width, -1))
            with torch.no_grad():
                base_logits = F.linear(hidden.to(weight.dtype), weight.to(hidden.device))
                base.append(F.softmax(base_logits.float(), dim=-1).reshape(batch, width, -1))
        return torch.stack(tuned), torch.stack(base)

    def router_probabilities_of(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """p_f and p_b on ``batch``, without gradients."""
        with torch.no_grad(), self._recording():
            self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            return self.router_probabilities(*batch["input_ids"].shape)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossParts:
        """The fine-tune's loss on one batch (``input_ids``, ``attention_mask``, ``labels`` with −100)."""
        s = self.settings
        with self._recording():
            outputs = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_router_logits=s.load_balance,
            )
            logits = outputs.logits
            labels = batch["labels"]
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE
            )
            rows, width = batch["input_ids"].shape
            tuned, base = self.router_probabilities(rows, width)
        mask = batch["attention_mask"].to(tuned.dtype).expand(tuned.shape[0], -1, -1)
        top_k = next(iter(self.top_k))
        cache = cache_simulation_loss(tuned, mask, slots=s.slots, top_k=top_k, gamma=s.gamma)
        rank = rank_matching_loss(tuned, base, mask, margin=s.margin)
        total = nll + s.cache_weight * cache + s.rank_weight * rank
        balance = 0.0
        if s.load_balance and getattr(outputs, "aux_loss", None) is not None:
            weighted = self.balance_coef * outputs.aux_loss
            total = total + weighted
            balance = float(weighted.detach())
        return LossParts(total, float(nll.detach()), float(cache.detach()), float(rank.detach()), balance)

    def merged(self) -> PreTrainedModel:
        """The base model with the LoRA updates folded in and the tuned routers: a plain transformers model."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        model: PreTrainedModel = self.model.merge_and_unload()  # type: ignore[assignment]
        for param in model.parameters():
            param.requires_grad_(False)
        return model
