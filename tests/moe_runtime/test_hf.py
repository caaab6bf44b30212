"""transformers MoE models converted to cached experts generate exactly what the resident model does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from thrifty.moe_runtime import POLICY_NAMES, CacheConfig
from thrifty.moe_runtime.hf import convert
from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor

EXPERTS = 6
COMMON = {
    "vocab_size": 96,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "eos_token_id": None,
}
ARCHITECTURES: dict[str, tuple[type[PreTrainedModel], PretrainedConfig]] = {
    "qwen3_moe": (
        Qwen3MoeForCausalLM,
        Qwen3MoeConfig(**COMMON, num_experts=EXPERTS, moe_intermediate_size=24, head_dim=16),
    ),
    "olmoe": (OlmoeForCausalLM, OlmoeConfig(**COMMON, num_experts=EXPERTS, intermediate_size=24)),
    "mixtral": (MixtralForCausalLM, MixtralConfig(**COMMON, num_local_experts=EXPERTS, intermediate_size=24)),
}
PROMPTS = torch.tensor([[5, 17, 33, 2, 71, 9], [44, 3, 3, 80, 12, 60]])


def _model(architecture: str) -> PreTrainedModel:
    cls, config = ARCHITECTURES[architecture]
    torch.manual_seed(0)
    model = cls(config).eval()
    for param in model.parameters():  # spread the routers' logits so the experts are used unevenly
        param.data.normal_(0.0, 0.3)
    return model


def _greedy(model: PreTrainedModel, prompts: torch.Tensor = PROMPTS) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=12, do_sample=False, min_new_tokens=12
        )
    return out


def _predictor(folder: Path, layers: int = 2) -> str:
    g = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(layers, EXPERTS, EXPERTS, generator=g), torch.randn(layers, EXPERTS, generator=g)
    ExpertPredictor(weight, bias, top_k=2).save(folder)
    return str(folder)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_greedy_generations_match_for_every_policy_and_slot_count(architecture: str, tmp_path: Path) -> None:
    reference = _greedy(_model(architecture))
    predictor = _predictor(tmp_path / "predictor")
    for policy in POLICY_NAMES:
        for slots in range(1, EXPERTS + 1):
            model = _model(architecture)
            config = CacheConfig(slots=slots, policy=policy, predictor=predictor if policy == "predicted" else None)
            cached = convert(model, config)
            if policy == "pinned":
                cached.pin([[0, 1, 2][:slots]] * len(cached.layers))
            with cached.record() as passes:
                assert torch.equal(_greedy(model), reference), (policy, slots)
            stats = cached.stats()
            assert stats.passes == 12 * len(cached.layers)  # one prefill and 11 decode steps per layer
            needed = [len(set(p[:, layer].flatten().tolist())) for p in passes for layer in range(p.shape[1])]
            assert stats.hits + stats.misses == sum(needed)
            assert policy != "none" or stats.hits == 0
            if policy not in ("pinned", "predicted"):  # only pins can make a pass stream more than its excess over C
                assert stats.streamed == sum(max(0, n - slots) for n in needed)


def test_recorded_routing_is_the_models_own() -> None:
    model = _model("qwen3_moe")
    with torch.no_grad():
        routed = model(PROMPTS[:1], output_router_logits=True).router_logits
    converted = _model("qwen3_moe")
    cached = convert(converted, CacheConfig(slots=2))
    with cached.record() as passes:
        _greedy(converted, PROMPTS[:1])
    assert len(passes) == 12 and passes[0].shape == (6, 2, 2) and passes[1].shape == (1, 2, 2)
    for layer, logits in enumerate(routed):
        expected = torch.topk(logits, 2, dim=-1).indices.sort(dim=-1).values
        assert torch.equal(passes[0][:, layer].to(torch.long).sort(dim=-1).values, expected)


def test_a_dense_model_is_refused() -> None:
    model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in COMMON.items() if k != "num_experts_per_tok"}))
    with pytest.raises(ValueError, match="has no experts module"):
        convert(model, CacheConfig(slots=2))
    cached = convert(_model("olmoe"), CacheConfig(slots=2, policy="pinned"))
    with pytest.raises(ValueError, match="one expert set per MoE layer"):
        cached.pin([[0]])


def test_conversion_releases_each_layers_originals_before_the_next_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import thrifty.moe_runtime.hf as hf

    model = _model("mixtral")
    originals = [m for m in model.modules() if hf._is_experts_module(m)]
    full = originals[0].gate_up_proj.numel()
    still_held: list[int] = []
    real_cache = hf.ExpertCache

    def counting_cache(*args: object, **kwargs: object) -> object:
        still_held.append(sum(m.gate_up_proj.numel() == full for m in originals))
        return real_cache(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hf, "ExpertCache", counting_cache)
    cached = convert(model, CacheConfig(slots=2))
    # When layer i is cached, layers 0 … i−1 have already let go of their weights.
    assert still_held == [len(originals) - i for i in range(len(originals))]
    assert all(m.gate_up_proj.numel() == 0 and m.down_proj.numel() == 0 for m in originals)
    assert all(cache.host["gate_up"].shape[0] == EXPERTS for cache in cached.caches)


def test_a_model_with_expert_biases_is_refused_unchanged() -> None:
    model = _model("qwen3_moe")
    experts = [m for m in model.modules() if type(m).__name__.endswith("Experts")]
    experts[-1].register_parameter("gate_up_bias", torch.nn.Parameter(torch.zeros(EXPERTS, 48)))
    with pytest.raises(ValueError, match="biases are not supported"):
        convert(model, CacheConfig(slots=2))
    assert all(m.gate_up_proj.numel() > 0 for m in experts)  # nothing was converted or released


def test_a_predictor_for_another_model_is_refused(tmp_path: Path) -> None:
    predictor = _predictor(tmp_path / "p", layers=3)
    with pytest.raises(ValueError, match="covers 3 MoE layers, the model has 2"):
        convert(_model("olmoe"), CacheConfig(slots=2, policy="predicted", predictor=predictor))
