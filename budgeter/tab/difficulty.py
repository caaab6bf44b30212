"""How much work a sub-question asks for, read from its text and the conversation before it.

A sub-question of a calculator chain (``x3 = x1*12+7``) names earlier results; the answers that gave
them say their values (``x1 is 24``). With those substituted, the expression is worked out the way the
reasoning world's solvers work it (:func:`thrifty.budgeter.world.arithmetic.work`), and what that
costs is its difficulty: the elementary digit operations, the operators, and the longest single
operation (long operations are where a hurried first working slips), and how long the working is
when written out. This is the world's own need
estimate: the difficulty heuristic budgets by it, and the fast TAB policy sees it among its features.

Text that is not such an expression still gets the plain counts (characters, digits, operator signs),
so the estimate never fails: a policy serving ordinary chats just sees ``parsed = False``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from thrifty.budgeter.world.arithmetic import ExpressionError, fmt, tokenize, work

_ASSIGNMENT = re.compile(r"^\s*(x\d+)\s*=\s*(.+?)\s*$", re.DOTALL)
_STATED = re.compile(r"\b(x\d+)\s+is\s+(-?\d+(?:\.\d+)?)\b")
_OPERATOR = re.compile(r"[-+*/×÷]")
_DIGIT = re.compile(r"\d")
MAX_TEXT = 2000  # characters of a sub-question read; longer ones are counted, not worked out


@dataclass(frozen=True, slots=True)
class Difficulty:
    parsed: bool  # the text is an expression over known names, and it was worked out
    digit_steps: int  # elementary digit operations of the working (0 when not parsed)
    operators: int
    longest: int  # digit steps of the longest single operation
    references: int  # earlier results the expression names
    digits: int  # digits in the text as written
    length: int  # characters of the text
    working: int = 0  # characters of the written-out working (recalled values, expression, operations)

    @property
    def need(self) -> int:
        """What the heuristic budgets by: digit steps when worked out, else the digits written."""
        return self.digit_steps if self.parsed else self.digits


def text_of(content: object) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def stated_values(messages: Sequence[Mapping[str, object]]) -> dict[str, Decimal]:
    """Names and values the assistant's answers have stated so far ("x2 is 48"), the latest winning."""
    values: dict[str, Decimal] = {}
    for message in messages:
        if message.get("role") != "assistant":
            continue
        for name, value in _STATED.findall(text_of(message.get("content"))):
            try:
                values[name] = Decimal(value)
            except InvalidOperation:  # pragma: no cover - the pattern only matches plain decimals
                continue
    return values


def estimate(text: str, values: Mapping[str, Decimal]) -> Difficulty:
    """The difficulty of one sub-question, given the values stated before it."""
    digits, length = len(_DIGIT.findall(text)), len(text)
    plain = Difficulty(False, 0, len(_OPERATOR.findall(text)), 0, 0, digits, length)
    match = _ASSIGNMENT.match(text) if length <= MAX_TEXT else None
    if match is None:
        return plain
    try:
        tokens = tokenize(match.group(2))
        names = {t for t in tokens if t.startswith("x")}
        if not names <= values.keys():
            return plain
        worked = work(tokens, dict(values))
    except (ExpressionError, ArithmeticError):
        return plain
    longest = max((_digit_steps(step.line) for step in worked.steps), default=0)
    recalled = sum(len(f"{name} is {fmt(values[name])}\n") for name in names)
    return Difficulty(
        True,
        worked.operations,
        worked.operators,
        longest,
        len(names),
        digits,
        length,
        recalled + len(worked.scratchpad),
    )


def estimate_turn(messages: Sequence[Mapping[str, object]]) -> Difficulty:
    """The difficulty of a conversation's last user message, references resolved from before it."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user":
            return estimate(text_of(message.get("content")), stated_values(messages[:index]))
    return estimate("", {})


def _digit_steps(line: str) -> int:
    """Digit steps written in one operation line ("24*2: 4*2=8 2*2=4 =48" has 2)."""
    _, _, steps = line.partition(": ")
    return sum(1 for part in steps.split() if "=" in part and not part.startswith("="))
