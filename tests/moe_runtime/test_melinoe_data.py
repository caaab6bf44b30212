"""What the MELINOE fine-tune reads: a world build's training turns, or JSONL examples."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from thrifty.budgeter.world.chains import build_chains
from thrifty.budgeter.world.chat_format import THINK_END, THINK_START, build_tokenizer
from thrifty.moe_runtime.melinoe.data import JsonlData, WorldData, digest, load_data

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multiturn"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as a world build's data stage leaves it (only what the fine-tune reads)."""
    folder = tmp_path_factory.mktemp("world")
    with (DATA / "gsm8k_train.jsonl").open() as lines:
        chains, _ = build_chains(itertools.islice(lines, 40), "train")
    (folder / "data").mkdir()
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps(c.to_json()) + "\n" for c in chains))
    return folder


def test_world_batches_are_the_worlds_turns_and_repeat_by_step(world: Path) -> None:
    data = WorldData(world)
    assert len(data.train_chains) + len(data.validation_chains) == len(
        (world / "data" / "train.jsonl").read_text().splitlines()
    )
    assert not {c.id for c in data.train_chains} & {c.id for c in data.validation_chains}
    batch = data.batch(3, 8, seed=0)
    assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape == batch["labels"].shape
    assert torch.equal(batch["input_ids"], data.batch(3, 8, seed=0)["input_ids"])  # a resumed run sees the same
    assert not torch.equal(batch["input_ids"], data.batch(4, 8, seed=0)["input_ids"])
    assert ((batch["labels"] != -100) <= (batch["attention_mask"] == 1)).all()  # no loss on padding
    tokenizer = build_tokenizer()
    prompt = tokenizer.decode(data.prompts("validation", 1)[0])
    assert prompt.endswith(f"{THINK_START}\n")  # a prompt awaits the thinking, as the solvers are served
    for rows in data.validation_batches(4):  # whole turns, thinking and answer under the loss
        for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True):
            text = tokenizer.decode(ids[labels != -100])
            assert THINK_END in text and text.rstrip().endswith(tokenizer.eos_token)
    assert digest(world) == data.digest


def test_jsonl_examples_of_each_kind(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    path = tmp_path / "data.jsonl"
    rows = [{"text": "1 2 3"}, {"prompt": "x1 = 2+2", "completion": " x1 is 4"}] * 5
    rows.append({"messages": [{"role": "user", "content": "x1 = 3*4"}, {"role": "assistant", "content": "x1 is 12"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a blank line is skipped
    data = load_data(path, tokenizer)
    assert isinstance(data, JsonlData) and len(data.train) + len(data.validation) == 11
    by_kind = {tokenizer.decode(e.prompt + e.completion): e for e in data.train + data.validation}
    chat = next(e for text, e in by_kind.items() if "3*4" in text)
    assert tokenizer.decode(chat.prompt).endswith(f"{THINK_START}\n")  # the template's generation prompt
    assert tokenizer.decode(chat.completion) == "x1 is 12" + tokenizer.eos_token  # the reply, then the end
    plain = next(e for text, e in by_kind.items() if text == "1 2 3")
    assert plain.prompt == [] and tokenizer.decode(plain.completion) == "1 2 3"
    batch = data.batch(0, 4, seed=1)
    assert batch["input_ids"].shape[0] == 4
    assert all(len(p) > 0 for p in data.prompts("train", 20))  # plain text lends its first half as a prompt
