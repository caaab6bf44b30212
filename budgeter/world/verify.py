"""The one answer checker: the budgeter's rewards, the router's evaluation logs and the tests all use it."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_answer(text: str | None) -> Decimal | None:
    """The last number in a reply (thousands separators allowed), or None when there is none."""
    if not text:
        return None
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None


def verify(reply: str | None, gold: str | Decimal) -> bool:
    """True when the reply's final number equals the gold value exactly (values have ≤ 2 decimals)."""
    answer = parse_answer(reply)
    return answer is not None and answer == Decimal(gold)
