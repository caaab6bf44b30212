"""``thrifty train melinoe`` end to end on a tiny Qwen3-MoE model: the artifact, resuming, refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM
from typer.testing import CliRunner

from thrifty.budgeter.world.chat_format import build_tokenizer
from thrifty.moe_runtime import CacheConfig
from thrifty.moe_runtime.hf import convert
from thrifty.moe_runtime.melinoe.data import JsonlData
from thrifty.moe_runtime.melinoe.job import KIND, MelinoeJobOptions, StopRequested, model_digest, run_job
from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor
from thrifty.moe_runtime.melinoe.tuning import TuningSettings
from thrifty.server.cli import app
from thrifty.server.kit.artifacts import Manifest, load_verified
from thrifty.server.kit.jobs import JobError

EXPERTS, TOP_K, SLOTS = 8, 2, 2


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerFast) -> Path:
    folder = tmp_path_factory.mktemp("base")
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, num_experts=EXPERTS, num_experts_per_tok=TOP_K, moe_intermediate_size=16,
        max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        router_aux_loss_coef=0.02,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config)
    for param in model.parameters():  # routers that prefer some experts, so routing differs by token
        param.data.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "examples.jsonl"
    rows = []
    for i in range(24):
        question, reply = f"x1 = {i}*{i + 3}", f"x1 is {i * (i + 3)}"
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]})
        rows.append({"prompt": f"x{i} = {i}+{i}", "completion": f" so x{i} is {2 * i}"})
        rows.append({"text": f"{i} {i + 1} {i + 2} {i + 3}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _options(base: Path, data: Path, out: Path, **tuning: object) -> MelinoeJobOptions:
    settings = {"slots": SLOTS, "steps": 12, "batch_size": 4, "learning_rate": 2e-2, "warmup_steps": 2,
                "lora_rank": 4, "lora_alpha": 8, "cache_weight": 2.0} | tuning  # fmt: skip
    return MelinoeJobOptions(
        model=base, data=data, out=out, tuning=TuningSettings(**settings),  # type: ignore[arg-type]
        fit_prompts=16, validation_prompts=6, max_new_tokens=12, checkpoint_every_s=3600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished(base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("job")
    return out, run_job(_options(base, data, out), progress=False)


def test_the_artifact_holds_a_plain_model_its_predictor_and_what_it_measured(
    finished: tuple[Path, dict[str, object]], base: Path, data: Path
) -> None:
    out, _ = finished
    artifact = out / "artifact"
    manifest = load_verified(artifact, Manifest, kind=KIND, version=1)
    raw = json.loads((artifact / "manifest.json").read_text())
    assert manifest.inputs["base_model_sha256"] == model_digest(base)
    assert manifest.inputs["data_sha256"] == JsonlData(data, build_tokenizer()).digest
    assert (raw["slots"], raw["gamma"], raw["cache_weight"], raw["rank_weight"]) == (SLOTS, 0.9, 2.0, 0.1)
    assert raw["load_balance"] is False and raw["lora"] == {"rank": 4, "alpha": 8}
    for who in ("base", "tuned"):
        metrics = manifest.metrics[who]
        assert set(metrics["hit_rate"]) == {"lru", "lfru", "decay", "pinned", "predicted"}
        assert all(0.0 <= h <= 1.0 for h in metrics["hit_rate"].values())
        assert 0.0 <= metrics["predictor"]["precision"] <= 1.0 and 0.0 <= metrics["predictor"]["recall"] <= 1.0
        assert metrics["sequences"] == 6 and TOP_K <= metrics["distinct_experts"] <= EXPERTS
        # the pin share was chosen on the validation routing: the best of the shares it replayed
        by_share = {float(k): v for k, v in metrics["predictor"]["hit_rate_by_pin_share"].items()}
        assert len(by_share) >= 2 and max(by_share.values()) == by_share[metrics["predictor"]["pin_share"]]
        assert metrics["hit_rate"]["predicted"] == by_share[metrics["predictor"]["pin_share"]]
    assert set(manifest.metrics["validation_nll"]) == {"base", "tuned"}

    # model/ is an ordinary transformers folder of the base's architecture, nothing of LoRA left
    tuned = AutoModelForCausalLM.from_pretrained(artifact / "model")
    assert type(tuned).__name__ == "Qwen3MoeForCausalLM" and tuned.config.output_router_logits is False
    weights = load_file(str(artifact / "model" / "model.safetensors"))
    assert not any("lora" in name for name in weights)
    original = load_file(str(base / "model.safetensors"))
    assert set(weights) == set(original)  # saved in the base checkpoint's own layout (per-expert projections)
    changed = {name for name in weights if not torch.equal(weights[name], original[name])}
    assert {"model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"} <= changed
    assert any(".mlp.experts." in name for name in changed)  # the LoRA updates, folded in
    assert all(".mlp.gate." in name or ".mlp.experts." in name for name in changed)  # nothing else moved

    # the predictor is the artifact's own, and the transformers conversion serves with it
    predictor = ExpertPredictor.load(artifact)
    assert (predictor.layers, predictor.experts, predictor.layer_ids) == (2, EXPERTS, (0, 1))
    assert predictor.pin_share == manifest.metrics["tuned"]["predictor"]["pin_share"]
    prompt = torch.tensor([[5, 9, 14, 7, 3]])
    with torch.no_grad():
        expected = tuned.generate(prompt, max_new_tokens=6, do_sample=False)
    model = AutoModelForCausalLM.from_pretrained(artifact / "model")
    cached = convert(model, CacheConfig(slots=SLOTS, policy="predicted", predictor=str(artifact)))
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False), expected)
    assert cached.stats().prefetched > 0  # the prompt pinned the predictor's choice


def test_the_fine_tune_concentrates_routing_and_the_cli_reports_it(finished: tuple[Path, dict[str, object]]) -> None:
    _, records = finished
    found = records["predictor"]
    assert isinstance(found, dict)
    assert found["tuned"]["distinct_experts"] < found["base"]["distinct_experts"]


def test_an_interrupted_fine_tune_resumes_to_the_same_model(
    base: Path, data: Path, tmp_path: Path, finished: tuple[Path, dict[str, object]]
) -> None:
    straight, _ = finished
    options = replace(_options(base, data, tmp_path / "job"), stop_at=5)
    with pytest.raises(StopRequested):
        run_job(options, progress=False)
    assert (tmp_path / "job" / ".checkpoints").is_dir()
    run_job(replace(options, stop_at=None), progress=False)
    resumed = load_file(str(tmp_path / "job" / "artifact" / "model" / "model.safetensors"))
    reference = load_file(str(straight / "artifact" / "model" / "model.safetensors"))
    assert all(torch.allclose(resumed[name], reference[name], atol=1e-6) for name in reference)
    with pytest.raises(JobError, match="other settings"):
        run_job(_options(base, data, tmp_path / "job", cache_weight=1.0), progress=False)


def test_bad_requests_fail_with_their_reason(base: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="more than the model's 8 experts"):
        run_job(_options(base, data, tmp_path / "a", slots=9), progress=False)
    with pytest.raises(JobError, match="no Hugging Face model folder"):
        run_job(_options(tmp_path / "nowhere", data, tmp_path / "b"), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"messages": [{"role": "user", "content": "no reply"}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: messages must end with the assistant's reply"):
        run_job(_options(base, bad, tmp_path / "c"), progress=False)
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        run_job(_options(base, bad, tmp_path / "d"), progress=False)
    bad.write_text('{"text": "only one"}\n')
    with pytest.raises(ValueError, match="at least two"):
        run_job(_options(base, bad, tmp_path / "e"), progress=False)
    assert not (tmp_path / "c" / "artifact").exists()
    with pytest.raises(JobError, match="no data file at"):
        run_job(_options(base, tmp_path / "missing.jsonl", tmp_path / "f"), progress=False)


def test_a_job_folder_refuses_the_same_path_with_other_data(base: Path, data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data.jsonl"
    copy.write_text(data.read_text())
    options = replace(_options(base, copy, tmp_path / "job"), stop_at=2)
    with pytest.raises(StopRequested):
        run_job(options, progress=False)
    copy.write_text(data.read_text().replace("x1 is", "x1 equals"))
    with pytest.raises(JobError, match="other settings"):
        run_job(options, progress=False)


def test_the_command_line_runs_the_job_and_names_its_mistakes(base: Path, data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["train", "melinoe", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "job")]
    done = runner.invoke(
        app,
        [*common, "--slots", "2", "--steps", "3", "--batch-size", "2", "--lr", "1e-2", "--lora-rank", "2",
         "--fit-prompts", "4", "--validation-prompts", "2", "--max-new-tokens", "4"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "validation NLL per token: base" in done.output and "MELINOE artifact:" in done.output
    assert "tuned:" in done.output and "predicted" in done.output
    refused = runner.invoke(app, [*common, "--slots", "2", "--gamma", "1.5"])
    assert refused.exit_code != 0 and "gamma must be in (0, 1)" in refused.output
