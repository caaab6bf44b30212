"""Outcome tables: what a solver does on every turn at every rung of the budget ladder, measured in vLLM.

A row of the table is one turn of one problem, asked with the gold history (greedy decoding, so with
every earlier turn right the gold history *is* the solver's own, and problem accuracy read off the
table is exact). It holds the solver's unlimited thinking and, for every budget ``b`` of the ladder
(and 0), whether the turn is right, the thinking tokens used and the answer tokens.

Measuring it is cheap because greedy thinking under a budget is a prefix of the unlimited thinking:
vLLM's ``thinking_token_budget`` lets the model think exactly as it would unlimited and forces
``</think>`` once the budget is spent — after ``b − 1`` written tokens, as the newline after
``<think>`` in the prompt counts too (:func:`~thrifty.budgeter.world.chat_format.thinking_allowed`).
So each turn needs one unlimited generation (``/v1/completions`` on the rendered chat prompt), and
each rung that cuts the thinking short only its answer continued from the prompt + the thinking it
leaves + ``</think>``, which vLLM's prefix cache mostly has already. A rung that leaves the whole
thinking is the unlimited outcome. :func:`verify_shortcut` checks
the shortcut against direct chat requests with ``thinking_token_budget`` on a sample and reports
the agreement; the build records it.

Tokens: the world's tokenizer is byte-level, so ``b`` thinking tokens are ``b`` characters.
``answer_tokens`` counts everything generated after the thinking (``</think>``, the answer,
``<|im_end|>``), so a turn's tokens are ``thinking + answer``, the usage's completion tokens.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from thrifty.budgeter.world.chains import Chain
from thrifty.budgeter.world.chat_format import THINK_END, messages_for, render_prompt, thinking_allowed
from thrifty.budgeter.world.evaluate import (
    ANSWER_ALLOWANCE,
    UNLIMITED_THINKING,
    TurnResult,
    ask,
    post,
    task_of,
)
from thrifty.budgeter.world.solvers import SolverSpec
from thrifty.budgeter.world.thinking import ROUND
from thrifty.budgeter.world.verify import verify
from thrifty.server.kit.artifacts import write_text_atomic

UNLIMITED = "none"  # the key of thinking not limited
FIRST_WORKING = "first"  # the key of the budget that just covers the solver's own first working


def level_key(budget: int | None) -> str:
    return UNLIMITED if budget is None else str(budget)


@dataclass(frozen=True, slots=True)
class Outcome:
    correct: bool
    thinking_tokens: int
    answer_tokens: int

    @property
    def tokens(self) -> int:
        return self.thinking_tokens + self.answer_tokens


@dataclass(frozen=True, slots=True)
class TurnRow:
    """One turn of the table: its outcome at every rung, 0 and unlimited."""

    problem: str
    turn: int
    bucket: str
    query: str  # the sub-question, "x2 = 48+x1"
    prompt_tokens: int
    thinking: str  # the unlimited thinking, as the solver wrote it
    answer: str  # what it answered after it
    first_working: int | None  # thinking tokens of its own first working (before its first check), if any
    levels: dict[str, Outcome] = field(default_factory=dict)  # 0, the ladder, "none", "first" (if checked)

    def outcome(self, budget: int | None) -> Outcome:
        """The outcome at ``budget`` (None: unlimited); a budget that leaves all the thinking is unlimited."""
        if budget is None or thinking_allowed(budget) >= self.levels[UNLIMITED].thinking_tokens:
            return self.levels[UNLIMITED]
        key = level_key(budget)
        if key not in self.levels:
            raise KeyError(f"budget {budget} is not on this table's ladder")
        return self.levels[key]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["levels"] = {k: [int(v.correct), v.thinking_tokens, v.answer_tokens] for k, v in self.levels.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TurnRow:
        levels = {k: Outcome(bool(c), t, a) for k, (c, t, a) in data["levels"].items()}
        return cls(**(data | {"levels": levels}))


def first_working_end(thinking: str) -> int | None:
    """Where the solver's own first working ends: just before its first check round (None: it never checks)."""
    marker = "\n" + ROUND.format(1)
    position = thinking.find(marker)
    return None if position < 0 else position


