"""Exact decimal arithmetic for calculator steps, and the scratchpad that works a step out digit by digit.

The world's number semantics (documented in the README): values are exact decimals, except that a
division, or a product with more than two decimal places, is *truncated toward zero to two decimal
places* — exactly what the long division in the scratchpad produces. Negative values never occur:
chains that would need them are left out when the world is built.

A scratchpad for ``x3 = 100-x1*2`` with ``x1 = 24`` reads::

    100-24*2
    24*2: 4*2=8 2*2=4 =48
    100-48
    100-48: 10-8=2 0-1-4=5 1-1-0=0 =52

The first line substitutes the named earlier results; each operation line lists its elementary digit
operations (a column of an addition or subtraction, a digit of a product, a step of a long division)
and ends with ``=result``; after each operation the remaining expression is written out again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

Token = str  # a number literal, a name like "x2", or one of + - * / ( )

_TOKEN = re.compile(r"\s*(?:(\d+\.\d+|\d+|\.\d+)|(x\d+)|([-+*/()]))")
_PLACES = Decimal("0.01")
SLIP_STEPS = 6  # a hurried first working slips on an operation of this many digit steps or more


class ExpressionError(ValueError):
    """The text is not an expression this world can work out."""


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExpressionError(f"unexpected {text[position : position + 8]!r} in {text!r}")
        number, name, op = match.groups()
        if number is not None:
            tokens.append(fmt(Decimal(number)))
        else:
            tokens.append(name or op)
        position = match.end()
    if not tokens:
        raise ExpressionError("empty expression")
    return tokens


def fmt(value: Decimal) -> str:
    """Plain notation without exponent or trailing zeros: 3.50 → '3.5', 1E+2 → '100'."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def truncate(value: Decimal) -> Decimal:
    return value.quantize(_PLACES, rounding=ROUND_DOWN) if value != value.to_integral_value() else value


def _decimals(value: Decimal) -> int:
    text = fmt(value)
    return len(text) - text.index(".") - 1 if "." in text else 0


def _scaled(value: Decimal, places: int) -> int:
    return int(value.scaleb(places))


def _with_point(digits: int, places: int) -> str:
    return fmt(Decimal(digits).scaleb(-places))


# --- one operation, digit by digit -------------------------------------------------------------------


def add(a: Decimal, b: Decimal) -> tuple[Decimal, list[str]]:
    places = max(_decimals(a), _decimals(b))
    x, y = str(_scaled(a, places)), str(_scaled(b, places))
    width = max(len(x), len(y))
    x, y = x.zfill(width), y.zfill(width)
    steps, carry = [], 0
    for i in range(width - 1, -1, -1):
        total = int(x[i]) + int(y[i]) + carry
        steps.append(f"{x[i]}+{y[i]}{'+1' if carry else ''}={total}")
        carry = total // 10
    result = a + b
    return result, steps


def subtract(a: Decimal, b: Decimal) -> tuple[Decimal, list[str]]:
    if a < b:
        raise ExpressionError("negative result")
    places = max(_decimals(a), _decimals(b))
    x, y = str(_scaled(a, places)), str(_scaled(b, places))
    y = y.zfill(len(x))
    steps, borrow = [], 0
    for i in range(len(x) - 1, -1, -1):
        top, bottom = int(x[i]), int(y[i])
        owe = "-1" if borrow else ""
        value = top - borrow - bottom
        borrow = 1 if value < 0 else 0
        steps.append(f"{'1' if borrow else ''}{top}{owe}-{bottom}={value + 10 * borrow}")
    return a - b, steps


def _row(multiplicand: str, digit: int) -> tuple[int, list[str]]:
    steps, carry = [], 0
    for ch in reversed(multiplicand):
        value = int(ch) * digit + carry
        steps.append(f"{ch}*{digit}{f'+{carry}' if carry else ''}={value}")
        carry = value // 10
    return int(multiplicand) * digit, steps


