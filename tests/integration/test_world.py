"""The quick reasoning world, built for real: chains, three trained solvers, a vLLM evaluation, the report.

Then the example config serves the solvers and SmolLM2 behind the gateway (``thrifty serve``, four real
vLLM processes) and the openai SDK holds a multi-turn session against a solver.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from transformers import AutoConfig, AutoTokenizer

from tests.helpers import free_port, serve_process, stop_process, wait_ready
from tests.integration.conftest import BUILD_TIMEOUT_S, DATA_DIR, ROOT, THRIFTY, build_world
from thrifty.budgeter.world.build import read_chains
from thrifty.budgeter.world.chat_format import THINK_END, THINK_START, thinking_allowed
from thrifty.budgeter.world.environment import LiveEnv, TableEnv, compare_live, run_episode, static
from thrifty.budgeter.world.outcomes import UNLIMITED, Outcome, OutcomeTable, TurnRow
from thrifty.budgeter.world.solvers import load_specs
from thrifty.router.eval_log import read_eval_log
from thrifty.server.kit.artifacts import sha256

pytestmark = pytest.mark.integration


def test_manifest_describes_a_complete_build(world: Path) -> None:
    manifest = json.loads((world / "manifest.json").read_text())
    assert manifest["kind"] == "thrifty.world" and manifest["settings"]["mode"] == "quick"
    assert set(manifest["solvers"]) == {"dense-s", "dense-m", "moe-s", "moe-f"}
    for path, digest in manifest["files"].items():
        assert sha256(world / path) == digest, path
    assert manifest["inputs"]["test"]["sha256"] != manifest["inputs"]["train"]["sha256"]
    for name in ("accuracy_vs_budget.png", "problem_tokens.png", "RESULTS.md"):
        assert (world / "report" / name).stat().st_size > 0
    assert manifest["version"] == 2 and manifest["environment"]["serving"] == ["dense-s"]
    for name in ("dense-s", "dense-m", "moe-s", "moe-f"):
        assert f"tables/{name}/test.jsonl" in manifest["files"]
        assert f"checks/{name}.shortcut.json" in manifest["files"]
    assert "tables/dense-s/train.jsonl" in manifest["files"] and "checks/dense-s.live.json" in manifest["files"]
    assert "tables/dense-m/train.jsonl" not in manifest["files"]


def test_solvers_are_ordinary_hugging_face_folders(world: Path) -> None:
    specs = load_specs().solvers
    for name, spec in specs.items():
        folder = world / "solvers" / name
        config = AutoConfig.from_pretrained(folder)  # as vLLM reads it, whatever names this version writes
        assert config.architectures == (["Qwen3MoeForCausalLM"] if spec.is_moe else ["Qwen3ForCausalLM"])
        assert config.hidden_size == spec.hidden and config.head_dim == 64
        if spec.is_moe:
            assert (config.num_experts, config.num_experts_per_tok) == (spec.experts, spec.experts_per_token)
            assert config.router_aux_loss_coef > 0
        assert (folder / "model.safetensors").is_file()
        template = AutoTokenizer.from_pretrained(folder).chat_template
        assert isinstance(template, str) and THINK_START in template and THINK_END in template
        added = {t["content"]: t for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
        assert not added[THINK_START]["special"] and not added[THINK_END]["special"]


def test_outcome_tables_hold_every_rung_and_agree_with_direct_runs(world: Path) -> None:
    """Measured in vLLM: budget 0 means no thinking, a rung never thinks past itself, and the prefix
    shortcut the tables are measured with agrees with asking vLLM directly at every rung."""
    environment = load_specs().environment["quick"]
    for name in ("dense-s", "dense-m", "moe-s", "moe-f"):
        table = OutcomeTable.read(world / "tables" / name / "test.jsonl")
        assert table.ladder == environment.ladder and len(table.problems()) == environment.test_problems
        for row in table.rows:
            assert row.outcome(0).thinking_tokens == 0
            for budget in environment.ladder:  # a budget b leaves b - 1 tokens to write (the prompt's newline counts)
                thought = row.outcome(budget).thinking_tokens
                assert thought == thinking_allowed(budget) or row.outcome(budget) is row.outcome(None)
                assert thought <= thinking_allowed(budget)
            assert 0 < row.outcome(None).thinking_tokens <= environment.unlimited_thinking
        shortcut = json.loads((world / "checks" / f"{name}.shortcut.json").read_text())
        assert shortcut["requests"] == environment.shortcut_turns * len(environment.budgets)
        assert shortcut["agreement_correct"] >= 0.95 and shortcut["agreement_tokens"] >= 0.95, shortcut
    train = OutcomeTable.read(world / "tables" / "dense-s" / "train.jsonl")
    assert train.split == "train" and len(train.problems()) == environment.train_problems
    live = json.loads((world / "checks" / "dense-s.live.json").read_text())
    assert live["problems"] == environment.live_problems and live["through"] == "thrifty serve"
    assert list(live["budgets"]) == ["16", "64", "none"]


def test_router_log_uses_the_shared_format(world: Path) -> None:
    records = list(read_eval_log(world / "eval" / "router_log.jsonl"))
    turns = sum(
        len(json.loads(line)["steps"]) for line in (world / "data" / "test.jsonl").read_text().splitlines()[:10]
    )
    assert len(records) == 4 * turns
    assert {r.model for r in records} == {"dense-s", "dense-m", "moe-s", "moe-f"}
    assert all(r.score in (0.0, 1.0) and r.cost > 0 and r.task for r in records)
    assert {"bucket", "problem", "turn", "tokens"} <= set(records[0].extra)


def test_rerun_resumes_and_other_settings_are_refused(world: Path) -> None:
    again = build_world(world)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stderr
    other = subprocess.run(
        [*THRIFTY, "world", "build", "--out", str(world), "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        cwd=ROOT,
        check=False,
    )
    assert other.returncode == 2 and "other settings" in other.stderr
    assert (world / "manifest.json").is_file()  # refused before it touched the complete build


@pytest.fixture(scope="module")
def world_config(world: Path) -> dict[str, Any]:
    """examples/world.yaml, pointed at the quick world and at free ports."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "world.yaml").read_text())
    config["data_dir"] = str(DATA_DIR)
    for backend in config["backends"]:
        launch = backend["launch"]
        launch["port"] = free_port()
        launch["startup_timeout_s"] = 600
        if launch["model_path"].startswith("data/world/"):
            launch["model_path"] = str(world / launch["model_path"].removeprefix("data/world/"))
    return config


