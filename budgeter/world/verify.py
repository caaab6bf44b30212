"""The one answer checker: the budgeter's rewards, the router's evaluation logs and the tests all use it.

A reply is right when its last line states exactly one number and that number equals the gold value.
Names such as ``x3`` are not numbers, thousands separators are allowed and a closing period is ignored,
so "72", "x3 is 72" (how solvers answer), "x3 = 72" and "The answer is 1,200." all read as answers; a
line with several numbers (or none) is no answer, so a solver cannot be right by accident at the end of
a run of digits.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NAME = re.compile(r"\b[A-Za-z_]+\d+\b")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])-?\.\d+(?![\w])")


def parse_answer(text: str | None) -> Decimal | None:
    """The single number on the reply's last non-empty line, or None when there is not exactly one."""
    if not text or not text.strip():
        return None
    line = _NAME.sub(" ", text.strip().splitlines()[-1]).strip().rstrip(".")
    found = _NUMBER.findall(line)
    if len(found) != 1 or re.search(r"\d", _NUMBER.sub(" ", line)):
        return None
    try:
        return Decimal(found[0].replace(",", ""))
    except InvalidOperation:
        return None


def verify(reply: str | None, gold: str | Decimal) -> bool:
    """True when the reply's answer equals the gold value exactly (world values have ≤ 2 decimals)."""
    answer = parse_answer(reply)
    return answer is not None and answer == Decimal(gold)
