"""What a solver thinks through for one step, the way reasoning models do: work it, then keep checking.

The thinking of a step is its **first working** (the scratchpad: the earlier results it uses recalled,
then the expression worked operation by operation) followed by **check rounds**. A round checks every
operation of the latest working another way (:func:`thrifty.budgeter.world.arithmetic.check`) and
writes ``ok`` or ``no`` after each::

    x1 is 24
    48+24
    48+24: 8+4=12 4+2+1=7 =72
    check 1
    72-24: 12-4=8 7-1-2=4 =48 ok
    check 2
    72-24: 12-4=8 7-1-2=4 =48 ok

**Overthinking.** After a working that is right, the solver still checks it 1, 2 or 3 times — how many
is ``1 + (last digit of the result) mod 3``, a rule of the step's own text, so greedy decoding varies it
from step to step as a sampled model's habits would. These rounds never change the answer.

**Slips, and why checking pays on hard steps.** The first working is hurried: in an operation of
``SLIP_STEPS`` (6) or more digit steps, every digit step is written right but the result comes out
with its leading digit one too high, as if a carry were counted twice
(:func:`thrifty.budgeter.world.arithmetic.slipped`), and everything after it is worked from that wrong
value. Only long operations are that long, so it happens almost only on hard steps. The first check
round, done carefully, disagrees at that operation (``no``); the solver writes ``redo``, works the step
again carefully from that operation on, and then checks the new working as above. The slip is a rule
of the text, not a coin flip, so greedy decoding reproduces it and a budget that stops thinking right
after the first working gets such a step wrong, while enough budget gets it right.

**Cut anywhere, answer with the best result so far.** When a thinking budget forces ``</think>`` at
some point, the answer is the result of the latest *completed* working before that point (the
hurried one until a redo is finished); cut before any working is complete, the solver can only guess
(training shows it the right value there, as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from thrifty.budgeter.world.arithmetic import Worked, check, fmt

ROUND = "check {}"
REDO = "redo"
T = TypeVar("T")


def stated_at(results: Sequence[tuple[int, T]], cut: int, before: T) -> T:
    """Of ``(position, result)`` pairs in order, the last result complete by ``cut``; ``before`` if none."""
    stated = before
    for position, result in results:
        if position <= cut:
            stated = result
    return stated


def check_rounds(value: Decimal) -> int:
    """How many times a right working is checked: 1–3, by the result's last digit."""
    digits = fmt(value).replace(".", "")
    return 1 + int(digits[-1]) % 3


@dataclass(frozen=True, slots=True)
class Thinking:
    text: str
    first: int  # characters (= tokens) of the first working
    results: tuple[tuple[int, str], ...]  # (where a working's result is complete, that result), in order
    slipped: bool  # the first working is wrong and a check sends the solver to redo it

    def answer_at(self, cut: int) -> str | None:
        """The result stated when thinking is cut after ``cut`` characters (None: no working is complete)."""
        return stated_at(self.results, cut, None)


def compose(recalled: list[str], careful: Worked, hurried: Worked) -> Thinking:
    """The thinking of a step from its careful working and its hurried (maybe slipped) first working."""
    lines = [*recalled, careful.expression, *hurried.lines_from(0)]
    results = [(_length(lines), fmt(hurried.value))]
    first = _length(lines)
    slipped = hurried.value != careful.value
    if slipped:
        lines.append(ROUND.format(1))
        for index, operation in enumerate(hurried.steps):
            line, agrees = check(operation)
            lines.append(line)
            if not agrees:
                lines.append(REDO)
                lines.extend(careful.lines_from(index))
                break
        else:  # pragma: no cover - a slip always changes the value of the operation it is in
            raise AssertionError("a slipped working passed its check")
        results.append((_length(lines), fmt(careful.value)))
    for round_ in range(1, check_rounds(careful.value) + 1):
        lines.append(ROUND.format(round_))
        for operation in careful.steps:
            line, agrees = check(operation)
            if not agrees:  # pragma: no cover - exact arithmetic agrees with itself
                raise AssertionError(f"a careful working failed its check: {line}")
            lines.append(line)
    return Thinking("\n".join(lines), first, tuple(results), slipped)


def _length(lines: list[str]) -> int:
    return len("\n".join(lines))
