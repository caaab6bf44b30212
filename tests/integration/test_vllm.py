"""The gateway over a real vLLM CPU backend serving SmolLM2-135M-Instruct, driven by the openai SDK.

The backend is started by thrifty's own launcher with its reasoning parser (``thrifty_r1``) and the bundled
model's thinking template (the assistant turn opens with ``<think>``), so thinking budgets act on it.
The gateway runs as ``thrifty serve`` in its own process. The last test kills the backend.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import free_port, serve_process, stop_process, wait_ready
from thrifty.server.backends.launcher import VllmProcess
from thrifty.server.bundled_model import is_prepared, model_dir
from thrifty.server.config import parse_config

pytestmark = pytest.mark.integration

DATA_DIR = Path(os.environ.get("THRIFTY_TEST_DATA_DIR", "data")).absolute()
MODEL = "smollm2-thinking"


@pytest.fixture(scope="module")
def vllm() -> Iterator[VllmProcess]:
    if not is_prepared(model_dir(DATA_DIR)):
        pytest.fail(f"the bundled model is not prepared in {DATA_DIR}: run 'make model' (make test does)")
    config = parse_config(
        {
            "backends": [
                {
                    "name": "vllm-cpu",
                    "model": MODEL,
                    "reasoning": True,
                    "launch": {
                        "model_path": "bundled",
                        "port": free_port(),
                        "reasoning_parser": "thrifty_r1",
                        "chat_template": "thinking",
                        "max_model_len": 2048,
                        "startup_timeout_s": 400,
                    },
                }
            ]
        },
        environ={},
    )
    process = VllmProcess(config.backends[0], DATA_DIR)
    process.start()
    try:
        process.wait_ready()  # raises with the end of vLLM's log if it cannot start
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway_url(vllm: VllmProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("gateway")
    config = folder / "config.yaml"
    config.write_text(
        f"""
backends:
  - name: vllm-cpu
    model: {MODEL}
    url: {vllm.backend.base_url}
    reasoning: true
    context_length: 2048
budgeter: {{static: {{budget: 4}}}}
limits: {{answer_tokens: 24}}
health: {{interval_s: 0.5, timeout_s: 1}}
timeouts: {{first_token: 60, total: 120}}
"""
    )
    port = free_port()
    log = folder / "serve.log"
    process = serve_process(["--config", str(config), "--port", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer() -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir(DATA_DIR))


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL, "auto"]


def test_chat(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        # min_tokens keeps the tiny model from stopping early, so the count shows max_tokens itself.
        extra_body={"min_tokens": 24, "seed": 1, "thinking_token_budget": 8},
    )
    completion = raw.parse()
    assert raw.headers["x-thrifty-model"] == MODEL and raw.headers["x-thrifty-backend"] == "vllm-cpu"
    assert raw.headers["x-thrifty-thinking-budget"] == "8"
    assert completion.model == MODEL
    assert completion.usage is not None and completion.usage.completion_tokens == 24  # 8 thinking + 16 answer
    # the thinking template opens <think> in the prompt: thrifty_r1 still counts what the model thought.
    # vLLM counts a budget from <think>, so the template's newline after it is the first of the 8
    details = completion.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == 8 - 1
    assert completion.choices[0].message.content


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"min_tokens": 16},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning", None) or "" for d in deltas)
    answer = "".join(d.content or "" for d in deltas)
    assert reasoning, "reasoning deltas must reach the client unchanged"
    assert chunks[-1].usage.completion_tokens == 4 + 12  # the static budget plus the client's allowance
    details = chunks[-1].usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == 4 - 1  # the newline after <think> is the 4th
    assert answer or chunks[-1].usage.completion_tokens


def _reasoning_tokens(client: openai.OpenAI, tokenizer: object, **extra: object) -> tuple[int, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Explain why the sky is blue."}],
        max_tokens=40,
        extra_body={"min_tokens": 40, **extra},
    )
    message = raw.parse().choices[0].message
    reasoning = getattr(message, "reasoning", None) or ""
    return len(tokenizer.encode(reasoning, add_special_tokens=False)), raw.headers["x-thrifty-thinking-budget"]  # type: ignore[attr-defined]


def test_thinking_budget_reaches_vllm(client: openai.OpenAI, tokenizer: object) -> None:
    short, header = _reasoning_tokens(client, tokenizer)  # the budgeter's static budget: 4
    assert header == "4"
    assert short <= 4 + 1
    long, header = _reasoning_tokens(client, tokenizer, thinking_token_budget=32)
    assert header == "32"
    assert long > short + 10


def test_malformed_requests(client: openai.OpenAI, gateway_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert MODEL in not_found.value.body["message"]  # type: ignore[index]  # it names what there is
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[])
    assert bad.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=-1)
    assert bad.value.body["param"] == "max_tokens"  # type: ignore[index]
    response = httpx.post(f"{gateway_url}/v1/chat/completions", content=b'{"model": ', timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    # vLLM's own refusal (a prompt longer than the context) reaches the client as vLLM's 400.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 3000}])


def test_a_large_first_event_from_vllm_is_relayed(gateway_url: str) -> None:
    # A streamed completion that echoes a long prompt with its logprobs: vLLM puts all of it in the first
    # event, far past aiohttp's 64 KiB line limit that used to turn it into a 500.
    prompt = " ".join(f"item{i}" for i in range(300))  # about 1,000 tokens
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": True, "echo": True, "logprobs": 5}
    with httpx.stream("POST", f"{gateway_url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        raw = response.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]", events[-1][:300]
    assert len(events[0]) > 65536, len(events[0])
    first = json.loads(events[0].removeprefix(b"data: "))
    assert first["choices"][0]["text"].startswith(prompt[:200])


def test_metrics_saw_the_traffic(gateway_url: str) -> None:
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    assert f'thrifty_requests_total{{backend="vllm-cpu",model="{MODEL}",status="200"}}' in text
    assert f'thrifty_tokens_total{{kind="completion",model="{MODEL}"}}' in text
    reasoning = [
        line
        for line in text.splitlines()
        if line.startswith(f'thrifty_tokens_total{{kind="reasoning",model="{MODEL}"}}')
    ]
    assert reasoning and float(reasoning[0].split()[-1]) > 0, "the backend's reasoning tokens are counted"
    assert 'thrifty_thinking_budget_tokens_count{model="smollm2-thinking",policy="static"}' in text


def test_backend_killed_mid_stream(client: openai.OpenAI, vllm: VllmProcess, gateway_url: str) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=1500,
        stream=True,
        extra_body={"min_tokens": 1500},
    )
    received: list[object] = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            for chunk in stream:
                received.append(chunk)
        except BaseException as exc:  # the SDK raises on the SSE error event
            failure.append(exc)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while len(received) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(received) >= 3, "the stream never started"
    assert vllm.process is not None
    os.killpg(vllm.process.pid, signal.SIGKILL)
    reader.join(timeout=30)
    assert not reader.is_alive(), "the client hung after the backend died"
    assert failure and isinstance(failure[0], openai.APIError), failure
    assert "closed the connection" in str(failure[0]) or "ended the stream" in str(failure[0])

    # With its only backend gone the gateway says so, quickly, instead of hanging.
    deadline = time.monotonic() + 10
    while httpx.get(f"{gateway_url}/ready", timeout=5).status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{gateway_url}/ready", timeout=5).status_code == 503
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert unavailable.value.status_code == 503