@dataclass(frozen=True, slots=True)
class OutcomeTable:
    """All turns of some problems for one solver; rows in problem order, turns in order."""

    solver: str
    split: str
    ladder: tuple[int, ...]
    rows: tuple[TurnRow, ...]

    def problems(self) -> dict[str, list[TurnRow]]:
        by_problem: dict[str, list[TurnRow]] = {}
        for row in self.rows:
            by_problem.setdefault(row.problem, []).append(row)
        return by_problem

    def write(self, path: Path) -> None:
        head = {"solver": self.solver, "split": self.split, "ladder": list(self.ladder)}
        lines = [json.dumps(head)] + [json.dumps(row.to_json()) for row in self.rows]
        write_text_atomic(path, "\n".join(lines) + "\n")

    @classmethod
    def read(cls, path: Path) -> OutcomeTable:
        lines = [line for line in path.read_text().splitlines() if line]
        if not lines:
            raise ValueError(f"{path} is empty: not an outcome table")
        head = json.loads(lines[0])
        rows = tuple(TurnRow.from_json(json.loads(line)) for line in lines[1:])
        return cls(head["solver"], head["split"], tuple(head["ladder"]), rows)

    def turn_results(self, spec: SolverSpec) -> list[TurnResult]:
        """The table as the evaluation's per-(turn, budget) records, for summaries and the router's log."""
        results = []
        for row in self.rows:
            for budget in (0, *self.ladder, None):
                outcome = row.outcome(budget)
                results.append(
                    TurnResult(
                        solver=self.solver,
                        problem=row.problem,
                        turn=row.turn,
                        bucket=row.bucket,
                        task=task_of(row.query),
                        query=row.query,
                        budget=budget,
                        correct=outcome.correct,
                        thinking_tokens=outcome.thinking_tokens,
                        prompt_tokens=row.prompt_tokens,
                        completion_tokens=outcome.tokens,
                        cost=spec.cost(row.prompt_tokens, outcome.tokens),
                        latency_s=0.0,
                        reply=row.answer if budget is None else "",
                    )
                )
        return results


# --- measuring ---------------------------------------------------------------------------------------


