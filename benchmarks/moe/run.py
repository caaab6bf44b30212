"""Expert-cache benchmark: decode time per token, hit rate and bytes moved against C, for every policy.

Routing traces are replayed through MoE layers of a preset's dimensions (random weights; the trace, not
the weights, decides which experts run): one forward pass for the prompt, then one per generated token,
each through ``ExpertCache`` + the cached expert computation the runtime serves with. Time is measured
over the generated tokens only. Next to it, the transfer floor for the hit rate achieved:

    t_token ≥ Σ_layers (1 − h) · A · S / BW      (A experts a token touches per layer, S bytes per expert)

with BW the host→device bandwidth measured the way the cache copies, one expert at a time (pinned
memory on CUDA; on CPU, a host copy). Every (policy, C) of a table runs ``--repeats`` rounds, in a new
random order each round, so that a busy moment of a shared machine lands on all configurations alike;
the tables give the median and the min–max, and each speed-up over ``none`` is a ratio within one
round, next to the 1/(1 − h) bound for the hit rate reached.

    .venv/bin/python benchmarks/moe/run.py --record-world data/world/solvers/moe-s --out benchmarks/moe
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from thrifty.moe_runtime import POLICY_NAMES, CacheConfig, CacheStats, ExpertCache, cached_experts_forward
from thrifty.moe_runtime.melinoe.predictor import ExpertPredictor
from thrifty.moe_runtime.simulate import oracle_sets
from thrifty.moe_runtime.traces import RoutingTrace, from_recording, synthetic

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PRESETS: dict[str, dict[str, int]] = yaml.safe_load((HERE / "presets.yaml").read_text())


@dataclass(slots=True)
class Row:
    trace: str
    preset: str
    policy: str
    slots: int
    ms_per_token: float  # median over repeats
    ms_min: float
    ms_max: float
    tokens_per_s: float
    hit_rate: float
    mb_per_token: float
    stall_ms_per_token: float
    floor_ms_per_token: float
    speedup: float  # over `none` at the same C, median over repeats of the same round's ratio
    speedup_min: float
    speedup_max: float
    bound: float  # 1 / (1 − h): the most a hit rate h can buy when transfers are all the time there is

    @property
    def over_floor(self) -> float:
        return self.ms_per_token / self.floor_ms_per_token if self.floor_ms_per_token > 0 else float("nan")


def measure_bandwidth(device: torch.device, expert_shapes: list[tuple[int, ...]], dtype: torch.dtype) -> float:
    """Bytes per second host → ``device`` as the cache moves them: one expert's tensors at a time into a
    device slot, cycling through more experts than any CPU cache holds (pinned source on CUDA); best of 3."""
    expert_bytes = sum(math.prod(shape) for shape in expert_shapes) * torch.tensor([], dtype=dtype).element_size()
    count = max(2, min(64, (1 << 30) // max(expert_bytes, 1)))  # about 1 GiB of experts, at least two
    host = [torch.rand(count, *shape).to(dtype) for shape in expert_shapes]  # written: real pages
    if device.type == "cuda":
        host = [t.pin_memory() for t in host]
    slots = [torch.empty(shape, dtype=dtype, device=device) for shape in expert_shapes]
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        for e in range(count):
            for slot, source in zip(slots, host, strict=True):
                slot.copy_(source[e], non_blocking=True)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return count * expert_bytes / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record_world_trace(model_dir: Path, test_file: Path, sequences: int, new_tokens: int) -> RoutingTrace:
    """Greedy generations of the world's MoE solver on its held-out problems' first turns, routing recorded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thrifty.moe_runtime.hf import convert

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    experts = model.config.num_experts
    cached = convert(model, CacheConfig(slots=experts))
    chains = [json.loads(line) for line in test_file.read_text().splitlines()[:sequences]]
    out = []
    for chain in tqdm(chains, desc="recording routing", unit="seq"):
        messages = [{"role": "user", "content": chain["steps"][0]["prompt"]}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with cached.record() as passes, torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        out.append(from_recording(passes))
    source = {"kind": "recorded", "model": str(model_dir), "problems": str(test_file), "new_tokens": new_tokens}
    return RoutingTrace(experts, model.config.num_experts_per_tok, len(cached.layers), out, source)


def replay(
    trace: RoutingTrace,
    dims: dict[str, int],
    config: CacheConfig,
    device: torch.device,
    dtype: torch.dtype,
    weights: list[dict[str, torch.Tensor]],
    predictor: ExpertPredictor | None = None,
) -> tuple[float, CacheStats]:
    """Seconds spent on generated tokens, and the caches' counters over those tokens."""
    shares = [predictor.layer(i) for i in range(trace.layers)] if config.policy == "predicted" and predictor else None
    if config.policy == "predicted" and shares is None:
        raise ValueError(f"the predicted policy needs a predictor for trace of {trace.experts} experts")
    caches = [
        ExpertCache(w, config, device, name=f"layer{i}", predictor=shares[i] if shares else None)
        for i, w in enumerate(weights)
    ]
    hidden = dims["hidden"]
    x_prompt = torch.randn(max(s.prefill for s in trace.sequences), hidden, dtype=dtype, device=device)
    x_token = torch.randn(1, hidden, dtype=dtype, device=device)
    gates = torch.full((x_prompt.shape[0], trace.top_k), 1.0 / trace.top_k, dtype=dtype, device=device)
    elapsed = 0.0
    decode = CacheStats()
    for seq in trace.sequences:
        if config.policy == "pinned":  # an oracle for the predictor: the C experts the sequence's decoding uses most
            for cache, experts in zip(caches, oracle_sets(seq, caches[0].capacity), strict=True):
                cache.pin(experts)
        passes = seq.passes()
        for layer, cache in enumerate(caches):
            ids = passes[0][:, layer].to(device=device, dtype=torch.long)
            cached_experts_forward(cache, x_prompt[: ids.shape[0]], ids, gates[: ids.shape[0]])
        before = [replace(c.stats) for c in caches]
        _sync(device)
        start = time.perf_counter()
        for step in passes[1:]:
            ids_all = step.to(device=device, dtype=torch.long)
            for layer, cache in enumerate(caches):
                cached_experts_forward(cache, x_token, ids_all[:, layer], gates[:1])
        _sync(device)
        elapsed += time.perf_counter() - start
        for cache, old in zip(caches, before, strict=True):
            decode.add(_minus(cache.stats, old))
    return elapsed, decode


def _minus(a: CacheStats, b: CacheStats) -> CacheStats:
    return CacheStats(**{k: getattr(a, k) - getattr(b, k) for k in asdict(a)})


def layer_weights(dims: dict[str, int], layers: int, dtype: torch.dtype, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    e, h, i = dims["experts"], dims["hidden"], dims["intermediate"]
    scale = h**-0.5
    return [
        {
            "gate_up": (torch.randn(e, 2 * i, h, generator=g) * scale).to(dtype),
            "down": (torch.randn(e, h, i, generator=g) * scale).to(dtype),
        }
        for _ in range(layers)
    ]


def run_table(
    name: str,
    trace: RoutingTrace,
    preset: str,
    args: argparse.Namespace,
    predictor: ExpertPredictor | None = None,
) -> list[Row]:
    """Every (policy, C) of the table, ``args.repeats`` rounds, each round in a new random order (configurations
    interleaved, so a slow moment of a shared machine is spread over all of them); medians and spreads."""
    dims = PRESETS[preset]
    if (dims["experts"], dims["top_k"]) != (trace.experts, trace.top_k):
        raise SystemExit(f"trace {name} has E={trace.experts}, k={trace.top_k}; preset {preset} needs {dims}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    weights = layer_weights(dims, trace.layers, dtype, seed=0)
    expert_bytes = sum(t[0].numel() * t.element_size() for t in weights[0].values())
    bandwidth = measure_bandwidth(device, [tuple(t.shape[1:]) for t in weights[0].values()], dtype)
    slots = sorted({max(1, round(dims["experts"] * f)) for f in args.slot_fractions})
    policies = [p for p in args.policies if p != "predicted" or predictor is not None]
    configs = [(policy, c) for policy in policies for c in slots]
    if not any(p == "none" for p, _ in configs):
        configs += [("none", c) for c in slots]  # the baseline every speed-up is measured against
    tokens = trace.decode_tokens()
    warm = RoutingTrace(trace.experts, trace.top_k, trace.layers, trace.sequences[:2], trace.source)
    replay(warm, dims, CacheConfig(slots=slots[0], policy="lru"), device, dtype, weights)  # allocator, kernels
    times: dict[tuple[str, int], list[float]] = {config: [] for config in configs}
    stats: dict[tuple[str, int], CacheStats] = {}
    order = random.Random(args.seed)
    bar = tqdm(total=len(configs) * args.repeats, desc=f"{name} × {preset}", unit="run")
    for _ in range(args.repeats):
        for policy, c in order.sample(configs, len(configs)):
            config = CacheConfig(
                slots=c, policy=policy, gamma=args.gamma, predictor="in memory" if policy == "predicted" else None
            )
            seconds, counted = replay(trace, dims, config, device, dtype, weights, predictor)
            times[(policy, c)].append(seconds)
            stats[(policy, c)] = counted  # the counters repeat exactly; the times do not
            bar.update(1)
    bar.close()
    rows = []
    for policy, c in configs:
        if policy not in args.policies:
            continue
        counted = stats[(policy, c)]
        ms = [1e3 * t / tokens for t in times[(policy, c)]]
        ratios = [n / t for n, t in zip(times[("none", c)], times[(policy, c)], strict=True)]
        touched = (counted.hits + counted.misses) / tokens  # experts per token, all layers
        floor = (1 - counted.hit_rate) * touched * expert_bytes / bandwidth
        misses = 1.0 - counted.hit_rate
        rows.append(
            Row(
                trace=name,
                preset=preset,
                policy=policy,
                slots=c,
                ms_per_token=statistics.median(ms),
                ms_min=min(ms),
                ms_max=max(ms),
                tokens_per_s=1e3 / statistics.median(ms),
                hit_rate=counted.hit_rate,
                mb_per_token=counted.bytes_moved / tokens / 1e6,
                stall_ms_per_token=1e3 * counted.stall_seconds / tokens,
                floor_ms_per_token=1e3 * floor,
                speedup=statistics.median(ratios),
                speedup_min=min(ratios),
                speedup_max=max(ratios),
                bound=1.0 / misses if misses > 0 else float("inf"),
            )
        )
    logger.info("%s × %s: bandwidth %.2f GB/s", name, preset, bandwidth / 1e9)
    return rows


def print_table(rows: list[Row], header: str = "") -> str:
    lines = [
        f"\n{rows[0].trace} through {rows[0].preset}" + (f" ({header})" if header else ""),
        "| policy | C | ms/token (min–max) | tokens/s | hit rate | MB moved/token | floor ms/token | measured/floor "
        "| speed-up over none (min–max) | bound 1/(1−h) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.policy} | {r.slots} | {r.ms_per_token:.3f} ({r.ms_min:.3f}–{r.ms_max:.3f}) | {r.tokens_per_s:.1f} | "
            f"{r.hit_rate:.3f} | {r.mb_per_token:.3f} | {r.floor_ms_per_token:.3f} | {r.over_floor:.2f} | "
            f"{r.speedup:.2f}× ({r.speedup_min:.2f}–{r.speedup_max:.2f}) | {r.bound:.2f}× |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def plot(rows: list[Row], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = sorted({(r.trace, r.preset) for r in rows})
    fig, axes = plt.subplots(2, len(tables), figsize=(4.2 * len(tables), 7), squeeze=False)
    for col, (trace, preset) in enumerate(tables):
        for policy in POLICY_NAMES:
            sel = [r for r in rows if (r.trace, r.preset, r.policy) == (trace, preset, policy)]
            if not sel:
                continue
            x = [r.slots for r in sel]
            line = axes[0][col].errorbar(
                x,
                [r.speedup for r in sel],
                yerr=[[r.speedup - r.speedup_min for r in sel], [r.speedup_max - r.speedup for r in sel]],
                marker="o",
                capsize=2,
                label=policy,
            )
            axes[1][col].plot(x, [r.hit_rate for r in sel], marker="o", color=line[0].get_color(), label=policy)
        axes[0][col].set_title(f"{trace}\n{preset}", fontsize=9)
        axes[0][col].set_ylabel("decode speed-up over none (median, min–max)")
        axes[1][col].set_ylabel("hit rate")
        axes[1][col].set_xlabel("slots per layer (C)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def device_header(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return (
        f"device: {device} ({name}), {torch.get_num_threads()} threads, dtype {args.dtype}; {args.repeats} rounds, "
        "configurations in a new random order each round; bandwidth measured per table, expert by expert"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The replay options shared with ``melinoe.py``."""
    parser.add_argument("--policies", nargs="+", default=list(POLICY_NAMES))
    parser.add_argument("--slot-fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every configuration")
    parser.add_argument("--seed", type=int, default=0, help="seeds the order of the configurations in each round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record-world", type=Path, help="the world's MoE solver folder: record its routing")
    parser.add_argument("--world-problems", type=Path, help="held-out problems (default: <world>/data/test.jsonl)")
    parser.add_argument(
        "--trace", action="append", default=[], help="a saved trace to replay, as PATH or PATH=PREDICTOR (a MELINOE "
        "artifact or predictor file, for the predicted policy)"
    )  # fmt: skip
    parser.add_argument("--sequences", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--synthetic", type=float, nargs="*", default=[0.5, 0.9], help="localities to synthesise")
    parser.add_argument("--presets", nargs="+", default=["world-moe-s", "mixtral-quarter", "olmoe-1b-7b"])
    add_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    traces: dict[str, tuple[RoutingTrace, ExpertPredictor | None]] = {}
    if args.record_world:
        problems = args.world_problems or args.record_world.parents[1] / "data" / "test.jsonl"
        trace = record_world_trace(args.record_world, problems, args.sequences, args.new_tokens)
        trace.save(args.out / "world-moe-s.trace.safetensors")
        traces["world moe-s (recorded)"] = (trace, None)
    for spec in args.trace:
        path, _, predictor = spec.partition("=")
        name = Path(path).name.removesuffix(".trace.safetensors")
        traces[name] = (RoutingTrace.load(Path(path)), ExpertPredictor.load(Path(predictor)) if predictor else None)

    header = device_header(args)
    print(header, flush=True)
    rows: list[Row] = []
    texts = [header]
    for preset in args.presets:
        dims = PRESETS[preset]
        candidates = {n: t for n, t in traces.items() if (t[0].experts, t[0].top_k) == (dims["experts"], dims["top_k"])}
        for locality in args.synthetic:
            name = f"synthetic locality {locality:g}"
            synthesised = synthetic(
                experts=dims["experts"],
                top_k=dims["top_k"],
                layers=2,
                sequences=max(4, args.sequences // 3),
                prompt_tokens=16,
                decode_tokens=args.new_tokens,
                locality=locality,
                working_set=min(dims["experts"], 2 * dims["top_k"]),
                seed=1,
            )
            candidates[name] = (synthesised, None)
        for name, (trace, predictor) in candidates.items():
            table = run_table(name, trace, preset, args, predictor)
            rows += table
            texts.append(print_table(table))
    (args.out / "results.json").write_text(
        json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1) + "\n"
    )
    (args.out / "tables.md").write_text("\n".join(texts) + "\n")
    plot(rows, args.out / "throughput.png")


if __name__ == "__main__":
    main()
