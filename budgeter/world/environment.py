"""The budget environment: a multi-turn problem, one thinking budget per turn, what that budget bought.

The trainer of a budget policy, its baselines and its evaluation share one small API::

    env = TableEnv(table, chains)            # or LiveEnv(gateway_url, "dense-s", chains, ladder)
    observation = env.reset("test-17")       # the problem, its sub-questions, the conversation so far
    while observation is not None:
        result = env.step(policy(observation))   # a rung of env.ladder, or None: thinking not limited
        observation = result.observation     # the next turn (None when the problem is over)
    result.problem_correct                   # every turn right

:class:`TableEnv` answers from an outcome table (:mod:`thrifty.budgeter.world.outcomes`): instant, exact
for greedy decoding with the gold history. :class:`LiveEnv` asks a real solver through the gateway (or
any OpenAI-compatible server) with ``thinking_token_budget``, keeping the solver's own answers as the
history, so a table's predictions can be checked against reality (:func:`compare_live`).

A turn's tokens are its thinking tokens plus its answer tokens (``</think>``, the answer,
``<|im_end|>``); ``spent`` is the problem's tokens so far, which a per-problem budget is charged with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from thrifty.budgeter.world.chains import Chain
from thrifty.budgeter.world.chat_format import answer_text, messages_for
from thrifty.budgeter.world.evaluate import ANSWER_ALLOWANCE, UNLIMITED_THINKING
from thrifty.budgeter.world.outcomes import Outcome, OutcomeTable, TurnRow
from thrifty.budgeter.world.verify import verify


class EnvError(ValueError):
    """A call the environment cannot take (no such problem, a budget off the ladder, step before reset)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What a budget policy sees before a turn."""

    problem: str
    question: str  # the word problem
    turn: int  # 0-based
    turns: int
    sub_question: str  # this turn's user message, "x2 = 48+x1"
    sub_questions: tuple[str, ...]  # every turn's, past and future (the All-SubQ view)
    messages: tuple[dict[str, str], ...]  # the conversation so far, ending with this turn's sub-question
    spent: int  # tokens the problem has used so far
    spent_thinking: int
    budgets: tuple[int | None, ...] = ()  # the budgets earlier turns had
    thinking: tuple[int, ...] = ()  # the thinking tokens earlier turns used


@dataclass(frozen=True, slots=True)
class StepResult:
    correct: bool
    thinking_tokens: int
    answer_tokens: int
    answer: str
    done: bool
    problem_correct: bool | None  # when done: were all turns right
    observation: Observation | None  # the next turn, None when done

    @property
    def tokens(self) -> int:
        return self.thinking_tokens + self.answer_tokens


class BudgetEnv(Protocol):
    ladder: tuple[int, ...]

    def reset(self, problem: str) -> Observation: ...

    def step(self, budget: int | None) -> StepResult: ...


class _Episode:
    """The bookkeeping both environments share: which turn, what was said, what was spent."""

    def __init__(self, ladder: Sequence[int], chains: Sequence[Chain] | dict[str, Chain]) -> None:
        self.ladder = tuple(sorted(set(ladder)))
        # A dict is shared as it is (forks of a table environment), a sequence indexed by id.
        self.chains = chains if isinstance(chains, dict) else {chain.id: chain for chain in chains}
        self.chain: Chain | None = None
        self.turn = 0
        self.answers: list[str] = []
        self.budgets: list[int | None] = []
        self.thinking: list[int] = []
        self.spent = self.spent_thinking = 0
        self.all_correct = True

    def start(self, problem: str) -> Observation:
        if problem not in self.chains:
            raise EnvError(f"no problem {problem!r} in this environment")
        self.chain = self.chains[problem]
        self.turn, self.answers, self.spent, self.spent_thinking, self.all_correct = 0, [], 0, 0, True
        self.budgets, self.thinking = [], []
        return self.observe()

    def check_budget(self, budget: int | None) -> Chain:
        if self.chain is None or self.turn >= len(self.chain.steps):
            raise EnvError("call reset(problem) before step(): no problem in progress")
        if budget is not None and budget != 0 and budget not in self.ladder:
            raise EnvError(f"budget {budget} is not on the ladder {list(self.ladder)} (or 0, or None)")
        return self.chain

    def observe(self) -> Observation:
        assert self.chain is not None
        chain = self.chain
        return Observation(
            problem=chain.id,
            question=chain.question,
            turn=self.turn,
            turns=len(chain.steps),
            sub_question=chain.steps[self.turn].prompt,
            sub_questions=tuple(s.prompt for s in chain.steps),
            messages=tuple(messages_for(chain, self.turn, self.answers)),
            spent=self.spent,
            spent_thinking=self.spent_thinking,
            budgets=tuple(self.budgets),
            thinking=tuple(self.thinking),
        )

    def advance(
        self, budget: int | None, correct: bool, thinking: int, answer_tokens: int, answer: str, said: str
    ) -> StepResult:
        assert self.chain is not None
        self.answers.append(said)
        self.budgets.append(budget)
        self.thinking.append(thinking)
        self.spent += thinking + answer_tokens
        self.spent_thinking += thinking
        self.all_correct = self.all_correct and correct
        self.turn += 1
        done = self.turn == len(self.chain.steps)
        return StepResult(
            correct=correct,
            thinking_tokens=thinking,
            answer_tokens=answer_tokens,
            answer=answer,
            done=done,
            problem_correct=self.all_correct if done else None,
            observation=None if done else self.observe(),
        )


class TableEnv:
    """The environment over an outcome table: every turn as the solver did it with the gold history."""

    def __init__(self, table: OutcomeTable, chains: Sequence[Chain]) -> None:
        self.table = table
        self.rows = table.problems()
        self.episode = _Episode(table.ladder, [c for c in chains if c.id in self.rows])
        self.ladder = self.episode.ladder
        missing = set(self.rows) - set(self.episode.chains)
        if missing:
            raise EnvError(f"the table has problems the chains do not: {sorted(missing)[:5]}")

    @property
    def problems(self) -> list[str]:
        return list(self.rows)

    def fork(self) -> TableEnv:
        """An environment over the same table with an episode of its own; nothing is copied, so
        training can hold one per trajectory instead of replaying a shared one."""
        other = object.__new__(TableEnv)
        other.table, other.rows, other.ladder = self.table, self.rows, self.ladder
        other.episode = _Episode(self.ladder, self.episode.chains)
        return other

    def reset(self, problem: str) -> Observation:
        return self.episode.start(problem)

    def row(self) -> TurnRow:
        assert self.episode.chain is not None
        return self.rows[self.episode.chain.id][self.episode.turn]

    def step(self, budget: int | None) -> StepResult:
        chain = self.episode.check_budget(budget)
        outcome: Outcome = self.row().outcome(budget)
        gold = answer_text(chain.steps[self.episode.turn])
        # The table was measured with the gold history, so that is the history the next turn sees.
        return self.episode.advance(budget, outcome.correct, outcome.thinking_tokens, outcome.answer_tokens, "", gold)


class LiveEnv:
    """The same environment, asking a real solver (through the gateway) turn by turn, its own history."""

    def __init__(
        self,
        base_url: str,
        model: str,
        chains: Sequence[Chain],
        ladder: Sequence[int],
        api_key: str | None = None,
        timeout_s: float = 300.0,
        unlimited: int = UNLIMITED_THINKING,
    ) -> None:
        self.episode = _Episode(ladder, chains)
        self.ladder = self.episode.ladder
        self.model = model
        self.unlimited = unlimited
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> LiveEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self, problem: str) -> Observation:
        return self.episode.start(problem)

    def step(self, budget: int | None) -> StepResult:
        chain = self.episode.check_budget(budget)
        step = chain.steps[self.episode.turn]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages_for(chain, self.episode.turn, self.episode.answers)),
            "temperature": 0.0,
            "max_tokens": ANSWER_ALLOWANCE,  # the gateway adds the thinking budget to it
            "thinking_token_budget": self.unlimited if budget is None else budget,
        }
        response = self.client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            raise EnvError(f"{self.model}: HTTP {response.status_code}: {response.text[:300]}")
        data = response.json()
        message = data["choices"][0]["message"]
        thinking = message.get("reasoning") or message.get("reasoning_content") or ""
        content = message.get("content") or ""
        thinking_tokens = len(thinking.encode())  # byte-level tokenizer: one token per byte
        answer_tokens = int(data["usage"]["completion_tokens"]) - thinking_tokens
        correct = verify(content, step.value)
        return self.episode.advance(budget, correct, thinking_tokens, answer_tokens, content, content)


# --- running a policy ---------------------------------------------------------------------------------

Policy = Callable[[Observation], int | None]


@dataclass(frozen=True, slots=True)
class Episode:
    problem: str
    correct: bool
    tokens: int
    thinking_tokens: int
    budgets: tuple[int | None, ...]
    turns_correct: tuple[bool, ...]


def run_episode(env: BudgetEnv, problem: str, policy: Policy) -> Episode:
    observation: Observation | None = env.reset(problem)
    budgets: list[int | None] = []
    correct: list[bool] = []
    tokens = thinking = 0
    result: StepResult | None = None
    while observation is not None:
        budget = policy(observation)
        result = env.step(budget)
        budgets.append(budget)
        correct.append(result.correct)
        tokens += result.tokens
        thinking += result.thinking_tokens
        observation = result.observation
    assert result is not None and result.problem_correct is not None
    return Episode(problem, result.problem_correct, tokens, thinking, tuple(budgets), tuple(correct))


def static(budget: int | None) -> Policy:
    """The baseline: the same budget every turn."""
    return lambda observation: budget


def oracle_allocation(table: OutcomeTable, problem: str) -> tuple[bool, tuple[int | None, ...], int]:
    """Each turn its cheapest rung (or unlimited) that gets it right: the headroom a policy can win.

    A turn no rung gets right gets the cheapest one (the problem is lost anyway). Returns whether the
    problem is solved, the budgets and the tokens used.
    """
    return allocate(table.problems()[problem], table.ladder)


def allocate(turns: Sequence[TurnRow], ladder: Sequence[int]) -> tuple[bool, tuple[int | None, ...], int]:
    """:func:`oracle_allocation` for one problem's rows (when a caller has them grouped already)."""
    budgets: list[int | None] = []
    tokens = 0
    solved = True
    options: list[int | None] = [0, *ladder, None]
    for row in turns:
        right = [b for b in options if row.outcome(b).correct]
        pick = min(right, key=lambda b: row.outcome(b).tokens) if right else 0
        solved = solved and bool(right)
        budgets.append(pick)
        tokens += row.outcome(pick).tokens
    return solved, tuple(budgets), tokens


