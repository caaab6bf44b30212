"""MELINOE on the reasoning world's MoE solvers: base against tuned, on held-out problems.

For each solver (moe-s: 8 experts, top-2; moe-f: 64 experts, top-8), with settings from ``melinoe.yaml``:

1. ``thrifty train melinoe`` (the job, through its Python entry point), and the ablation that keeps the
   model's load-balancing loss;
2. routing recorded while base, tuned and ablation greedily decode every turn of the first
   ``--trace-problems`` test problems (gold history, thinking not limited, up to ``--max-new-tokens``);
3. on those traces: distinct experts per sequence and layer; decode hit rate at C = E/8, E/4, E/2 under
   lru, lfru, decay, oracle-pinned and predicted (the base model gets a predictor fitted on its own
   decoding the same way); bytes moved per token at the expert size of a real model of the same shape
   (Mixtral-8x7B for 8/top-2, OLMoE-1B-7B for 64/top-8, bfloat16); the 1/(1 − h) bound; the predictor's
   precision and recall;
4. turn accuracy at every thinking budget: the tuned model's outcome table measured through vLLM exactly
   as the world measured the base model's (``budgeter.world.outcomes.measure_table``);
5. vLLM serving the tuned model through the expert-cache plugin (predicted, C = E/4) against plain vLLM:
   the same greedy answers, and the hit rate the plugin counted live;
6. decode time through ``moe_runtime`` replaying the tuned (and base) test routing at the real model's
   expert size (``run.py``'s interleaved, repeated replay), against ``none`` and the 1/(1 − h) bound.

Everything is kept under ``--work`` and reused by a rerun; the tables, plots and ``results.json`` go to
``--out``.

    .venv/bin/python benchmarks/moe/melinoe.py --world data/world --work data/melinoe-bench \
        --out benchmarks/moe/melinoe
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as replay_bench  # noqa: E402 - the replay benchmark beside this file

from thrifty.budgeter.world.build import read_chains  # noqa: E402
from thrifty.budgeter.world.chat_format import build_tokenizer, messages_for, render_prompt  # noqa: E402
from thrifty.budgeter.world.outcomes import OutcomeTable  # noqa: E402
from thrifty.budgeter.world.solvers import load_specs  # noqa: E402
from thrifty.moe_runtime import CacheConfig  # noqa: E402
from thrifty.moe_runtime.melinoe.job import MelinoeJobOptions, run_job  # noqa: E402
from thrifty.moe_runtime.melinoe.predictor import FILE as PREDICTOR_FILE  # noqa: E402
from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor  # noqa: E402
from thrifty.moe_runtime.melinoe.tuning import TuningSettings  # noqa: E402
from thrifty.moe_runtime.simulate import choose_pin_share, distinct_per_layer, replay  # noqa: E402
from thrifty.moe_runtime.traces import RoutingTrace  # noqa: E402
from thrifty.server.kit.artifacts import sha256  # noqa: E402

logger = logging.getLogger("melinoe-bench")

POLICIES = ("lru", "lfru", "decay", "pinned", "predicted")
PIN_ALL = "predicted, all C pinned"  # the predicted policy with pin_share 1, beside the share the job chose
FRACTIONS = (0.125, 0.25, 0.5)
REAL_SHAPES = {(8, 2): "mixtral-8x7b", (64, 8): "olmoe-1b-7b"}  # (E, k) → the preset of a real model's experts
VARIANTS = {"tuned": {}, "balance": {"load_balance": True}}  # the fine-tunes: as configured, and the ablation


def settings_for(solver: str, config: dict[str, Any], **override: Any) -> TuningSettings:
    return TuningSettings(**(config["defaults"] | config["solvers"][solver] | override))


def fine_tune(args: argparse.Namespace, solver: str, variant: str, config: dict[str, Any]) -> Path:
    out = args.work / solver / f"job-{variant}"
    options = MelinoeJobOptions(
        model=args.world / "solvers" / solver,
        data=args.world,
        out=out,
        tuning=settings_for(solver, config, **VARIANTS[variant]),
        **config["job"],
    )
    run_job(options)
    return out


def test_prompts(world: Path, problems: int) -> list[list[int]]:
    tokenizer = build_tokenizer()
    chains = read_chains(world / "data" / "test.jsonl")[:problems]
    return [
        list(tokenizer(render_prompt(messages_for(chain, turn)), add_special_tokens=False)["input_ids"])
        for chain in chains
        for turn in range(len(chain.steps))
    ]


def test_trace(args: argparse.Namespace, model_dir: Path, path: Path) -> RoutingTrace:
    if path.is_file():
        return RoutingTrace.load(path)
    from transformers import AutoModelForCausalLM

    from thrifty.moe_runtime.melinoe.routing import record_generations

    prompts = test_prompts(args.world, args.trace_problems)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    with tqdm(total=len(prompts), desc=f"routing of {model_dir.name} on test turns") as bar:
        trace = record_generations(
            model, prompts, max_new_tokens=args.max_new_tokens, eos_token_id=eos if isinstance(eos, int) else None,
            progress=bar,
        )  # fmt: skip
    trace.source |= {"model": str(model_dir), "problems": args.trace_problems}
    path.parent.mkdir(parents=True, exist_ok=True)
    trace.save(path)
    return trace


def hit_rates(trace: RoutingTrace, predictor: ExpertPredictor, expert_bytes: int) -> dict[str, Any]:
    """Every policy at every C, counted by replaying the trace (no computation)."""
    layers = [predictor.layer(i) for i in range(predictor.layers)]
    table: dict[str, Any] = {}
    for fraction in FRACTIONS:
        slots = max(1, round(trace.experts * fraction))
        row = {}
        for policy in (*POLICIES, PIN_ALL):
            predicted = policy in ("predicted", PIN_ALL)
            config = CacheConfig(
                slots=slots, policy="predicted" if predicted else policy, predictor="in memory" if predicted else None,
                pin_share=1.0 if policy == PIN_ALL else None,
            )  # fmt: skip
            result = replay(trace, config, layers if predicted else None)
            row[policy] = {
                "hit_rate": result.hit_rate,
                "bound": result.bound,
                "mb_per_token": result.bytes_per_token(expert_bytes) / 1e6,
            }
        quality = predictor.quality(trace.sequences, slots)
        row["predictor"] = {"precision": quality.precision, "recall": quality.recall, "set_recall": quality.set_recall}
        table[str(slots)] = row
    return table


def expert_bytes_of(experts: int, top_k: int) -> tuple[str, int]:
    preset = REAL_SHAPES[(experts, top_k)]
    dims = replay_bench.PRESETS[preset]
    return preset, 3 * dims["hidden"] * dims["intermediate"] * 2  # gate, up, down in bfloat16


def accuracy(table: OutcomeTable, problems: set[str]) -> dict[str, float]:
    rows = [r for r in table.rows if r.problem in problems]
    by_budget = {}
    for budget in (0, *table.ladder, None):
        key = "none" if budget is None else str(budget)
        by_budget[key] = sum(r.outcome(budget).correct for r in rows) / len(rows)
    return by_budget


def measure_tuned_table(args: argparse.Namespace, solver: str, model_dir: Path, path: Path) -> OutcomeTable:
    if path.is_file():
        return OutcomeTable.read(path)
    from thrifty.budgeter.world.evaluate import serving
    from thrifty.budgeter.world.outcomes import measure_table

    spec = load_specs().solvers[solver]
    base = OutcomeTable.read(args.world / "tables" / solver / "test.jsonl")
    wanted = list(base.problems())[: args.table_problems]
    chains = [c for c in read_chains(args.world / "data" / "test.jsonl") if c.id in set(wanted)]
    unlimited = json.loads((args.world / "manifest.json").read_text())["environment"]["unlimited_thinking"]
    with serving({solver: (model_dir, spec)}, path.parent) as servers:
        server = servers[solver]
        server.wait_ready()
        table = asyncio.run(measure_table(server.base_url, spec, chains, base.ladder, "test", unlimited=unlimited))
    table.write(path)
    return table


def vllm_check(args: argparse.Namespace, solver: str, artifact: Path, slots: int, path: Path) -> dict[str, Any]:
    """The tuned model through the plugin (predicted, C) against plain vLLM: same greedy answers? Kept in
    ``path`` for the same model, predictor and C."""
    key = {"model": sha256(artifact / "model" / "model.safetensors"), "predictor": sha256(artifact / PREDICTOR_FILE)}
    key |= {"slots": slots, "prompts": args.check_prompts}
    if path.is_file():
        kept = dict(json.loads(path.read_text()))
        if kept.get("key") == key:
            return kept
    import httpx

    from thrifty.server.kit.vllm import VllmLaunch, VllmServer, free_port, vllm_python

    chains = read_chains(args.world / "data" / "test.jsonl")[: args.check_prompts]
    prompts = [chain.steps[0].prompt for chain in chains]
    config = CacheConfig(slots=slots, policy="predicted", predictor=str(artifact.resolve()))
    metrics = path.parent / "check-metrics"
    common: dict[str, Any] = {
        "model": artifact / "model", "served_name": solver, "python": vllm_python(), "reasoning_parser": "thrifty_r1",
        "dtype": "float32", "max_model_len": 4096, "startup_timeout_s": 900,
    }  # fmt: skip
    plain = VllmServer(VllmLaunch(name="plain", port=free_port(), **common), path.parent / "logs" / "plain.log")
    cached = VllmServer(
        VllmLaunch(
            name="cached", port=free_port(), enforce_eager=True, env=config.to_env(), metrics_dir=metrics, **common
        ),
        path.parent / "logs" / "cached.log",
    )

    def answers(server: VllmServer) -> list[str]:
        out = []
        with httpx.Client(base_url=server.base_url, timeout=600) as client:
            for prompt in prompts:
                body = {"model": solver, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                        "max_tokens": args.max_new_tokens}  # fmt: skip
                message = client.post("/v1/chat/completions", json=body).raise_for_status().json()["choices"][0]
                out.append(json.dumps(message["message"], sort_keys=True))
        return out

    try:
        plain.start()
        cached.start()
        plain.wait_ready()
        cached.wait_ready()
        expected, got = answers(plain), answers(cached)
        text = httpx.get(f"{cached.base_url}/metrics", timeout=30).text
    finally:
        plain.stop()
        cached.stop()
    totals: dict[str, float] = {}
    for name, value in re.findall(r"^(thrifty_moe_cache_\w+_total)\{[^}]*\} (\S+)$", text, re.MULTILINE):
        totals[name] = totals.get(name, 0.0) + float(value)
    hits, misses = totals.get("thrifty_moe_cache_hits_total", 0.0), totals.get("thrifty_moe_cache_misses_total", 0.0)
    record = {
        "key": key,
        "prompts": len(prompts),
        "identical": sum(a == b for a, b in zip(expected, got, strict=True)),
        "slots": slots,
        "live_hit_rate": hits / (hits + misses) if hits + misses else None,
        "counters": totals,
    }
    path.write_text(json.dumps(record, indent=1))
    return record


def throughput(
    args: argparse.Namespace, name: str, trace: RoutingTrace, predictor: ExpertPredictor, inputs: list[Path], path: Path
) -> list[replay_bench.Row]:
    """The replay benchmark's table for ``trace``, kept in ``path`` for the same settings and ``inputs`` (the
    files the trace and the predictor came from)."""
    key = {
        "sequences": args.throughput_sequences, "tokens": args.throughput_tokens, "repeats": args.repeats,
        "device": args.device, "inputs": [sha256(p) for p in inputs], "pin_share": predictor.pin_share,
    }  # fmt: skip
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept["key"] == key:
            return [replay_bench.Row(**row) for row in kept["rows"]]
    rows = measure_throughput(args, name, trace, predictor)
    path.write_text(json.dumps({"key": key, "rows": [asdict(r) for r in rows]}, indent=1))
    return rows


def measure_throughput(
    args: argparse.Namespace, name: str, trace: RoutingTrace, predictor: ExpertPredictor
) -> list[replay_bench.Row]:
    preset = REAL_SHAPES[(trace.experts, trace.top_k)]
    short = [s for s in trace.sequences if s.ids.shape[0] > s.prefill][: args.throughput_sequences]
    short = [type(s)(s.ids[: s.prefill + args.throughput_tokens], s.prefill) for s in short]
    subset = RoutingTrace(trace.experts, trace.top_k, trace.layers, short, trace.source)
    options = argparse.Namespace(
        policies=["none", "lru", "lfru", "decay", "pinned", "predicted"], slot_fractions=[0.25, 1.0],
        gamma=0.9, repeats=args.repeats, seed=0, device=args.device, dtype="bfloat16",
    )  # fmt: skip
    return replay_bench.run_table(name, subset, preset, options, predictor)


def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solvers = list(results["solvers"])
    fig, axes = plt.subplots(1, len(solvers), figsize=(5.5 * len(solvers), 4.2), squeeze=False)
    for ax, solver in zip(axes[0], solvers, strict=True):
        hits = results["solvers"][solver]["hit_rates"]
        for policy, colour in zip(POLICIES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
            for variant, style in (("base", "--"), ("tuned", "-")):
                table = hits[variant]
                slots = sorted(int(c) for c in table)
                ys = [table[str(c)][policy]["hit_rate"] for c in slots]
                ax.plot(slots, ys, style, marker="o", color=colour, label=f"{policy} ({variant})")
        ax.set_title(f"{solver}: decode hit rate on test turns (dashed: base)", fontsize=9)
        ax.set_xlabel("slots per layer (C)")
        ax.set_ylabel("hit rate")
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "hit_rates.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(solvers), figsize=(5.5 * len(solvers), 6.5), squeeze=False, sharex="col")
    for col, solver in enumerate(solvers):
        ax, gap = axes[0][col], axes[1][col]
        acc = results["solvers"][solver]["accuracy"]
        for variant in acc:
            budgets = list(acc[variant])
            ax.plot(range(len(budgets)), [acc[variant][b] for b in budgets], marker="o", label=variant)
            if variant != "base":
                points = [100 * (acc[variant][b] - acc["base"][b]) for b in budgets]
                gap.plot(range(len(budgets)), points, marker="o", label=f"{variant} − base")
            gap.set_xticks(range(len(budgets)), budgets)
        gap.axhspan(-1, 1, color="0.9", label="±1 point")
        gap.axhline(0, color="0.5", linewidth=0.8)
        ax.set_title(f"{solver}: turn accuracy by thinking budget", fontsize=9)
        ax.set_ylabel("turn accuracy")
        ax.legend(fontsize=8)
        gap.set_xlabel("thinking budget (tokens)")
        gap.set_ylabel("difference (points)")
        gap.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for solver in solvers:
        for variant, history in results["solvers"][solver]["history"].items():
            steps = [h["step"] for h in history]
            for ax, key in zip(axes, ("nll", "cache", "rank"), strict=True):
                ax.plot(steps, [h[key] for h in history], label=f"{solver} {variant}")
    titles = ("NLL per token", "L_cs: expected misses per token", "L_rm (a sum over expert pairs; log scale)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--work", type=Path, default=Path("data/melinoe-bench"))
    parser.add_argument("--out", type=Path, default=HERE / "melinoe")
    parser.add_argument("--solvers", nargs="+", default=["moe-s", "moe-f"])
    parser.add_argument("--config", type=Path, default=HERE / "melinoe.yaml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--table-variants", nargs="+", default=["tuned"], choices=list(VARIANTS), help="fine-tunes whose accuracy "
        "is measured through vLLM (each costs a table)"
    )  # fmt: skip
    parser.add_argument("--trace-problems", type=int, default=60, help="test problems whose turns are recorded")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--table-problems", type=int, default=200, help="test problems in the accuracy comparison")
    parser.add_argument("--check-prompts", type=int, default=20, help="prompts of the vLLM plugin check")
    parser.add_argument("--throughput-sequences", type=int, default=3)
    parser.add_argument("--throughput-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tables", "vllm", "throughput"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = yaml.safe_load(args.config.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {"solvers": {}, "settings": {k: str(v) for k, v in vars(args).items()}, "config": config}
    rows: list[replay_bench.Row] = []
    for solver in args.solvers:
        record: dict[str, Any] = {"hit_rates": {}, "distinct": {}, "accuracy": {}, "history": {}, "jobs": {}}
        variants = [v for v in args.variants if v == "tuned" or solver in config.get("ablation", args.solvers)]
        jobs = {variant: fine_tune(args, solver, variant, config) for variant in variants}
        base_dir = args.world / "solvers" / solver
        trace_path = {v: args.work / solver / "traces" / f"{v}.test.trace.safetensors" for v in ("base", *jobs)}
        traces = {"base": test_trace(args, base_dir, trace_path["base"])}
        fit_path = jobs["tuned"] / "traces" / "base.fit.trace.safetensors"
        fit = RoutingTrace.load(fit_path)
        base_predictor = ExpertPredictor.fit(fit.sequences, experts=fit.experts, top_k=fit.top_k)
        # the share of C to pin, chosen as the job chooses the tuned model's: on the held-out prompts' routing
        share, _ = choose_pin_share(
            RoutingTrace.load(jobs["tuned"] / "traces" / "base.validation.trace.safetensors"),
            [base_predictor.layer(i) for i in range(base_predictor.layers)],
            settings_for(solver, config).slots,
        )
        predictors = {"base": replace(base_predictor, pin_share=share)}
        predictor_source = {"base": fit_path}
        for variant, job in jobs.items():
            artifact = job / "artifact"
            traces[variant] = test_trace(args, artifact / "model", trace_path[variant])
            predictors[variant] = ExpertPredictor.load(artifact)
            predictor_source[variant] = artifact / PREDICTOR_FILE
            record["history"][variant] = json.loads((artifact / "history.json").read_text())
            record["jobs"][variant] = json.loads((artifact / "manifest.json").read_text())["metrics"]
        record["pin_share"] = {variant: predictor.pin_share for variant, predictor in predictors.items()}
        preset, expert_bytes = expert_bytes_of(traces["base"].experts, traces["base"].top_k)
        record["real_expert"] = {"preset": preset, "bytes": expert_bytes}
        for variant, trace in traces.items():
            record["distinct"][variant] = {
                "sequence": distinct_per_layer(trace),
                "decoding": distinct_per_layer(trace, decode_only=True),
            }
            record["hit_rates"][variant] = hit_rates(trace, predictors[variant], expert_bytes)
        slots = settings_for(solver, config).slots
        if "tables" not in args.skip:
            base_table = OutcomeTable.read(args.world / "tables" / solver / "test.jsonl")
            tuned_tables = {
                variant: measure_tuned_table(
                    args,
                    solver,
                    jobs[variant] / "artifact" / "model",
                    args.work / solver / "tables" / f"{variant}.jsonl",
                )
                for variant in args.table_variants
                if variant in jobs
            }
            problems = set(tuned_tables["tuned"].problems())
            record["accuracy"]["base"] = accuracy(base_table, problems)
            for variant, table in tuned_tables.items():
                record["accuracy"][variant] = accuracy(table, problems)
            record["table_problems"] = len(problems)
        if "vllm" not in args.skip:
            record["vllm"] = vllm_check(
                args, solver, jobs["tuned"] / "artifact", slots, args.work / solver / "vllm.json"
            )
        if "throughput" not in args.skip:
            for variant in ("base", "tuned"):
                rows += throughput(
                    args, f"{solver} {variant} (test routing)", traces[variant], predictors[variant],
                    [trace_path[variant], predictor_source[variant]], args.work / solver / f"throughput-{variant}.json",
                )  # fmt: skip
        results["solvers"][solver] = record
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    results["throughput"] = [asdict(r) for r in rows]
    results["throughput_header"] = replay_bench.device_header(
        argparse.Namespace(device=args.device, dtype="bfloat16", repeats=args.repeats)
    )
    results["seconds"] = round(time.monotonic() - started)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (args.out / "tables.md").write_text(tables(results, rows))
    plots(results, args.out)
    print(tables(results, rows))


def tables(results: dict[str, Any], rows: list[replay_bench.Row]) -> str:
    lines = []
    for solver, record in results["solvers"].items():
        lines.append(f"\n## {solver}\n")
        lines.append("| model | distinct experts / sequence / layer | while decoding |")
        lines.append("|---|---|---|")
        for variant, d in record["distinct"].items():
            lines.append(f"| {variant} | {d['sequence']:.2f} | {d['decoding']:.2f} |")
        shares = ", ".join(f"{variant} {share:g}" for variant, share in record["pin_share"].items())
        lines.append(f"\npredicted pins this share of its C experts (chosen on validation routing): {shares}")
        for slots in record["hit_rates"]["base"]:
            lines.append(f"\nC = {slots} ({record['real_expert']['preset']} experts for MB/token)\n")
            shown = (*POLICIES, PIN_ALL)
            lines.append("| model | " + " | ".join(shown) + " | predictor P / R |")
            lines.append("|---|" + "---|" * (len(shown) + 1))
            for variant, table in record["hit_rates"].items():
                row = table[slots]
                cells = [
                    f"{row[p]['hit_rate']:.3f} (≤{row[p]['bound']:.2f}×, {row[p]['mb_per_token']:.0f} MB)"
                    for p in shown
                ]
                q = row["predictor"]
                lines.append(f"| {variant} | " + " | ".join(cells) + f" | {q['precision']:.3f} / {q['recall']:.3f} |")
        if record["accuracy"]:
            budgets = list(record["accuracy"]["base"])
            lines.append(f"\nturn accuracy, {record['table_problems']} test problems\n")
            lines.append("| model | " + " | ".join(budgets) + " |")
            lines.append("|---|" + "---|" * len(budgets))
            for variant, acc in record["accuracy"].items():
                lines.append(f"| {variant} | " + " | ".join(f"{acc[b]:.3f}" for b in budgets) + " |")
        if "vllm" in record:
            v = record["vllm"]
            lines.append(
                f"\nvLLM with the plugin (predicted, C = {v['slots']}): {v['identical']}/{v['prompts']} answers "
                f"identical to plain vLLM; live hit rate {v['live_hit_rate']:.3f}"
            )
    if rows:
        lines.append(f"\n## Decode time through moe_runtime\n\n{results.get('throughput_header', '')}")
        for key in dict.fromkeys((r.trace, r.preset) for r in rows):
            lines.append(replay_bench.print_table([r for r in rows if (r.trace, r.preset) == key]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