def multiply(a: Decimal, b: Decimal, other_way: bool = False) -> tuple[Decimal, list[str]]:
    """Long multiplication: a row per nonzero digit of the shorter factor, then the rows added.

    ``other_way``: the longer factor is the multiplier instead (how a check recomputes a product).
    """
    places = _decimals(a) + _decimals(b)
    x, y = str(_scaled(a, _decimals(a))), str(_scaled(b, _decimals(b)))
    if len(y) > len(x):  # the shorter number is the multiplier: fewer rows
        x, y = y, x
    if other_way:
        x, y = y, x
    steps: list[str] = []
    partials: list[int] = []
    rows = [(shift, int(ch)) for shift, ch in enumerate(reversed(y)) if ch != "0"]
    if not rows:  # a factor of zero
        steps.append(f"0*{x}=0")
    for shift, digit in rows:
        value, row = _row(x, digit)
        steps.extend(row)
        partial = value * 10**shift
        if len(rows) > 1 or places:  # with one row and no point, the row's value is the result
            steps.append(f"={partial}")
        partials.append(partial)
    total = 0
    for i, partial in enumerate(partials):
        if i == 0:
            total = partial
            continue
        _, column_steps = add(Decimal(total), Decimal(partial))
        steps.append(f"{total}+{partial}:")
        steps.extend(column_steps)
        total += partial
    if places:
        steps.append(f"p{places}")
    exact = Decimal(total).scaleb(-places)
    result = truncate(exact)
    if result != exact:
        steps.append(f"={fmt(exact)} t")
    return result, steps


def divide(a: Decimal, b: Decimal) -> tuple[Decimal, list[str]]:
    if b == 0:
        raise ExpressionError("division by zero")
    shift = _decimals(b)  # move both points until the divisor is whole
    dividend, divisor = a.scaleb(shift), int(b.scaleb(shift))
    steps = [f"{fmt(dividend)}/{divisor}:"] if shift else []
    text = fmt(dividend)
    whole, _, fraction = text.partition(".")
    remainder, places = 0, 0
    digits = list(whole)
    fraction_digits = list(fraction)
    i = 0
    while True:
        if i == len(digits):
            if remainder == 0 and not fraction_digits or places == 2:
                break
            if places == 0:
                steps.append(".")
            digits.append(fraction_digits.pop(0) if fraction_digits else "0")
            places += 1
        current = remainder * 10 + int(digits[i])
        quotient, remainder = divmod(current, divisor)
        steps.append(f"{current}/{divisor}={quotient}r{remainder}")
        i += 1
    result = (a / b).quantize(_PLACES, rounding=ROUND_DOWN)
    return truncate(result if result != result.to_integral_value() else result.to_integral_value()), steps


OPERATIONS = {"+": add, "-": subtract, "*": multiply, "/": divide}


# --- a whole step ------------------------------------------------------------------------------------


def _next_operation(tokens: list[Token]) -> int:
    """Index of the operator to apply next: innermost brackets first, then * and /, then + and -."""
    start, end = 0, len(tokens)
    if ")" in tokens:  # the first closing bracket ends an innermost group
        end = tokens.index(")")
        start = max(i for i in range(end) if tokens[i] == "(") + 1
    for group in ("*/", "+-"):
        for i in range(start, end):
            if tokens[i] in group and len(tokens[i]) == 1:
                return i
    raise ExpressionError("no operator left")


def _check_brackets(tokens: list[Token]) -> None:
    depth = 0
    for token in tokens:
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth < 0:
            break
    if depth != 0:
        raise ExpressionError("unbalanced brackets")


def _drop_brackets(tokens: list[Token]) -> list[Token]:
    changed = True
    while changed:
        changed = False
        for i in range(len(tokens) - 2):
            if tokens[i] == "(" and tokens[i + 2] == ")":
                tokens = tokens[:i] + [tokens[i + 1]] + tokens[i + 3 :]
                changed = True
                break
    return tokens