async def _complete(client: httpx.AsyncClient, name: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
    return await post(client, "/v1/completions", body, name)


async def measure_turn(
    client: httpx.AsyncClient,
    spec: SolverSpec,
    chain: Chain,
    turn: int,
    ladder: Sequence[int],
    gate: asyncio.Semaphore,
    unlimited: int = UNLIMITED_THINKING,
) -> TurnRow:
    step = chain.steps[turn]
    prompt = render_prompt(messages_for(chain, turn))
    async with gate:
        data = await _complete(client, spec.name, prompt, unlimited + ANSWER_ALLOWANCE)
    text = data["choices"][0]["text"]
    completion_tokens = int(data["usage"]["completion_tokens"])
    prompt_tokens = int(data["usage"]["prompt_tokens"])
    thinking, closed, answer = text.partition(THINK_END)
    length = len(thinking.encode())

    async def rung(budget: int, cut: int) -> tuple[int, Outcome, str]:
        """What a direct run with thinking budget ``budget`` does, its thinking cut after ``cut`` tokens."""
        # A direct run's max_tokens is budget + ANSWER_ALLOWANCE; the thinking and the forced </think> are of them.
        allowance = budget + ANSWER_ALLOWANCE - cut - 1
        async with gate:
            data = await _complete(client, spec.name, prompt + thinking[:cut] + THINK_END, allowance)
        answered = data["choices"][0]["text"]
        return (
            budget,
            Outcome(verify(answered, step.value), cut, 1 + int(data["usage"]["completion_tokens"])),
            answered,
        )

    if closed and length <= thinking_allowed(unlimited):
        levels = {UNLIMITED: Outcome(verify(answer, step.value), length, completion_tokens - length)}
    else:  # it thought past the cap: "unlimited" is a budget of the cap there, as a live request's is
        length = thinking_allowed(unlimited)
        _, capped, answer = await rung(unlimited, length)
        thinking = thinking[:length]
        levels = {UNLIMITED: capped}
    first = first_working_end(thinking)
    cuts = {b: thinking_allowed(b) for b in sorted({0, *ladder})}
    for budget, outcome, _ in await asyncio.gather(*(rung(b, cut) for b, cut in cuts.items() if cut < length)):
        levels[level_key(budget)] = outcome
    if first is not None:  # the budget that just covers its own first working, for the results page
        levels[FIRST_WORKING] = (await rung(first + 1, first))[1]
    return TurnRow(
        problem=chain.id,
        turn=turn,
        bucket=step.bucket,
        query=step.prompt,
        prompt_tokens=prompt_tokens,
        thinking=thinking,
        answer=answer,
        first_working=first,
        levels=levels,
    )


async def measure_table(
    base_url: str,
    spec: SolverSpec,
    chains: Sequence[Chain],
    ladder: Sequence[int],
    split: str,
    unlimited: int = UNLIMITED_THINKING,
    concurrency: int = 32,
    progress: bool = True,
) -> OutcomeTable:
    from tqdm import tqdm

    # ``concurrency`` turns at a time, each with all its requests: a turn is done soon after it starts
    # (so the progress bar moves), and vLLM still batches many rungs' short answers together.
    turns = asyncio.Semaphore(concurrency)
    requests = asyncio.Semaphore(concurrency * (len(set(ladder)) + 2))
    limits = httpx.Limits(max_connections=concurrency * 4, max_keepalive_connections=concurrency * 4)

    async def one(client: httpx.AsyncClient, chain: Chain, turn: int) -> TurnRow:
        async with turns:
            return await measure_turn(client, spec, chain, turn, ladder, requests, unlimited)

    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        tasks = [
            asyncio.ensure_future(one(client, chain, turn)) for chain in chains for turn in range(len(chain.steps))
        ]
        rows = []
        try:
            with tqdm(total=len(tasks), desc=f"table {spec.name} {split}", disable=not progress) as bar:
                for future in asyncio.as_completed(tasks):
                    rows.append(await future)
                    bar.update(1)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    order = {chain.id: i for i, chain in enumerate(chains)}
    rows.sort(key=lambda r: (order[r.problem], r.turn))
    return OutcomeTable(spec.name, split, tuple(sorted(set(ladder))), tuple(rows))


# --- the shortcut, checked against direct runs -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShortcutCheck:
    requests: int
    same_correct: int
    same_tokens: int
    same_answer: int
    mismatches: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "agreement_correct": self.same_correct / self.requests if self.requests else None,
            "agreement_tokens": self.same_tokens / self.requests if self.requests else None,
            "agreement_answer": self.same_answer / self.requests if self.requests else None,
            "mismatches": self.mismatches[:20],
        }


def _answer_of(reply: str) -> str:
    return reply.rpartition(THINK_END)[2].strip() if THINK_END in reply else reply.strip()


async def verify_shortcut(
    base_url: str,
    spec: SolverSpec,
    table: OutcomeTable,
    chains: Sequence[Chain],
    turns: int,
    seed: int = 0,
    unlimited: int = UNLIMITED_THINKING,
    concurrency: int = 32,
) -> ShortcutCheck:
    """Ask ``turns`` sampled turns directly (chat, ``thinking_token_budget``) at every rung; compare."""
    by_id = {chain.id: chain for chain in chains}
    sample = random.Random(seed).sample(list(table.rows), min(turns, len(table.rows)))
    budgets: list[int | None] = [0, *table.ladder, None]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(600.0)) as client:
        pairs = [(row, budget) for row in sample for budget in budgets]
        direct = await asyncio.gather(
            *(ask(client, spec, by_id[row.problem], row.turn, budget, gate, unlimited) for row, budget in pairs)
        )
    same_correct = same_tokens = same_answer = 0
    mismatches = []
    for (row, budget), result in zip(pairs, direct, strict=True):
        predicted = row.outcome(budget)
        predicted_answer = row.answer.strip() if predicted is row.levels[UNLIMITED] else None
        correct_ok = predicted.correct == result.correct
        tokens_ok = predicted.tokens == result.completion_tokens
        answer_ok = predicted_answer is None or predicted_answer == _answer_of(result.reply)
        same_correct += correct_ok
        same_tokens += tokens_ok
        same_answer += answer_ok
        if not (correct_ok and tokens_ok and answer_ok):
            mismatches.append(
                {
                    "problem": row.problem,
                    "turn": row.turn,
                    "budget": budget,
                    "table": [predicted.correct, predicted.tokens],
                    "direct": [result.correct, result.completion_tokens],
                }
            )
    return ShortcutCheck(len(pairs), same_correct, same_tokens, same_answer, mismatches)
