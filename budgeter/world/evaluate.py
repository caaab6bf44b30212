"""Evaluate solvers through vLLM: accuracy per turn as a function of the thinking budget.

Each solver is served by its own vLLM CPU process (the kit's vLLM server, DeepSeek-R1 reasoning parser),
and every test turn is asked once per budget with ``thinking_token_budget`` set, greedy decoding, and
the gold history (earlier turns' correct answers). A problem is solved when all its turns are: with all
earlier turns right the gold history *is* the model's own, so that equals solving it turn by turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
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


async def _ask(
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
        for attempt in range(RETRIES + 1):
            started = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=body)
                break
            except httpx.TransportError as exc:
                # A keep-alive connection the server closed just as it was reused; a dead server fails again.
                if attempt == RETRIES:
                    raise EvaluationError(
                        f"{spec.name}: no answer for {chain.id} turn {turn} after {RETRIES + 1} tries ({exc!r})"
                    ) from exc
                await asyncio.sleep(0.5 * (attempt + 1))
        latency = time.perf_counter() - started
    if response.status_code != 200:
        raise EvaluationError(
            f"{spec.name}: HTTP {response.status_code} for {chain.id} turn {turn}: {response.text[:300]}"
        )
    data = response.json()
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


async def ask_all(
    base_url: str,
    spec: SolverSpec,
    chains: Sequence[Chain],
    budgets: Sequence[int | None],
    concurrency: int = 32,
    progress: bool = True,
) -> list[TurnResult]:
    from tqdm import tqdm

    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(300.0), limits=limits) as client:
        jobs = [
            _ask(client, spec, chain, turn, budget, gate)
            for budget in budgets
            for chain in chains
            for turn in range(len(chain.steps))
        ]
        tasks = [asyncio.ensure_future(job) for job in jobs]
        results = []
        try:
            with tqdm(total=len(tasks), desc=f"evaluate {spec.name}", disable=not progress) as bar:
                for future in asyncio.as_completed(tasks):
                    results.append(await future)
                    bar.update(1)
        finally:  # on the first failure, cancel the rest rather than leave them unretrieved
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return sorted(results, key=lambda r: (r.budget is None, r.budget or 0, r.problem, r.turn))


def solver_launch(folder: Path, spec: SolverSpec) -> VllmLaunch:
    """How a solver folder is served: DeepSeek-R1's reasoning parser, float32 like training."""
    return VllmLaunch(
        name=f"solver {spec.name}",
        model=folder,
        served_name=spec.name,
        port=free_port(),
        python=vllm_python(),
        reasoning_parser="deepseek_r1",
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


def evaluate_served(
    process: VllmServer,
    spec: SolverSpec,
    chains: Sequence[Chain],
    budgets: Sequence[int | None],
    progress: bool = True,
) -> list[TurnResult]:
    """Wait for the solver's server, ask every turn at every budget, then stop the server."""
    process.wait_ready()  # raises LaunchError with the end of vLLM's log if it cannot start
    try:
        return asyncio.run(ask_all(process.base_url, spec, chains, budgets, progress=progress))
    except EvaluationError as exc:
        state = process.process.poll() if process.process is not None else None
        status = "still running" if state is None else f"exited with code {state}"
        raise EvaluationError(f"{exc}\nvLLM for {spec.name} {status}; end of its log:\n{process.log_tail()}") from exc
    finally:
        process.stop()