@pytest.fixture(scope="module")
def gateway(world_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _serve(world_config, tmp_path_factory.mktemp("world-gateway"), timeout=900)


def _serve(config: dict[str, Any], folder: Path, timeout: float) -> Iterator[str]:
    """``thrifty serve`` with ``config`` on a free port: yields its URL once ready, stops it after."""
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "serve.log"
    process = serve_process(["--config", str(path), "--port", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log, timeout=timeout)
        yield url
    finally:
        stop_process(process)


def test_multi_turn_session_against_a_solver(gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)
    assert {m.id for m in client.models.list()} == {
        "dense-s",
        "dense-m",
        "moe-s",
        "moe-f",
        "smollm2-135m-instruct",
        "auto",
    }
    messages = [{"role": "user", "content": "x1 = 12+30"}]
    first = client.chat.completions.with_raw_response.create(
        model="dense-s",
        messages=messages,
        extra_headers={"X-Session-ID": "world-1"},  # type: ignore[arg-type]
        extra_body={"thrifty": {"budget": 100}},
    )
    assert first.headers["x-thrifty-session"] == "world-1"
    assert first.headers["x-thrifty-thinking-budget"] == "64"  # the example's static budget, under B = 100
    reply = first.parse().choices[0].message
    thinking = getattr(reply, "reasoning", None) or ""
    assert len(thinking.encode()) <= 64
    spent = httpx.get(f"{gateway}/v1/sessions/world-1", timeout=10).json()["spent"]
    messages += [{"role": "assistant", "content": reply.content or ""}, {"role": "user", "content": "x2 = x1*2"}]
    second = client.chat.completions.with_raw_response.create(
        model="dense-s",
        messages=messages,
        extra_headers={"X-Session-ID": "world-1"},  # type: ignore[arg-type]
    )
    assert int(second.headers["x-thrifty-thinking-budget"]) == max(0, min(64, 100 - spent))  # what B has left
    session = httpx.get(f"{gateway}/v1/sessions/world-1", timeout=10).json()
    assert session["turn_count"] == 2 and session["budget"] == 100
    assert [t["model"] for t in session["turns"]] == ["dense-s", "dense-s"]
    # the ledger holds each turn's thinking as vLLM counted it (byte-level tokenizer: one token per byte),
    # what a budget policy reads of the previous turn
    assert session["turns"][0]["reasoning_tokens"] == len(thinking.encode())

    none = client.chat.completions.with_raw_response.create(
        model="moe-s",
        messages=[{"role": "user", "content": "x1 = 7*8"}],
        extra_headers={"X-Session-ID": "world-2"},
        extra_body={"thrifty": {"budget": 0}},  # type: ignore[arg-type]
    )
    assert none.headers["x-thrifty-thinking-budget"] == "0"
    assert not (getattr(none.parse().choices[0].message, "reasoning", None) or "")


def test_the_moe_solver_is_served_through_its_expert_cache(gateway: str, world_config: dict[str, Any]) -> None:
    """examples/world.yaml declares an expert cache for moe-s: its counters are on that backend's /metrics."""
    (launch,) = [b["launch"] for b in world_config["backends"] if b["name"] == "moe-s"]
    assert launch["expert_cache"]["slots"] < 8
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=120)
    client.chat.completions.create(model="moe-s", messages=[{"role": "user", "content": "x1 = 3*4"}], max_tokens=16)
    metrics = httpx.get(f"http://127.0.0.1:{launch['port']}/metrics", timeout=10).text
    series = r'thrifty_moe_cache_hits_total\{layer="model\.layers\.(\d+)\.mlp\.experts",policy="lru",slots="4"\} (\S+)'
    hits = re.findall(f"^{series}$", metrics, re.MULTILINE)
    assert sorted(layer for layer, _ in hits) == ["0", "1"]
    assert sum(float(value) for _, value in hits) > 0


def test_the_environment_api_against_the_live_solver(gateway: str, world: Path) -> None:
    """The live environment asks dense-s through the gateway; its first turns (no history yet, so the
    same question the table asked) match the table, and whole problems play to the end."""
    environment = load_specs().environment["quick"]
    chains = read_chains(world / "data" / "test.jsonl")[: environment.test_problems]
    table = OutcomeTable.read(world / "tables" / "dense-s" / "test.jsonl")
    offline = TableEnv(table, chains)
    budgets: list[int | None] = [0, *environment.ladder, None]
    agree = asked = 0
    with LiveEnv(gateway, "dense-s", chains, table.ladder, unlimited=environment.unlimited_thinking) as live:
        for problem in offline.problems:
            for budget in budgets:
                predicted = offline.reset(problem), offline.step(budget)
                observed = live.reset(problem), live.step(budget)
                assert observed[0] == predicted[0]  # the same observation before the first turn
                asked += 1
                agree += (observed[1].correct, observed[1].tokens) == (predicted[1].correct, predicted[1].tokens)
                if budget is not None:
                    assert observed[1].thinking_tokens <= thinking_allowed(budget)
        episode = run_episode(live, offline.problems[0], static(environment.ladder[-1]))
        assert len(episode.budgets) == len(chains[0].steps) and episode.tokens > 0
    assert agree >= 0.95 * asked, f"only {agree} of {asked} first turns agree with the table"
    report = compare_live(
        offline,
        lambda: LiveEnv(gateway, "dense-s", chains, table.ladder, unlimited=environment.unlimited_thinking),
        offline.problems[:3],
        [environment.ladder[0], None],
        workers=2,
    )
    assert set(report) == {str(environment.ladder[0]), "none"}
    assert all(0 <= row["same_outcome"] <= 1 and row["tokens_live"] > 0 for row in report.values())


# --- TAB behind the gateway ----------------------------------------------------------------------------

EASY, HARD = "x1 = 12+30", "x2 = x1*4587"  # 2 and 8 digit operations: the world's easy and hard buckets


def _relabelled_world(world: Path, folder: Path) -> Path:
    """The quick world's problems with the outcomes of a solver that never slips: every turn right at
    the rungs that cover it (easy turns from 16 on, the others from 64), thinking its whole budget and
    answering in 25 tokens, as the quick solver does.

    The quick solvers train for 40 steps and get every turn wrong, which leaves GRPO nothing to learn
    from, and their tables cover 10 problems; these tables cover all 200 training problems the quick
    world keeps, so a policy trained on them has one right answer per turn the test can hold the
    gateway to."""
    shutil.copytree(world / "data", folder / "data")
    shutil.copy(world / "manifest.json", folder / "manifest.json")
    ladder = load_specs().environment["quick"].ladder
    for split in ("train", "test"):
        rows = []
        for chain in read_chains(world / "data" / f"{split}.jsonl")[:200]:
            for turn, step in enumerate(chain.steps):
                needs = 16 if step.bucket == "easy" else 64
                levels = {"0": Outcome(False, 0, 24), UNLIMITED: Outcome(True, 255, 25)}
                levels |= {str(b): Outcome(b >= needs, thinking_allowed(b), 25) for b in ladder}
                rows.append(TurnRow(chain.id, turn, step.bucket, step.prompt, 30, "t" * 255, "", None, levels))
        target = folder / "tables" / "dense-s" / f"{split}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        OutcomeTable("dense-s", split, ladder, tuple(rows)).write(target)
    return folder


@pytest.fixture(scope="module")
def tab_artifact(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`thrifty train budgeter` on the relabelled quick world: B = 60 tokens per sub-question, which
    fits a hard turn's 64 only when the easy turns before it took 16."""
    folder = tmp_path_factory.mktemp("tab")
    relabelled = _relabelled_world(world, folder / "world")
    command = [
        *THRIFTY, "train", "budgeter", "--world", str(relabelled), "--out", str(folder / "job"),
        "--budget", "60/turn", "--lambda", "0.01", "--seeds", "0", "--steps", "80",
        "--problems-per-step", "16", "--group", "8", "--lr", "0.03", "--train-problems", "200", "--test-problems", "20",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    assert done.returncode == 0, f"thrifty train budgeter failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    policy = folder / "job" / "policy"
    manifest = json.loads((policy / "manifest.json").read_text())
    assert manifest["kind"] == "thrifty.tab_policy"
    for path, digest in manifest["files"].items():
        assert sha256(policy / path) == digest, path
    return policy


@pytest.fixture(scope="module")
def tab_llm_artifact(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The llm policy (SmolLM2 with a LoRA adapter) from the same job, at the smallest scale that runs
    every stage of it: GRPO steps, validation, the test split, the artifact."""
    from thrifty.server.bundled_model import model_dir

    folder = tmp_path_factory.mktemp("tab-llm")
    relabelled = _relabelled_world(world, folder / "world")
    command = [
        *THRIFTY, "train", "budgeter", "--world", str(relabelled), "--out", str(folder / "job"),
        "--policy", "llm", "--model-dir", str(model_dir(DATA_DIR)), "--budget", "60/turn", "--lambda", "0.01",
        "--seeds", "0", "--steps", "2", "--problems-per-step", "2", "--group", "2", "--lr", "1e-4",
        "--train-problems", "12", "--validation-problems", "4", "--test-problems", "4", "--eval-every", "1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800, check=False)
    assert done.returncode == 0, (
        f"thrifty train budgeter --policy llm failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    policy = folder / "job" / "policy"
    manifest = json.loads((policy / "manifest.json").read_text())
    assert manifest["kind"] == "thrifty.tab_policy"
    for path, digest in manifest["files"].items():
        assert sha256(policy / path) == digest, path
    assert any(path.startswith("adapter/") for path in manifest["files"]), "the LoRA adapter is part of the artifact"
    return policy


def _tab_config(world_config: dict[str, Any], artifact: Path) -> dict[str, Any]:
    """A gateway with the TAB budgeter, in front of the dense-s vLLM the world's gateway launched."""
    (launch,) = [b["launch"] for b in world_config["backends"] if b["name"] == "dense-s"]
    return {
        "data_dir": str(DATA_DIR),
        "backends": [
            {
                "name": "dense-s",
                "model": "dense-s",
                "url": f"http://127.0.0.1:{launch['port']}",
                "reasoning": True,
                "context_length": 4096,
            }
        ],
        "router": {"cheapest": {}},
        "budgeter": {"tab": {"artifact": str(artifact)}},
        "limits": {"answer_tokens": world_config["limits"]["answer_tokens"]},
    }


@pytest.fixture(scope="module")
def tab_gateway(
    world_config: dict[str, Any], gateway: str, tab_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from _serve(_tab_config(world_config, tab_artifact), tmp_path_factory.mktemp("tab-gateway"), timeout=300)


def test_tab_budgets_an_easy_and_a_hard_turn_apart_and_the_ledger_is_exact(tab_gateway: str) -> None:
    from thrifty.budgeter.tab.difficulty import estimate
    from thrifty.budgeter.world.chains import bucket

    assert bucket(estimate(EASY, {}).digit_steps) == "easy"
    assert bucket(estimate(HARD, {"x1": Decimal(42)}).digit_steps) == "hard"
    client = openai.OpenAI(base_url=f"{tab_gateway}/v1", api_key="unused", max_retries=0, timeout=120)
    messages: list[dict[str, str]] = [{"role": "user", "content": EASY}]
    budgets, completions = [], 0
    for turn, question in enumerate((EASY, HARD)):
        if turn:
            messages.append({"role": "user", "content": question})
        raw = client.chat.completions.with_raw_response.create(
            model="dense-s",
            messages=messages,  # type: ignore[arg-type]
            extra_headers={"X-Session-ID": "tab-1"},
            extra_body={"thrifty": {"budget": 120}} if turn == 0 else None,
        )
        assert raw.headers["x-thrifty-budget-policy"] == "tab:fast"
        budget = int(raw.headers["x-thrifty-thinking-budget"])
        response = raw.parse()
        assert response.usage is not None
        completions += response.usage.completion_tokens
        thinking = getattr(response.choices[0].message, "reasoning", None) or ""
        assert len(thinking.encode()) <= thinking_allowed(budget)
        budgets.append(budget)
        messages.append({"role": "assistant", "content": "x1 is 42"})  # the right history, as a client keeps it
    assert budgets == [16, 64]  # the easy turn leaves room in B = 120 for the hard one
    session = httpx.get(f"{tab_gateway}/v1/sessions/tab-1", timeout=10).json()
    assert session["budget"] == 120 and session["turn_count"] == 2
    assert session["spent"] == completions == sum(t["completion_tokens"] for t in session["turns"])
    for turn, budget in zip(session["turns"], budgets, strict=True):
        assert turn["thinking_budget"] == budget
        decision = turn["budgeting"]
        assert decision["policy"] == "tab:fast" and set(decision["distribution"]) == {"16", "64"}
        assert max(decision["distribution"], key=decision["distribution"].get) == str(budget)


@pytest.fixture(scope="module")
def tab_llm_gateway(
    world_config: dict[str, Any], gateway: str, tab_llm_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    config = _tab_config(world_config, tab_llm_artifact)
    yield from _serve(config, tmp_path_factory.mktemp("tab-llm-gateway"), timeout=600)


def test_an_llm_tab_policy_is_served_from_its_job_artifact(tab_llm_gateway: str, tab_llm_artifact: Path) -> None:
    """The job's llm artifact behind the gateway: SmolLM2 and its adapter decide in process."""
    ladder = json.loads((tab_llm_artifact / "policy.json").read_text())["ladder"]
    status = httpx.get(f"{tab_llm_gateway}/admin/budgeter", timeout=30).json()
    assert '"policy": "llm"' in json.dumps(status), status
    client = openai.OpenAI(base_url=f"{tab_llm_gateway}/v1", api_key="unused", max_retries=0, timeout=300)
    raw = client.chat.completions.with_raw_response.create(
        model="dense-s",
        messages=[{"role": "user", "content": EASY}],
        extra_headers={"X-Session-ID": "tab-llm-1"},
        extra_body={"thrifty": {"budget": 120}},
    )
    assert raw.headers["x-thrifty-budget-policy"] == "tab:llm"
    budget = int(raw.headers["x-thrifty-thinking-budget"])
    assert budget in ladder and budget <= 120
    (turn,) = httpx.get(f"{tab_llm_gateway}/v1/sessions/tab-llm-1", timeout=10).json()["turns"]
    decision = turn["budgeting"]
    assert decision["policy"] == "tab:llm" and turn["thinking_budget"] == budget
    shares = decision["distribution"]
    assert set(shares) == {str(level) for level in ladder}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert max(shares, key=shares.get) == str(budget)
