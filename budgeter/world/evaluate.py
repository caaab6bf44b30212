"""Solvers served through vLLM, and one turn asked directly at a thinking budget.

Each solver is served by its own vLLM CPU process (the kit's vLLM server, DeepSeek-R1 reasoning parser).
:func:`ask` puts one turn to it as a chat request with ``thinking_token_budget``, greedy decoding and the
gold history (earlier turns' correct answers): what the outcome tables' shortcut is checked against
(:mod:`thrifty.budgeter.world.outcomes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from thrifty.budgeter.world.chains import Chain
from thrifty.budgeter.world.chat_format import messages_for
from thrifty.budgeter.world.solvers import SolverSpec
from thrifty.budgeter.world.verify import verify
from thrifty.server.kit.vllm import VllmLaunch, VllmServer, free_port, vllm_python

ANSWER_ALLOWANCE = 24  # tokens after </think>: a number and <|im_end|>
UNLIMITED_THINKING = 1600  # more than the longest thinking in GSM8K's chains (≈ 1,360 bytes with a redo)
RETRIES = 2


class EvaluationError(RuntimeError):
    """A solver's server stopped answering."""


@dataclass(frozen=True, slots=True)
class TurnResult:
    solver: str
    problem: str
    turn: int
    bucket: str
    task: str
    query: str
    budget: int | None  # None: thinking not limited
    correct: bool
    thinking_tokens: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_s: float
    reply: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def task_of(prompt: str) -> str:
    """The task label the router's per-task baseline sees: which operators the step uses."""
    names = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
    expression = prompt.split("=", 1)[1]
    return "+".join(sorted({names[c] for c in expression if c in names})) or "copy"


def request_body(
    model: str, messages: list[dict[str, str]], budget: int | None, unlimited: int = UNLIMITED_THINKING
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": 0.0,
        "max_tokens": (unlimited if budget is None else budget) + ANSWER_ALLOWANCE,
    }
    # "Not limited" is a budget of ``unlimited``: a solver that never closes its thinking is cut there.
    body["thinking_token_budget"] = unlimited if budget is None else budget
    return body


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    """POST to a solver's vLLM server: its JSON answer, or :class:`EvaluationError` saying what failed."""
    for attempt in range(RETRIES + 1):
        try:
            response = await client.post(path, json=body)
            break
        except httpx.TransportError as exc:
            # A keep-alive connection the server closed just as it was reused; a dead server fails again.
            if attempt == RETRIES:
                raise EvaluationError(f"{what}: no answer after {RETRIES + 1} tries ({exc!r})") from exc
            await asyncio.sleep(0.5 * (attempt + 1))
    if response.status_code != 200:
        raise EvaluationError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    data: dict[str, Any] = response.json()
    return data


async def ask(
    client: httpx.AsyncClient,
    spec: SolverSpec,
    chain: Chain,
    turn: int,
    budget: int | None,
    gate: asyncio.Semaphore,
    unlimited: int = UNLIMITED_THINKING,
) -> TurnResult:
    step = chain.steps[turn]
    body = request_body(spec.name, messages_for(chain, turn), budget, unlimited)
    async with gate:
        started = time.perf_counter()
        data = await post(client, "/v1/chat/completions", body, f"{spec.name}, {chain.id} turn {turn}")
        latency = time.perf_counter() - started
    message = data["choices"][0]["message"]
    reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
    usage = data["usage"]
    return TurnResult(
        solver=spec.name,
        problem=chain.id,
        turn=turn,
        bucket=step.bucket,
        task=task_of(step.prompt),
        query=step.prompt,
        budget=budget,
        correct=verify(message.get("content"), step.value),
        thinking_tokens=len(reasoning.encode()),  # byte-level tokenizer: one token per byte
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        cost=spec.cost(usage["prompt_tokens"], usage["completion_tokens"]),
        latency_s=round(latency, 4),
        reply=(f"<think>{reasoning}</think>" if reasoning else "") + (message.get("content") or ""),
    )


def solver_launch(folder: Path, spec: SolverSpec) -> VllmLaunch:
    """How a solver folder is served: DeepSeek-R1's reasoning parser, float32 like training."""
    return VllmLaunch(
        name=f"solver {spec.name}",
        model=folder,
        served_name=spec.name,
        port=free_port(),
        python=vllm_python(),
        reasoning_parser="thrifty_r1",
        dtype="float32",
        max_model_len=4096,
        startup_timeout_s=600,
        extra_args=("--enable-prefix-caching",),  # the outcome tables continue answers from shared prefixes
    )


@contextlib.contextmanager
def serving(folders: dict[str, tuple[Path, SolverSpec]], work_dir: Path) -> Iterator[dict[str, VllmServer]]:
    """Start a vLLM process per solver all at once (start-up dominates small evaluations); stop them all."""
    servers = {
        name: VllmServer(solver_launch(folder, spec), work_dir / "logs" / f"{name}.log")
        for name, (folder, spec) in folders.items()
    }
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()
