"""Expert-cache benchmark: decode time per token, hit rate and bytes moved against C, for every policy.

Routing traces are replayed through MoE layers of a preset's dimensions (random weights; the trace, not
the weights, decides which experts run): one forward pass for the prompt, then one per generated token,
each through ``ExpertCache`` + the cached expert computation the runtime serves with. Time is measured
over the generated tokens only. Next to it, the transfer floor for the hit rate achieved:

    t_token ≥ Σ_layers (1 − h) · A · S / BW      (A experts a token touches per layer, S bytes per expert)

with BW the host→device bandwidth measured first (pinned memory on CUDA; on CPU, a host copy).

    .venv/bin/python benchmarks/moe/run.py --record-world data/world/solvers/moe-s --out benchmarks/moe
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from thrifty.moe_runtime import POLICY_NAMES, CacheConfig, CacheStats, ExpertCache, cached_experts_forward
from thrifty.moe_runtime.traces import RoutingTrace, from_recording, synthetic

HERE = Path(__file__).resolve().parent
PRESETS: dict[str, dict[str, int]] = yaml.safe_load((HERE / "presets.yaml").read_text())


@dataclass(slots=True)
class Row:
    trace: str
    preset: str
    policy: str
    slots: int
    ms_per_token: float
    tokens_per_s: float
    hit_rate: float
    mb_per_token: float
    stall_ms_per_token: float
    floor_ms_per_token: float


def measure_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second, host → ``device`` (pinned source on CUDA), best of ``repeats``."""
    n = megabytes * 2**20 // 4
    src = torch.rand(n)  # written, so the copy reads real pages (an untouched buffer reads the zero page)
    if device.type == "cuda":
        src = src.pin_memory()
    dst = torch.zeros(n, device=device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return n * 4 / best


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
) -> tuple[float, CacheStats]:
    """Seconds spent on generated tokens, and the caches' counters over those tokens."""
    caches = [ExpertCache(w, config, device, name=f"layer{i}") for i, w in enumerate(weights)]
    hidden = dims["hidden"]
    x_prompt = torch.randn(max(s.prefill for s in trace.sequences), hidden, dtype=dtype, device=device)
    x_token = torch.randn(1, hidden, dtype=dtype, device=device)
    gates = torch.full((x_prompt.shape[0], trace.top_k), 1.0 / trace.top_k, dtype=dtype, device=device)
    elapsed = 0.0
    decode = CacheStats()
    for seq in trace.sequences:
        if config.policy == "pinned":  # an oracle for MELINOE's predictor: the sequence's C most used experts
            for layer, cache in enumerate(caches):
                counts = Counter(seq.ids[:, layer].flatten().tolist())
                cache.pin([e for e, _ in counts.most_common(cache.capacity)])
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


