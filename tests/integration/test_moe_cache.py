"""vLLM serves MoE models through the expert cache (the thrifty plugin), as the gateway's launcher starts it.

The reasoning world's fine-grained solver (moe-f: 64 experts, top-8) is fine-tuned by ``thrifty train
melinoe`` (a few steps: this is about serving, not about how good the tuning is), then its artifact's
model is served twice: by plain vLLM, and through the expert cache at C = E/4 with the ``predicted``
policy reading the artifact's predictor. The greedy answers must be the same, and the cache's counters
must show the predictor's pins being fetched at each prompt.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import free_port
from tests.integration.conftest import ROOT, THRIFTY
from thrifty.server.backends.launcher import VllmProcess
from thrifty.server.config import BackendConfig

pytestmark = pytest.mark.integration

SLOTS = 16  # of moe-f's 64 experts per layer: E/4
JOB_TIMEOUT_S = 1800  # a safety net against a hang, not a speed requirement


@pytest.fixture(scope="module")
def melinoe(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("melinoe") / "job"
    command = [
        *THRIFTY, "train", "melinoe", "--model", str(world / "solvers" / "moe-f"), "--data", str(world),
        "--slots", str(SLOTS), "--out", str(out), "--steps", "6", "--batch-size", "4", "--lr", "1e-3",
        "--lora-rank", "4", "--fit-prompts", "12", "--validation-prompts", "4", "--max-new-tokens", "24",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, cwd=ROOT, check=False)
    assert done.returncode == 0, f"thrifty train melinoe failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "MELINOE artifact:" in done.stdout
    return out / "artifact"


def _launch(model: Path, tmp: Path, name: str, expert_cache: dict[str, object] | None) -> VllmProcess:
    launch: dict[str, object] = {
        "model_path": str(model),
        "port": free_port(),
        "dtype": "float32",
        "max_model_len": 1024,
        "reasoning_parser": "thrifty_r1",
        "startup_timeout_s": 600,
    }
    if expert_cache is not None:
        launch["expert_cache"] = expert_cache
    backend = BackendConfig.model_validate({"name": name, "model": "moe-f", "launch": launch})
    process = VllmProcess(backend, tmp)
    process.start()
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module")
def servers(melinoe: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("moe-cache")
    plain = _launch(melinoe / "model", tmp, "plain", None)
    try:
        predicted = {"slots": SLOTS, "policy": "predicted", "predictor": str(melinoe), "pinned_base": "lru"}
        cached = _launch(melinoe / "model", tmp, "cached", predicted)
        try:
            yield plain.backend.base_url, cached.backend.base_url
        finally:
            cached.stop()
    finally:
        plain.stop()


def _prompts(world: Path, count: int) -> list[str]:
    chains = [json.loads(line) for line in (world / "data" / "test.jsonl").read_text().splitlines()[:count]]
    return [chain["steps"][0]["prompt"] for chain in chains]


def _answer(url: str, prompt: str) -> tuple[str, str]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="moe-f", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=64
    )
    message = reply.choices[0].message
    return getattr(message, "reasoning", None) or "", message.content or ""


def _counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for name, value in re.findall(r"^(thrifty_moe_cache_\w+_total)\{[^}]*\} (\S+)$", text, re.MULTILINE):
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def test_the_tuned_model_answers_through_the_predicted_cache_exactly_as_plain_vllm(
    servers: tuple[str, str], world: Path
) -> None:
    plain, cached = servers
    before = _counters(cached)
    prompts = _prompts(world, 8)
    for prompt in prompts:
        expected = _answer(plain, prompt)
        assert any(expected), prompt
        assert _answer(cached, prompt) == expected, prompt
    after = _counters(cached)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("thrifty_moe_cache_passes_total") >= 2 * len(prompts)  # two MoE layers, at least a prefill each
    assert grew("thrifty_moe_cache_hits_total") > 0 and grew("thrifty_moe_cache_misses_total") > 0
    # each prompt pins the predictor's 16 experts per layer and fetches those not yet resident
    assert grew("thrifty_moe_cache_prefetched_total") > 0
    assert grew("thrifty_moe_cache_transfer_bytes_total") > 0
    assert not _counters(plain)  # the plugin is installed there too, and does nothing unless asked


def test_vllms_loader_leaves_the_experts_in_host_memory() -> None:
    """vLLM 0.32 moves a layer's weights to the device around ``process_weights_after_loading`` unless its
    quant method says ``requires_device_loading = False``; ask the installed vLLM what it would do."""
    import subprocess

    from thrifty.server.kit.vllm import vllm_python

    script = (
        "import inspect\n"
        "from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase\n"
        "from vllm.model_executor.model_loader import utils\n"
        "from thrifty.moe_runtime.vllm_layer import CachedExpertsMethod\n"
        "assert 'requires_device_loading' in inspect.getsource(utils.process_weights_after_loading)\n"
        "assert issubclass(CachedExpertsMethod, QuantizeMethodBase)\n"
        "assert CachedExpertsMethod.requires_device_loading is False\n"
    )
    done = subprocess.run([vllm_python(), "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_prompt_passes_are_told_from_decode_batches_by_vllms_attention_metadata() -> None:
    """The predicted policy re-pins only at passes that carry a prompt: a batch of eight running requests'
    decode tokens (eight tokens, one query each) is not one; a prefill (or a chunk of one) is."""
    import subprocess

    from thrifty.server.kit.vllm import vllm_python

    script = (
        "from types import SimpleNamespace as S\n"
        "import vllm.forward_context as fc\n"
        "from thrifty.moe_runtime.vllm_layer import _holds_prompt\n"
        "assert fc._forward_context is None and _holds_prompt(5) and not _holds_prompt(1)\n"
        "fc._forward_context = S(attn_metadata={'model.layers.0.self_attn.attn': S(max_query_len=1)})\n"
        "assert not _holds_prompt(8)\n"
        "fc._forward_context = S(attn_metadata={'model.layers.0.self_attn.attn': S(max_query_len=37)})\n"
        "assert _holds_prompt(44)\n"
        "fc._forward_context = S(attn_metadata=[{'a': S(max_query_len=1)}, {'a': S(max_query_len=1)}])\n"
        "assert not _holds_prompt(4)\n"
        "fc._forward_context = S(attn_metadata=None)\n"
        "assert _holds_prompt(3)\n"
    )
    done = subprocess.run([vllm_python(), "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
