"""A small outcome table with known answers, for the environment's and the report's tests."""

from __future__ import annotations

from thrifty.budgeter.world.chains import Chain, chain_from_gsm8k
from thrifty.budgeter.world.outcomes import FIRST_WORKING, UNLIMITED, Outcome, OutcomeTable, TurnRow

LADDER = (16, 64)


def chains() -> list[Chain]:
    found = [
        chain_from_gsm8k("p1", "Two steps.", "<<2+3=5>>5 then <<5*123456=617280>>617280\n#### 617280"),
        chain_from_gsm8k("p2", "One step.", "<<1+1=2>>2\n#### 2"),
    ]
    assert all(isinstance(c, Chain) for c in found)
    return found  # type: ignore[return-value]


def _row(
    problem: str, turn: int, bucket: str, query: str, levels: dict[str, tuple[bool, int, int]], first: int
) -> TurnRow:
    return TurnRow(
        problem=problem,
        turn=turn,
        bucket=bucket,
        query=query,
        prompt_tokens=20,
        thinking="t" * levels[UNLIMITED][1],
        answer="x1 is 5",
        first_working=first,
        levels={key: Outcome(*value) for key, value in levels.items()},
    )


def table(hard_right_at_64: bool = False) -> OutcomeTable:
    """Budgets leave one token less to write (``thinking_allowed``): 16 thinks 15 tokens, 64 thinks 63.

    p1: an easy turn (right from 16 on, thinks 30, its first working 10) then a hard one (thinks
    200, right only unlimited unless ``hard_right_at_64``); p2: one easy turn (thinks 20)."""
    return OutcomeTable(
        "dense-s",
        "test",
        LADDER,
        (
            _row(
                "p1",
                0,
                "easy",
                "x1 = 2+3",
                {"0": (False, 0, 3), "16": (True, 15, 3), UNLIMITED: (True, 30, 3), FIRST_WORKING: (True, 10, 3)},
                10,
            ),
            _row(
                "p1",
                1,
                "hard",
                "x2 = x1*123456",
                {
                    "0": (False, 0, 4),
                    "16": (False, 15, 4),
                    "64": (hard_right_at_64, 63, 4),
                    UNLIMITED: (True, 200, 4),
                    FIRST_WORKING: (False, 80, 4),
                },
                80,
            ),
            _row(
                "p2",
                0,
                "easy",
                "x1 = 1+1",
                {"0": (False, 0, 3), "16": (True, 15, 3), UNLIMITED: (True, 20, 3), FIRST_WORKING: (True, 8, 3)},
                8,
            ),
        ),
    )
