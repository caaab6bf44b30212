"""The world's arithmetic: scratchpads agree with exact decimal arithmetic, and every digit step is true."""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thrifty.budgeter.world.arithmetic import ExpressionError, fmt, tokenize, work

numbers = st.one_of(
    st.integers(0, 99_999).map(Decimal),
    st.integers(0, 99_999).map(lambda n: Decimal(n).scaleb(-2)),
    st.integers(0, 999).map(lambda n: Decimal(n).scaleb(-1)),
)
_DIGIT_STEP = re.compile(r"^(1?\d)(?:-1)?([-+*])(\d)(?:\+(\d+))?=(\d+)$")


def _expected(a: Decimal, op: str, b: Decimal) -> Decimal:
    exact = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else Decimal(0)}[op]
    return exact if op in "+-" else exact.quantize(Decimal("0.01"), rounding=ROUND_DOWN)


def _check_digit_steps(scratchpad: str) -> None:
    """Column and digit-product steps must be arithmetic facts, e.g. '12-1-3=8' or '7*8+3=59'."""
    for token in scratchpad.split():
        if token.endswith(":") or token.startswith("=") or "/" in token or "=" not in token:
            continue
        left, right = token.split("=")
        if not re.fullmatch(r"[\d+\-*]+", left):
            continue
        assert eval(left) == int(right), f"wrong digit step {token} in\n{scratchpad}"  # noqa: S307 — digits only


@given(numbers, st.sampled_from("+-*/"), numbers)
@settings(max_examples=400, deadline=None)
def test_one_operation_matches_exact_arithmetic(a: Decimal, op: str, b: Decimal) -> None:
    if (op == "-" and a < b) or (op == "/" and b == 0):
        with pytest.raises(ExpressionError):
            work([fmt(a), op, fmt(b)], {})
        return
    worked = work([fmt(a), op, fmt(b)], {})
    assert worked.value == _expected(a, op, b)
    assert worked.scratchpad.splitlines()[-1].endswith(f"={fmt(worked.value)}")
    assert worked.operations >= 1
    _check_digit_steps(worked.scratchpad)


def test_precedence_brackets_and_names() -> None:
    worked = work(tokenize("(x1+4)*3-x2/2"), {"x1": Decimal(6), "x2": Decimal(8)})
    assert worked.value == Decimal(26)
    lines = worked.scratchpad.splitlines()
    assert lines[0] == "(6+4)*3-8/2"  # names are substituted first
    assert lines[1].startswith("6+4:") and lines[2] == "10*3-8/2"
    assert worked.operators == 4


def test_long_division_shows_the_decimal_point_and_truncates() -> None:
    worked = work(tokenize("2/3"), {})
    assert worked.value == Decimal("0.66")
    assert worked.scratchpad.splitlines()[-1] == "2/3: 2/3=0r2 . 20/3=6r2 20/3=6r2 =0.66"


def test_decimal_products_place_the_point() -> None:
    assert work(tokenize("0.2*50"), {}).value == Decimal(10)
    assert work(tokenize("1.25*0.5"), {}).value == Decimal("0.62")  # 0.625 truncated


@pytest.mark.parametrize("text", ["", "3 +", "2 ^ 3", "abc", "4*-2", "(3+4"])
def test_not_plain_arithmetic_is_refused(text: str) -> None:
    with pytest.raises(ExpressionError):
        work(tokenize(text), {})


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ExpressionError, match="x9"):
        work(tokenize("x9+1"), {})