def _is_number(token: Token) -> bool:
    return token[0].isdigit()


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a worked step: ``line`` is how the scratchpad writes it, ``rest`` the expression
    left after it (None after the last one)."""

    left: str
    op: str
    right: str
    value: Decimal
    line: str
    rest: str | None


@dataclass(frozen=True, slots=True)
class Worked:
    value: Decimal
    scratchpad: str
    operations: int  # elementary digit operations: the step's difficulty
    operators: int
    expression: str = ""  # the first line: the expression with the earlier results substituted
    steps: tuple[Operation, ...] = ()

    def lines_from(self, index: int) -> list[str]:
        """The scratchpad's lines from operation ``index`` on (what a redo writes)."""
        lines: list[str] = []
        for operation in self.steps[index:]:
            lines.append(operation.line)
            if operation.rest is not None:
                lines.append(operation.rest)
        return lines


def work(expression: list[Token], names: dict[str, Decimal], slip: bool = False) -> Worked:
    """Evaluate an expression with this world's semantics and write its scratchpad.

    ``slip``: the hurried first working. Every digit step is still right, but an operation of
    ``SLIP_STEPS`` or more digit steps gets its result's leading digit one too high (:func:`slipped`);
    what follows is worked from that wrong value. The difficulty counts are the careful working's.
    """
    try:
        tokens = [fmt(names[t]) if t.startswith("x") else t for t in expression]
    except KeyError as exc:
        raise ExpressionError(f"unknown name {exc.args[0]}") from exc
    _check_brackets(tokens)
    tokens = _drop_brackets(tokens)
    first = "".join(tokens)
    done: list[Operation] = []
    operations = operators = 0
    while len(tokens) > 1:
        i = _next_operation(tokens)
        left, op, right = tokens[i - 1], tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if i == 0 or not _is_number(left) or not right or not _is_number(right):
            raise ExpressionError(f"malformed expression {''.join(expression)!r}")
        value, steps = OPERATIONS[op](Decimal(left), Decimal(right))
        digit_steps = sum(1 for s in steps if "=" in s and not s.startswith("="))
        if slip and digit_steps >= SLIP_STEPS:
            value = slipped(value)
        operations += digit_steps
        operators += 1
        tokens = _drop_brackets(tokens[: i - 1] + [fmt(value)] + tokens[i + 2 :])
        line = f"{left}{op}{right}: {' '.join(steps)} ={fmt(value)}"
        done.append(Operation(left, op, right, value, line, "".join(tokens) if len(tokens) > 1 else None))
    if operators == 0:
        raise ExpressionError("a step must compute something")
    if slip:
        operations = work(expression, names).operations
    worked = Worked(Decimal(tokens[0]), "", operations, operators, first, tuple(done))
    return Worked(worked.value, "\n".join([first, *worked.lines_from(0)]), operations, operators, first, worked.steps)


def slipped(value: Decimal) -> Decimal:
    """The result with its leading digit one too high (a carry counted twice): 240000 → 340000, 0.35 → 1.35."""
    whole = int(value)
    return value + (10 ** (len(str(whole)) - 1) if whole else 1)


def check(operation: Operation) -> tuple[str, bool]:
    """A check of one operation's result another way, and whether it agrees.

    A sum is checked by subtracting, a difference by adding back, a product by multiplying the other
    way round, a quotient by dividing again: ``"72-24: 12-4=8 7-1-2=4 =48 ok"``.
    """
    left, right, value = Decimal(operation.left), Decimal(operation.right), operation.value
    if operation.op == "+":
        shown, (found, steps), expected = f"{fmt(value)}-{operation.right}", _safe_subtract(value, right), left
    elif operation.op == "-":
        shown, (found, steps), expected = f"{fmt(value)}+{operation.right}", add(value, right), left
    elif operation.op == "*":
        shown, (found, steps), expected = f"{operation.right}*{operation.left}", multiply(left, right, True), value
    else:
        shown, (found, steps), expected = f"{operation.left}/{operation.right}", divide(left, right), value
    agrees = found == expected
    return f"{shown}: {' '.join(steps)} ={fmt(found)} {'ok' if agrees else 'no'}", agrees


def _safe_subtract(value: Decimal, right: Decimal) -> tuple[Decimal, list[str]]:
    if value < right:  # only a wrong sum can be smaller than an addend: the check then disagrees
        return Decimal(-1), [f"{fmt(value)}<{fmt(right)}"]
    return subtract(value, right)
