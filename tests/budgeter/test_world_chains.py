"""GSM8K → chains, the chat format the solvers see, and the one verifier."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path

import pytest

from thrifty.budgeter.world.chains import Chain, build_chains, chain_from_gsm8k
from thrifty.budgeter.world.chat_format import (
    THINK_END,
    THINK_START,
    answer_text,
    build_tokenizer,
    completion,
    messages_for,
    render_prompt,
)
from thrifty.budgeter.world.verify import parse_answer, verify

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multiturn"

BETTY = (
    "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
    "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
    "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5"
)


def test_steps_refer_to_earlier_results_by_name() -> None:
    chain = chain_from_gsm8k("t-0", "Betty's wallet", BETTY)
    assert isinstance(chain, Chain)
    assert [s.prompt for s in chain.steps] == ["x1 = 100/2", "x2 = 15*2", "x3 = 100-x1-x2-15"]
    assert [s.value for s in chain.steps] == ["50", "30", "5"]
    assert chain.answer == "5"
    # the solver must look x1 and x2 up, recalling them as the earlier answers stated them
    assert chain.steps[2].scratchpad.splitlines()[:3] == ["x1 is 50", "x2 is 30", "100-50-30-15"]
    assert not chain.steps[0].scratchpad.startswith("x")
    assert chain.steps[2].operations > chain.steps[1].operations


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("No steps here.\n#### 4", "no calculator steps"),
        ("Half: <<10/2=5>>5 then <<5-9=-4>>-4\n#### -4", "not plain arithmetic"),
        ("Odd: <<3*3=10>>10\n#### 10", "disagrees with the annotation"),
        ("<<2+2=4>>4 and then something else\n#### 7", "last step is not the answer"),
    ],
)
def test_problems_that_do_not_make_chains_say_why(answer: str, reason: str) -> None:
    result = chain_from_gsm8k("t", "q", answer)
    assert isinstance(result, str) and result.startswith(reason)


def test_the_real_data_keeps_most_problems_and_its_mix_of_difficulty() -> None:
    with (DATA / "gsm8k_test.jsonl").open() as lines:
        chains, dropped = build_chains(lines, "test")
    kept = len(chains) / (len(chains) + sum(dropped.values()))
    assert kept > 0.8, dropped
    buckets = {s.bucket for c in chains for s in c.steps}
    assert buckets == {"easy", "medium", "hard"}
    assert max(len(c.steps) for c in chains) >= 6
    assert any("." in s.value for c in chains for s in c.steps)  # decimals are kept, not dropped
    assert chains[0].to_json() == Chain.from_json(json.loads(json.dumps(chains[0].to_json()))).to_json()


def test_train_and_test_problems_do_not_overlap() -> None:
    def questions(name: str) -> set[str]:
        with (DATA / name).open() as lines:
            return {json.loads(line)["question"] for line in lines}

    assert not questions("gsm8k_train.jsonl") & questions("gsm8k_test.jsonl")


def test_template_matches_the_hand_rendering_and_drops_earlier_thinking() -> None:
    with (DATA / "gsm8k_train.jsonl").open() as lines:
        chains, _ = build_chains(itertools.islice(lines, 30), "train")
    chain = next(c for c in chains if len(c.steps) >= 3)
    tokenizer = build_tokenizer()
    messages = messages_for(chain, 2)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == render_prompt(messages)
    assert rendered.endswith(f"assistant\n{THINK_START}\n")
    with_thinking = messages[:1] + [{"role": "assistant", "content": f"{THINK_START}\nlong\n{THINK_END}\n\n7"}]
    history = tokenizer.apply_chat_template(with_thinking, tokenize=False)
    assert "long" not in history and "assistant\n7<|im_end|>" in history


def test_gold_history_names_each_result() -> None:
    with (DATA / "gsm8k_train.jsonl").open() as lines:
        chains, _ = build_chains(itertools.islice(lines, 30), "train")
    chain = next(c for c in chains if len(c.steps) >= 3)
    messages = messages_for(chain, 2)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == f"x1 is {chain.steps[0].value}" == answer_text(chain.steps[0])
    assert verify(messages[3]["content"], chain.steps[1].value)
    assert messages_for(chain, 2, ["a", "b"])[3]["content"] == "b"  # a solver's own answers, when given


def test_tokenizer_is_byte_level_with_think_tags_as_plain_added_tokens() -> None:
    tokenizer = build_tokenizer()
    text = completion("12+3: 2+3=5 1+0=1 =15", "15")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    end = tokenizer.convert_tokens_to_ids(THINK_END)
    assert ids.count(end) == 1
    assert THINK_END not in tokenizer.all_special_tokens and THINK_START not in tokenizer.all_special_tokens
    assert len(tokenizer("1234", add_special_tokens=False)["input_ids"]) == 4  # one token per digit


@pytest.mark.parametrize(
    ("reply", "gold", "right"),
    [
        ("72", "72", True),
        ("\n\n72", "72.0", True),
        ("x3 = 0.5", "0.50", True),
        ("x3 is 12.5", "12.50", True),
        ("The answer is 1,200.", "1200", True),
        ("72\n73", "72", False),
        ("10 1=1=1", "1", False),
        ("", "0", False),
        (None, "0", False),
        ("x1", "1", False),
    ],
)
def test_verifier(reply: str | None, gold: str, right: bool) -> None:
    assert verify(reply, gold) is right


def test_parse_answer_reads_negative_and_bare_decimals() -> None:
    assert parse_answer("-3") == Decimal(-3)
    assert parse_answer(".25") == Decimal("0.25")
