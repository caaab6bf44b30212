"""The MELINOE fine-tune on tiny Qwen3-MoE, OLMoE and Mixtral models: what it trains, what its loss holds,
that it concentrates each sequence's routing, and that merging leaves a plain model."""

from __future__ import annotations

import pytest
import torch

from tests.moe_runtime.test_hf import ARCHITECTURES, _model
from thrifty.moe_runtime.melinoe.losses import cache_simulation_loss, rank_matching_loss
from thrifty.moe_runtime.melinoe.routing import recording_routes
from thrifty.moe_runtime.melinoe.tuning import Tuner, TuningSettings, decoder_layer_ids, moe_blocks

EXPERTS, TOP_K = 6, 2


def _batch(seed: int, rows: int = 4, width: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (rows, width), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_blocks_are_found_in_every_layout(architecture: str) -> None:
    blocks = moe_blocks(_model(architecture))
    assert [b.name for b in blocks] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert {(b.num_experts, b.top_k) for b in blocks} == {(EXPERTS, TOP_K)}
    assert decoder_layer_ids(blocks) == [0, 1]
    with pytest.raises(ValueError, match="has no MoE block"):
        moe_blocks(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_only_routers_and_expert_lora_train_and_the_loss_is_its_parts(architecture: str) -> None:
    settings = TuningSettings(slots=2, cache_weight=0.5, rank_weight=0.1, lora_rank=4, lora_alpha=8)
    tuner = Tuner(_model(architecture), settings)
    trainable = tuner.trainable()
    assert sum(name.endswith("mlp.gate.weight") for name in trainable) == 2
    assert all("lora_" in name or name.endswith("mlp.gate.weight") for name in trainable)
    assert any("gate_up_proj" in name or "lora_A" in name for name in trainable)
    batch = _batch(0)
    parts = tuner.loss(batch)
    assert float(parts.total.detach()) == pytest.approx(parts.nll + 0.5 * parts.cache + 0.1 * parts.rank, rel=1e-5)
    assert parts.balance == 0.0  # the load-balancing term is dropped by default
    # the cache term is the soft cache's misses on the routers' own probabilities, layers averaged
    probs, base = tuner.router_probabilities_of(batch)
    mask = batch["attention_mask"].expand(2, -1, -1)
    assert parts.cache == pytest.approx(float(cache_simulation_loss(probs, mask, slots=2, top_k=TOP_K)), rel=1e-5)
    assert parts.rank == pytest.approx(float(rank_matching_loss(probs, base, mask)), rel=1e-5)
    assert torch.allclose(probs, base, atol=1e-6)  # before any step, the tuned routers are the base ones
    parts.total.backward()
    # LoRA's B starts at zero, so A gets no gradient on the first step; B and the routers do
    assert all(p.grad is not None for p in trainable.values())
    assert all(float(p.grad.abs().sum()) > 0 for name, p in trainable.items() if "lora_A" not in name)
    frozen = [p for name, p in tuner.model.named_parameters() if name not in trainable]
    assert frozen and all(p.grad is None for p in frozen)


def test_keeping_the_load_balancing_loss_adds_it() -> None:
    kept = Tuner(_model("qwen3_moe"), TuningSettings(slots=2, load_balance=True, lora_rank=4)).loss(_batch(1))
    dropped = Tuner(_model("qwen3_moe"), TuningSettings(slots=2, lora_rank=4)).loss(_batch(1))
    assert kept.balance > 0 and dropped.balance == 0
    assert float(kept.total.detach()) == pytest.approx(float(dropped.total.detach()) + kept.balance, rel=1e-5)


def _distinct_per_sequence(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    counts = []
    with recording_routes(model) as passes, torch.no_grad():
        for row in batch["input_ids"]:
            model(input_ids=row[None])
    for routing in passes:
        counts += [len(set(routing[:, layer].flatten().tolist())) for layer in range(routing.shape[1])]
    return sum(counts) / len(counts)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_the_cache_loss_concentrates_each_sequences_experts_and_merging_keeps_the_tuned_model(
    architecture: str,
) -> None:
    torch.manual_seed(0)
    settings = TuningSettings(
        slots=2, cache_weight=5.0, rank_weight=0.0, lora_rank=4, lora_alpha=8, learning_rate=3e-2, warmup_steps=0
    )
    held_out = _batch(99, rows=6, width=16)
    before = _distinct_per_sequence(_model(architecture), held_out)
    tuner = Tuner(_model(architecture), settings)
    params = list(tuner.trainable().values())
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate)
    cache = []
    for step in range(60):
        parts = tuner.loss(_batch(step))
        parts.total.backward()
        optimizer.step()
        optimizer.zero_grad()
        cache.append(parts.cache)
    first, last = sum(cache[:5]) / 5, sum(cache[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    with torch.no_grad():
        tuned_logits = tuner.model(input_ids=held_out["input_ids"]).logits
    merged = tuner.merged()
    assert type(merged).__name__ == ARCHITECTURES[architecture][0].__name__
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=held_out["input_ids"]).logits, tuned_logits, atol=1e-4)
    after = _distinct_per_sequence(merged, held_out)
    assert after < before - 1.0, (before, after)  # of 6 experts per layer, top-2


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="slots"):
        TuningSettings(slots=0)
    with pytest.raises(ValueError, match="gamma"):
        TuningSettings(slots=2, gamma=1.0)
    with pytest.raises(ValueError, match="≥ 0"):
        TuningSettings(slots=2, cache_weight=-1)
    with pytest.raises(ValueError, match="learning rate"):
        TuningSettings(slots=2, learning_rate=0.0)
    schedule = TuningSettings(slots=2, learning_rate=1.0, steps=110, warmup_steps=10)
    assert schedule.learning_rate_at(0) == pytest.approx(0.1)
    assert schedule.learning_rate_at(10) == pytest.approx(1.0)
    assert schedule.learning_rate_at(110) == pytest.approx(0.1)
