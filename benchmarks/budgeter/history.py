"""A TAB job's learning curve: each seed's reward, accuracy and thinking on held-out validation problems.

    .venv/bin/python benchmarks/budgeter/history.py data/tab-llm --out benchmarks/budgeter/llm_training.png

Reads the job folders (``thrifty train budgeter --out``; a seed still training is read from its last
checkpoint), prints one row per validation point and plots the three curves. The validation problems
are held out of the training problems, so a rising reward there is learning, not memorising.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from thrifty.budgeter.tab.train import PROGRESS
from thrifty.server.kit.jobs import CHECKPOINTS

COLUMNS = ("reward", "accuracy", "thinking")


def histories(job: Path) -> dict[str, list[dict[str, Any]]]:
    """Seed name → validation history, from the job's finished stages, else from a seed's checkpoint."""
    found: dict[str, list[dict[str, Any]]] = {}
    state = job / "state.json"
    if state.is_file():
        for stage, record in json.loads(state.read_text())["done"].items():
            if stage.startswith("train:"):
                found[stage.removeprefix("train:")] = record["history"]
    for progress in sorted(job.glob(f"{CHECKPOINTS}/train_*/{PROGRESS}")):  # the stage "train:seedN"
        seed = progress.parent.name.removeprefix("train_")
        found.setdefault(seed, json.loads(progress.read_text())["history"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", type=Path, nargs="+", help="job folders")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write")
    args = parser.parse_args()

    curves = {f"{job.name} {seed}": h for job in args.jobs for seed, h in histories(job).items()}
    if not curves:
        raise SystemExit(f"no validation history in {', '.join(map(str, args.jobs))}")
    print("| run | step | validation reward | accuracy (%) | thinking per problem |")
    print("|---|---:|---:|---:|---:|")
    for name, history in curves.items():
        for point in history:
            print(
                f"| {name} | {point['step']} | {point['reward']:.3f} | {100 * point['accuracy']:.1f} | "
                f"{point['thinking']:.1f} |"
            )
    if args.out is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4.6 * len(COLUMNS), 3.4))
    for ax, column in zip(axes, COLUMNS, strict=True):
        for name, history in curves.items():
            ax.plot([p["step"] for p in history], [p[column] for p in history], "o-", ms=3, lw=1, label=name)
        ax.set_title(f"validation {column}")
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