def run_table(name: str, trace: RoutingTrace, preset: str, args: argparse.Namespace, bandwidth: float) -> list[Row]:
    dims = PRESETS[preset]
    if (dims["experts"], dims["top_k"]) != (trace.experts, trace.top_k):
        raise SystemExit(f"trace {name} has E={trace.experts}, k={trace.top_k}; preset {preset} needs {dims}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    weights = layer_weights(dims, trace.layers, dtype, seed=0)
    expert_bytes = sum(t[0].numel() * t.element_size() for t in weights[0].values())
    slots = sorted({max(1, round(dims["experts"] * f)) for f in args.slot_fractions})
    tokens = trace.decode_tokens()
    warm = RoutingTrace(trace.experts, trace.top_k, trace.layers, trace.sequences[:2], trace.source)
    replay(warm, dims, CacheConfig(slots=slots[0], policy="lru"), device, dtype, weights)  # allocator, kernels
    rows = []
    for policy in tqdm(args.policies, desc=f"{name} × {preset}", unit="policy"):
        for c in slots:
            config = CacheConfig(slots=c, policy=policy, gamma=args.gamma)
            seconds, stats = replay(trace, dims, config, device, dtype, weights)
            touched = (stats.hits + stats.misses) / tokens  # experts per token, all layers
            floor = (1 - stats.hit_rate) * touched * expert_bytes / bandwidth
            rows.append(
                Row(
                    trace=name,
                    preset=preset,
                    policy=policy,
                    slots=c,
                    ms_per_token=1e3 * seconds / tokens,
                    tokens_per_s=tokens / seconds,
                    hit_rate=stats.hit_rate,
                    mb_per_token=stats.bytes_moved / tokens / 1e6,
                    stall_ms_per_token=1e3 * stats.stall_seconds / tokens,
                    floor_ms_per_token=1e3 * floor,
                )
            )
    return rows


def print_table(rows: list[Row]) -> str:
    lines = [
        f"\n{rows[0].trace} through {rows[0].preset}",
        "| policy | C | tokens/s | ms/token | hit rate | MB moved/token | stall ms/token | floor ms/token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.policy} | {r.slots} | {r.tokens_per_s:.1f} | {r.ms_per_token:.3f} | {r.hit_rate:.3f} | "
            f"{r.mb_per_token:.3f} | {r.stall_ms_per_token:.3f} | {r.floor_ms_per_token:.3f} |"
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
            axes[0][col].plot([r.slots for r in sel], [r.tokens_per_s for r in sel], marker="o", label=policy)
            axes[1][col].plot([r.slots for r in sel], [r.hit_rate for r in sel], marker="o", label=policy)
        axes[0][col].set_title(f"{trace}\n{preset}", fontsize=9)
        axes[0][col].set_ylabel("decode tokens/s")
        axes[1][col].set_ylabel("hit rate")
        axes[1][col].set_xlabel("slots per layer (C)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record-world", type=Path, help="the world's MoE solver folder: record its routing")
    parser.add_argument("--world-problems", type=Path, help="held-out problems (default: <world>/data/test.jsonl)")
    parser.add_argument("--trace", type=Path, action="append", default=[], help="saved trace files to replay")
    parser.add_argument("--sequences", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--synthetic", type=float, nargs="*", default=[0.5, 0.9], help="localities to synthesise")
    parser.add_argument("--presets", nargs="+", default=["world-moe-s", "mixtral-quarter", "olmoe-1b-7b"])
    parser.add_argument("--policies", nargs="+", default=list(POLICY_NAMES))
    parser.add_argument("--slot-fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    traces: dict[str, RoutingTrace] = {}
    if args.record_world:
        problems = args.world_problems or args.record_world.parents[1] / "data" / "test.jsonl"
        trace = record_world_trace(args.record_world, problems, args.sequences, args.new_tokens)
        trace.save(args.out / "world-moe-s.trace.safetensors")
        traces["world moe-s (recorded)"] = trace
    for path in args.trace:
        traces[path.name.removesuffix(".trace.safetensors")] = RoutingTrace.load(path)

    device = torch.device(args.device)
    bandwidth = measure_bandwidth(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (
        f"device: {device} ({device_name}), {torch.get_num_threads()} threads, dtype {args.dtype}; "
        f"host→device bandwidth {bandwidth / 1e9:.2f} GB/s"
    )
    print(header, flush=True)
    rows: list[Row] = []
    texts = [header]
    for preset in args.presets:
        dims = PRESETS[preset]
        candidates = {n: t for n, t in traces.items() if (t.experts, t.top_k) == (dims["experts"], dims["top_k"])}
        for locality in args.synthetic:
            name = f"synthetic locality {locality:g}"
            candidates[name] = synthetic(
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
        for name, trace in candidates.items():
            table = run_table(name, trace, preset, args, bandwidth)
            rows += table
            texts.append(print_table(table))
    (args.out / "results.json").write_text(
        json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1) + "\n"
    )
    (args.out / "tables.md").write_text("\n".join(texts) + "\n")
    plot(rows, args.out / "throughput.png")


if __name__ == "__main__":
    main()
