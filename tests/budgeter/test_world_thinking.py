"""The solvers' thinking: a first working, check rounds that overthink, slips that a check catches."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.budgeter.test_world_arithmetic import _check_digit_steps
from thrifty.budgeter.world.arithmetic import SLIP_STEPS, check, fmt, slipped, tokenize, work
from thrifty.budgeter.world.chains import Step, build_chains, chain_from_gsm8k
from thrifty.budgeter.world.thinking import REDO, check_rounds

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multiturn"
_ROUND = re.compile(r"^check (\d+)$")


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    with (DATA / "gsm8k_train.jsonl").open() as lines:
        chains, _ = build_chains(itertools.islice(lines, 600), "train")
    return [step for chain in chains for step in chain.steps]


def _longest_operation(step: Step) -> int:
    counts = [0]
    for line in step.scratchpad.splitlines():
        if ": " in line:
            counts.append(sum(1 for s in line.split(": ", 1)[1].split() if "=" in s and not s.startswith("=")))
    return max(counts)


def test_every_step_thinks_first_then_checks_as_often_as_its_result_says(steps: list[Step]) -> None:
    for step in steps:
        lines = step.thinking.splitlines()
        assert step.thinking[: step.first].splitlines()[-1].endswith(f"={step.results[0][1]}")
        if not step.slipped:
            assert step.thinking[: step.first] == step.scratchpad  # the first working is the careful one
        rounds = [int(m.group(1)) for line in lines if (m := _ROUND.match(line))]
        after_last_working = rounds[rounds.index(1, len(rounds) - check_rounds(Decimal(step.value))) :]
        assert after_last_working == list(range(1, check_rounds(Decimal(step.value)) + 1))
        assert 1 <= check_rounds(Decimal(step.value)) <= 3
        checks = [line for line in lines if line.endswith((" ok", " no"))]
        assert sum(line.endswith(" no") for line in checks) == int(step.slipped)
        for line in checks:
            _check_digit_steps(line.removesuffix(" ok").removesuffix(" no"))
        assert step.results[-1][1] == step.value  # the last working is right
    easy = [s for s in steps if s.bucket == "easy"]
    assert sum(len(s.thinking) for s in easy) >= 2 * sum(s.first for s in easy)  # the overthinking to learn


def test_slips_happen_exactly_on_long_operations_so_almost_only_on_hard_steps(steps: list[Step]) -> None:
    for step in steps:
        assert step.slipped == (_longest_operation(step) >= SLIP_STEPS), step.prompt
    by_bucket = {b: [s for s in steps if s.bucket == b] for b in ("easy", "medium", "hard")}
    assert not any(s.slipped for s in by_bucket["easy"])
    hard = by_bucket["hard"]
    assert 0.3 <= sum(s.slipped for s in hard) / len(hard) <= 0.7


def test_a_slip_is_caught_by_the_check_and_redone() -> None:
    chain = chain_from_gsm8k("t", "q", "Each costs <<347*286=99242>>99242 so <<99242+8=99250>>99250.\n#### 99250")
    assert not isinstance(chain, str)
    step = chain.steps[0]
    assert step.slipped and step.bucket == "hard"
    lines = step.thinking.splitlines()
    assert lines[1].endswith("=109242")  # the hurried working: leading digit one too high
    assert lines[2] == "check 1"
    assert lines[3].startswith("286*347:") and lines[3].endswith("=99242 no")  # multiplied the other way round
    assert lines[4] == REDO and lines[5].endswith("=99242")
    assert step.results == ((len("\n".join(lines[:2])), "109242"), (len("\n".join(lines[:6])), "99242"))
    # cut before the first working is done: nothing stated; after it: the slipped result; after the redo: right
    assert step.answer_at(step.first - 1) is None
    assert step.answer_at(step.first) == "109242"
    assert step.answer_at(len(step.thinking)) == "99242"
    # the next turn adds 8: a short operation, never slipped, checked by subtracting
    second = chain.steps[1]
    assert not second.slipped and "99250-8:" in second.thinking


numbers = st.integers(10, 99_999).map(Decimal)


@given(numbers, st.sampled_from("+-*/"), numbers)
@settings(max_examples=300, deadline=None)
def test_a_hurried_working_is_wrong_exactly_when_it_is_long_and_its_check_says_so(
    a: Decimal, op: str, b: Decimal
) -> None:
    if op == "-" and a < b:
        a, b = b, a
    careful = work([fmt(a), op, fmt(b)], {})
    hurried = work([fmt(a), op, fmt(b)], {}, slip=True)
    (operation,) = hurried.steps
    long = sum(1 for s in operation.line.split(": ", 1)[1].split() if "=" in s and not s.startswith("=")) >= SLIP_STEPS
    assert (hurried.value != careful.value) == long
    if long:
        assert hurried.value == slipped(careful.value)
    line, agrees = check(operation)
    assert agrees == (not long), line
    assert check(careful.steps[0])[1]


def test_slipped_results_raise_the_leading_digit() -> None:
    assert slipped(Decimal(240000)) == Decimal(340000)
    assert slipped(Decimal(987)) == Decimal(1087)
    assert slipped(Decimal("0.35")) == Decimal("1.35")
    assert slipped(Decimal("12.5")) == Decimal("22.5")


def test_checks_work_each_operation_another_way() -> None:
    add, sub, mul, div = (work(tokenize(t), {}).steps[0] for t in ("48+24", "100-48", "24*13", "7/4"))
    assert check(add) == ("72-24: 12-4=8 7-1-2=4 =48 ok", True)
    assert check(sub)[0].startswith("52+48: ") and check(sub)[1]
    assert check(mul)[0].startswith("13*24: ") and check(mul)[0].endswith("=312 ok")
    assert check(div)[0].startswith("7/4: ") and check(div)[0].endswith("=1.75 ok")