def compare_live(
    table: TableEnv,
    live: Callable[[], BudgetEnv],
    problems: Sequence[str],
    budgets: Sequence[int | None],
    workers: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``problems`` at each static budget from the table and live; how far the table is from reality.

    ``live`` makes a live environment (one per worker thread: each holds one episode). Per budget:
    problem accuracy and mean tokens per problem, predicted and live, and the share of problems on
    which both agree on solved-or-not and on the exact tokens.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    local = threading.local()
    made: list[BudgetEnv] = []

    def run_live(job: tuple[str, int | None]) -> Episode:
        if not hasattr(local, "env"):
            local.env = live()
            made.append(local.env)
        return run_episode(local.env, job[0], static(job[1]))

    jobs = [(problem, budget) for budget in budgets for problem in problems]
    try:
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            tqdm(total=len(jobs), desc="live check", disable=not progress) as bar,
        ):
            observed = []
            for episode in pool.map(run_live, jobs):
                observed.append(episode)
                bar.update(1)
    finally:
        for env in made:
            close = getattr(env, "close", None)
            if close is not None:
                close()
    report: dict[str, Any] = {}
    count = len(problems)
    for index, budget in enumerate(budgets):
        predicted = [run_episode(table, p, static(budget)) for p in problems]
        seen = observed[index * count : (index + 1) * count]
        pairs = list(zip(predicted, seen, strict=True))
        report["none" if budget is None else str(budget)] = {
            "problems": count,
            "accuracy_table": sum(e.correct for e in predicted) / count,
            "accuracy_live": sum(e.correct for e in seen) / count,
            "tokens_table": sum(e.tokens for e in predicted) / count,
            "tokens_live": sum(e.tokens for e in seen) / count,
            "same_outcome": sum(a.correct == b.correct for a, b in pairs) / count,
            "same_tokens": sum(a.tokens == b.tokens for a, b in pairs) / count,
            "same_turns": sum(a.turns_correct == b.turns_correct for a, b in pairs) / count,
        }
    return report
