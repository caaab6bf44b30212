"""Training a solver: truncated-thinking examples, and a resumed run that equals an uninterrupted one."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from thrifty.budgeter.world.build import BuildError, BuildOptions, WorldBuild
from thrifty.budgeter.world.chains import build_chains, chain_from_gsm8k
from thrifty.budgeter.world.chat_format import THINK_END, build_tokenizer
from thrifty.budgeter.world.solvers import SPEC_FILE, EnvironmentPlan, SolverSpec, TrainingPlan, load_specs
from thrifty.budgeter.world.training import (
    BOUNDARY,
    IGNORE,
    Batches,
    TrainingInterrupted,
    TrainingTooSlow,
    _sequence,
    make_examples,
    train_solver,
)
from thrifty.server.kit.jobs import JobError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multiturn"
TINY = SolverSpec("tiny", "qwen3", hidden=64, layers=1, heads=1, kv_heads=1, intermediate=96)
TINY_MOE = SolverSpec(
    "tiny-moe",
    "qwen3_moe",
    hidden=64,
    layers=1,
    heads=1,
    kv_heads=1,
    experts=4,
    experts_per_token=2,
    expert_intermediate=32,
    router_aux_loss=0.01,
)


def _plan(**overrides: object) -> TrainingPlan:
    values: dict[str, object] = {
        "steps": 6,
        "max_minutes": 5,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
        "weight_decay": 0.01,
        "truncated_fraction": 0.5,
        "train_problems": None,
        "checkpoint_every_s": 3600,
    }
    return TrainingPlan(**(values | overrides))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def chains() -> list:  # type: ignore[type-arg]
    with (DATA / "gsm8k_train.jsonl").open() as lines:
        found, _ = build_chains(itertools.islice(lines, 40), "train")
    return found


def test_a_cut_example_trains_only_the_answer_after_a_forced_think_end(chains: list) -> None:  # type: ignore[type-arg]
    tokenizer = build_tokenizer()
    example = make_examples(chains[:1], tokenizer)[0]
    end = tokenizer.convert_tokens_to_ids(THINK_END)
    ids, labels = _sequence(example, 3, end)
    assert ids[len(example.prompt) + 3] == end
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert trained == example.guess and tokenizer.decode(trained).endswith("<|im_end|>")
    full_ids, full_labels = _sequence(example, None, end)
    assert sum(label != IGNORE for label in full_labels) == len(example.thinking) + len(example.tail)
    assert full_ids.count(end) == 1
    assert "check 1" in tokenizer.decode(example.thinking)  # it learns to check after the first working


def test_a_cut_answers_with_the_best_result_so_far() -> None:
    chain = chain_from_gsm8k("t", "q", "It is <<347*286=99242>>99242.\n#### 99242")
    assert not isinstance(chain, str)
    step = chain.steps[0]
    tokenizer = build_tokenizer()
    (example,) = make_examples([chain], tokenizer)
    end = tokenizer.convert_tokens_to_ids(THINK_END)

    def answered(cut: int) -> str:
        ids, labels = _sequence(example, cut, end)
        return str(tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE]))

    assert answered(step.first - 1).strip() == "x1 is 99242<|im_end|>"  # no working done yet: the right value
    assert answered(step.first).strip() == "x1 is 109242<|im_end|>"  # the slipped first working's result
    assert answered(step.results[1][0]).strip() == "x1 is 99242<|im_end|>"  # the redo's
    assert answered(len(example.thinking)).strip() == "x1 is 99242<|im_end|>"


def test_batches_depend_only_on_seed_and_step(chains: list) -> None:  # type: ignore[type-arg]
    tokenizer = build_tokenizer()
    examples = make_examples(chains, tokenizer)
    end = tokenizer.convert_tokens_to_ids(THINK_END)
    one, two = Batches(examples, _plan(), 1, end, 0), Batches(list(examples), _plan(), 1, end, 0)
    assert torch.equal(one(5)["input_ids"], two(5)["input_ids"])
    assert not torch.equal(one(5)["input_ids"], one(6)["input_ids"])


def test_boundary_cuts_land_next_to_where_a_working_is_complete(chains: list) -> None:  # type: ignore[type-arg]
    tokenizer = build_tokenizer()
    examples = make_examples(chains, tokenizer)
    end = tokenizer.convert_tokens_to_ids(THINK_END)

    def distances(boundary_fraction: float, end_fraction: float = 0.0) -> list[int]:
        plan = _plan(truncated_fraction=0.99, boundary_fraction=boundary_fraction, end_fraction=end_fraction)
        batches = Batches(examples, plan, 1, end, 0)
        found = []
        for step in range(60):
            rng = random.Random(step)
            for example in examples[:20]:
                cut = batches._cut(example, rng)
                assert 0 <= cut <= len(example.thinking)
                found.append(min(abs(cut - position) for position, _ in example.answers))
        return found

    assert all(d <= BOUNDARY for d in distances(1.0))
    near = sum(d <= BOUNDARY for d in distances(0.0)) / len(distances(0.0))
    assert near < 0.5  # uniform cuts rarely land there: the reason boundary cuts exist
    assert all(d == 0 for d in distances(1.0, end_fraction=1.0))  # exactly where a result is complete
    exact = [d == 0 for d in distances(1.0, end_fraction=0.5)]
    assert 0.45 < sum(exact) / len(exact) < 0.75  # half exact, and ±3 lands exactly once in 7 of the rest
    with pytest.raises(ValueError, match="boundary_fraction"):
        _plan(boundary_fraction=1.5)
    with pytest.raises(ValueError, match="end_fraction"):
        _plan(end_fraction=-0.1)


@pytest.mark.parametrize("spec", [TINY, TINY_MOE], ids=["dense", "moe"])
def test_resumed_training_equals_uninterrupted(spec: SolverSpec, chains: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    straight = train_solver(spec, _plan(), chains, tmp_path / "straight", seed=3, progress_bar=False)
    with pytest.raises(TrainingInterrupted):
        train_solver(spec, _plan(), chains, tmp_path / "resumed", seed=3, progress_bar=False, stop_at=3)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.checkpoint" / "progress.json").exists()
    resumed = train_solver(spec, _plan(), chains, tmp_path / "resumed", seed=3, progress_bar=False)
    assert straight["steps"] == resumed["steps"] == 6
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not (tmp_path / "resumed.checkpoint").exists()
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config.get("output_router_logits", False) is False
    assert (tmp_path / "resumed" / "tokenizer.json").exists()


def test_a_compiled_step_trains_the_same_model(chains: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    # torch.compile only changes how the step runs: the same losses and weights as eager training, up to
    # the float rounding of fused kernels; the record says the compiled step really ran.
    eager = train_solver(TINY, _plan(), chains, tmp_path / "eager", seed=3, progress_bar=False)
    compiled = train_solver(TINY, _plan(compiled=True), chains, tmp_path / "compiled", seed=3, progress_bar=False)
    assert compiled["compiled"] is True and eager["compiled"] is False
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-3)
    a = load_file(tmp_path / "eager" / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)
    assert set(b) == set(a)  # the saved model is the plain model, not the compiled wrapper


def test_without_a_compiler_a_compiled_plan_trains_eagerly(
    chains: list,  # type: ignore[type-arg]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("thrifty.budgeter.world.training.shutil.which", lambda _: None)
    with caplog.at_level("WARNING"):
        record = train_solver(TINY, _plan(compiled=True), chains, tmp_path / "m", seed=3, progress_bar=False)
    assert record["compiled"] is False and record["steps"] == 6
    assert "needs a C++ compiler" in caplog.text


def test_the_time_limit_is_only_a_safety_net_that_fails_clearly(chains: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    # Far past the limit from the start (a machine infinitely slow): no silent short training, an error
    # that says what happened and what to do, and a checkpoint the next run continues from.
    with pytest.raises(TrainingTooSlow, match=r"did 0 of 6 steps .* run the build again"):
        train_solver(TINY, _plan(max_minutes=1e-9), chains, tmp_path / "slow", seed=3, progress_bar=False)
    assert not (tmp_path / "slow").exists() and (tmp_path / "slow.checkpoint" / "progress.json").exists()
    record = train_solver(TINY, _plan(), chains, tmp_path / "slow", seed=3, progress_bar=False)
    assert record["steps"] == 6 and record["final_loss"] is not None


def test_solver_specs_validate() -> None:
    with pytest.raises(ValueError, match="head_dim 64"):
        SolverSpec("x", "qwen3", hidden=100, layers=1, heads=2, kv_heads=1, intermediate=8)
    with pytest.raises(ValueError, match="mixture"):
        SolverSpec("x", "qwen3_moe", hidden=64, layers=1, heads=1, kv_heads=1, experts=1, experts_per_token=1)
    spec = load_specs()
    assert {"dense-s", "dense-m", "moe-s"} <= set(spec.solvers)
    moe = spec.solvers["moe-s"]
    assert moe.is_moe and moe.experts >= 8 and moe.experts_per_token == 2 and moe.router_aux_loss > 0
    full = spec.environment["full"]
    assert full.budgets == (0, 16, 32, 64, 128, 256, 512, None) and full.train_problems >= 1000
    assert full.live_problems >= 100 and full.unlimited_thinking > full.ladder[-1]
    good = full.to_json()
    for wrong, message in (
        ({"ladder": (64, 16)}, "increasing"),
        ({"live_budgets": (16, 64)}, "three"),
        ({"unlimited_thinking": 512}, "above the ladder"),
        ({"train_problems": 0}, "≥ 1"),
    ):
        with pytest.raises(ValueError, match=message):
            EnvironmentPlan(**(good | {k: tuple(v) for k, v in good.items() if isinstance(v, list)} | wrong))


def test_a_solver_can_have_its_own_schedule_length(tmp_path: Path) -> None:
    plan = _plan(steps=6, solver_steps={"small": 9})
    assert plan.for_solver("small").steps == 9 and plan.for_solver("small").solver_steps == {}
    assert plan.for_solver("other") == _plan(steps=6)
    mixed = _plan(bf16=("small",))
    assert mixed.for_solver("small").autocast and not mixed.for_solver("other").autocast
    assert load_specs().training["full"].for_solver("dense-m").autocast  # bfloat16 buys dense-m its steps
    assert load_specs().training["full"].for_solver("dense-m").compiled  # and so does torch.compile
    assert not load_specs().training["quick"].for_solver("dense-m").compiled
    assert _plan(torch_compile=("small",)).for_solver("small").compiled
    assert not _plan(torch_compile=("small",)).for_solver("other").compiled
    with pytest.raises(ValueError, match="solver_steps"):
        _plan(solver_steps={"small": 0})
    spec = yaml.safe_load(SPEC_FILE.read_text())
    spec["training"]["quick"]["solver_steps"] = {"nope": 3}
    (tmp_path / "solvers.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="unknown solver.*nope"):
        load_specs(tmp_path / "solvers.yaml")


def test_build_refuses_unknown_solvers_and_other_settings(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unknown solver"):
        WorldBuild(BuildOptions(DATA, tmp_path, solvers=("nope",)))
    first = WorldBuild(BuildOptions(DATA, tmp_path, quick=True))
    first.job.stage("data", first._data)
    assert (tmp_path / "data" / "test.jsonl").exists()
    with pytest.raises(JobError, match="other settings"):
        WorldBuild(BuildOptions(DATA, tmp_path, quick=True, seed=9)).job.state()
    other = WorldBuild(BuildOptions(tmp_path / "nowhere", tmp_path / "other", quick=True))
    with pytest.raises(BuildError, match="is missing"):
        other.job.stage("data", other._data)


def test_example_config_uses_the_solver_prices() -> None:
    example = yaml.safe_load((Path(__file__).parents[2] / "examples" / "world.yaml").read_text())
    prices = {b["name"]: b["price"] for b in example["backends"]}
    for name, spec in load_specs().solvers.items():
        assert prices[name] == spec.price, name
