"""GSM8K solutions turned into multi-turn calculator chains.

Every ``<<expression=result>>`` annotation of a GSM8K answer becomes one turn, ``x2 = 48+x1``: the
solver must compute that step's value. An operand equal to an earlier step's result is written as
that step's name, so the solver has to read it from the conversation. The last turn's value is the
problem's answer.

A problem is left out (and counted, so the build can report it) when an annotation is not plain
arithmetic, when a step's value under the world's semantics is negative or far from GSM8K's own
result, or when the last step is not the final answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from thrifty.budgeter.world.arithmetic import ExpressionError, fmt, tokenize, work
from thrifty.budgeter.world.thinking import compose, stated_at

_ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]*)>>")
_FINAL = re.compile(r"####\s*([-\d.,]+)")

# Difficulty buckets by elementary digit operations in the worked step (fixed, so that buckets mean
# the same thing in every build): a two-column sum is easy, a long multiplication is hard. On GSM8K's
# test steps this splits about 63% easy (≤ 2), 27% medium (3–5) and 10% hard (≥ 6).
BUCKETS = (("easy", 2), ("medium", 5), ("hard", 10**9))


def bucket(operations: int) -> str:
    return next(name for name, limit in BUCKETS if operations <= limit)


@dataclass(frozen=True, slots=True)
class Step:
    prompt: str  # what the user asks: "x2 = 48+x1"
    value: str  # the exact answer, plain decimal notation
    scratchpad: str
    operations: int
    operators: int
    bucket: str
    # What the solver thinks through (thrifty.budgeter.world.thinking): the first working, maybe a redo,
    # and check rounds; where the first working ends; each completed working's (end, result).
    thinking: str = ""
    first: int = 0
    results: tuple[tuple[int, str], ...] = ()
    slipped: bool = False

    def answer_at(self, cut: int) -> str | None:
        """The result the thinking states when cut after ``cut`` characters (None: none complete yet)."""
        return stated_at(self.results, cut, None)


@dataclass(frozen=True, slots=True)
class Chain:
    id: str
    question: str
    steps: tuple[Step, ...]

    @property
    def answer(self) -> str:
        return self.steps[-1].value

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "steps": [asdict(s) for s in self.steps]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chain:
        steps = (Step(**(s | {"results": tuple(tuple(r) for r in s.get("results", ()))})) for s in data["steps"])
        return cls(data["id"], data["question"], tuple(steps))


def _number(text: str) -> Decimal | None:
    cleaned = text.strip().replace(",", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except ArithmeticError:
        return None


def _close(ours: Decimal, theirs: Decimal) -> bool:
    return abs(ours - theirs) <= max(Decimal("0.01"), abs(theirs) * Decimal("0.001"))


def chain_from_gsm8k(problem_id: str, question: str, answer: str) -> Chain | str:
    """The chain for one GSM8K problem, or the reason it is left out."""
    final = _FINAL.search(answer)
    if final is None or (gold := _number(final.group(1))) is None:
        return "no final answer"
    annotations = _ANNOTATION.findall(answer)
    if not annotations:
        return "no calculator steps"
    names: dict[str, Decimal] = {}
    by_result: dict[Decimal, str] = {}  # GSM8K's written result → the name of the step that made it
    steps: list[Step] = []
    for index, (expression, written) in enumerate(annotations, start=1):
        theirs = _number(written)
        if theirs is None:
            return "unreadable result"
        try:
            tokens = [by_result.get(Decimal(t), t) if t[0].isdigit() else t for t in tokenize(expression)]
            worked = work(tokens, names)
            hurried = work(tokens, names, slip=True)
        except (ExpressionError, ArithmeticError) as exc:
            return f"not plain arithmetic ({exc})" if isinstance(exc, ExpressionError) else "not plain arithmetic"
        if not _close(worked.value, theirs):
            return "disagrees with the annotation"
        # The scratchpad first recalls the earlier results it uses, worded as the answers that gave them.
        recalled = [f"{n} is {fmt(names[n])}" for n in dict.fromkeys(t for t in tokens if t in names)]
        name = f"x{index}"
        names[name] = worked.value
        by_result[theirs] = name
        by_result[worked.value] = name
        prompt = f"{name} = {''.join(tokens)}"
        thinking = compose(recalled, worked, hurried)
        steps.append(
            Step(
                prompt,
                fmt(worked.value),
                "\n".join([*recalled, worked.scratchpad]),
                worked.operations,
                worked.operators,
                bucket(worked.operations),
                thinking.text,
                thinking.first,
                thinking.results,
                thinking.slipped,
            )
        )
    if not _close(Decimal(steps[-1].value), gold):
        return "last step is not the answer"
    return Chain(problem_id, question, tuple(steps))


def read_gsm8k(lines: Iterable[str], split: str) -> Iterator[Chain | str]:
    import orjson

    for i, line in enumerate(lines):
        if line.strip():
            record = orjson.loads(line)
            yield chain_from_gsm8k(f"{split}-{i}", record["question"], record["answer"])


def build_chains(lines: Iterable[str], split: str) -> tuple[list[Chain], Counter[str]]:
    chains: list[Chain] = []
    dropped: Counter[str] = Counter()
    for item in read_gsm8k(lines, split):
        if isinstance(item, Chain):
            chains.append(item)
        else:
            dropped[item.split(" (")[0]] += 1
    return chains, dropped
