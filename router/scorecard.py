"""``thrifty router evaluate``: a router artifact scored on a log, next to the routers that look at no query.

Scoring needs every model's outcome for a query (the router may pick any of them), so only queries with
an observed cell for each of the artifact's models count; the rest are reported and left out. The
feature-free baselines (model means, task means when the log has tasks, always-best, always-cheapest)
are fitted on ``--train`` logs when given, else on the evaluated log itself, which flatters them: the
card says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.router.embedding import cached_encode
from thrifty.router.ensemble import query_lengths
from thrifty.router.evaluation import (
    Curve,
    accuracy_at_cost,
    constant_predictions,
    cost_range,
    lambda_grid,
    normalized_auc,
    pareto_models,
    point_baselines,
    sweep,
    task_predictions,
)
from thrifty.router.outcomes import OutcomeTable


@dataclass
class Scorecard:
    artifact: str
    family: str
    queries: int
    left_out: int
    baselines_from: str
    budgets: list[tuple[str, float]]  # (Pareto model, its mean cost)
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # router → auc, accuracy at each budget
    curves: dict[str, Curve] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            f"router {self.artifact} ({self.family}) on {self.queries} queries with every model's outcome"
            + (f" ({self.left_out} others left out)" if self.left_out else ""),
            f"baselines fitted on {self.baselines_from}",
            "",
        ]
        header = ["router", "normalised AUC", *(f"acc. at {name}'s cost" for name, _ in self.budgets)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for name, row in self.rows.items():
            cells = [f"{row['auc']:.3f}"] + [
                "—" if np.isnan(row[f"at:{model}"]) else f"{row[f'at:{model}']:.3f}" for model, _ in self.budgets
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        router, constant = self.rows["router"]["auc"], self.rows["per-model means"]["auc"]
        lines.append("")
        if router < constant:
            lines.append(
                f"the router is NOT worth serving on this log: its AUC {router:.3f} is below routing by model "
                f"averages ({constant:.3f})"
            )
        else:
            lines.append(f"the router's AUC is {router - constant:+.3f} against routing by model averages")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "family": self.family,
            "queries": self.queries,
            "left_out": self.left_out,
            "baselines_from": self.baselines_from,
            "budgets": [{"model": m, "cost": c} for m, c in self.budgets],
            "rows": self.rows,
        }

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5.5))
        for name, curve in self.curves.items():
            if len(curve.costs) == 1:
                ax.scatter(curve.costs * 1e6, curve.accuracies, marker="x", s=50, label=name, zorder=5)
            else:
                ax.plot(curve.costs * 1e6, curve.accuracies, marker=".", markersize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per query (µUSD, log scale)")
        ax.set_ylabel("mean accuracy")
        ax.set_title(f"{Path(self.artifact).name} on {self.queries} queries")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130)
        plt.close(fig)


def complete_rows(table: OutcomeTable) -> tuple[OutcomeTable, int]:
    """The queries with every model observed, and how many others there were."""
    full = np.flatnonzero(table.observed.all(1))
    return table.subset(full), len(table) - len(full)


def score_artifact(
    folder: Path, data: list[Path], train: list[Path] | None = None, embedder_dir: Path | None = None
) -> Scorecard:
    from thrifty.router.learned import Loaded
    from thrifty.router.training import load_outcomes

    loaded = Loaded.read(folder, embedder_dir)
    models = loaded.artifact.models
    table, _ = load_outcomes(data)
    absent = [m for m in models if m not in table.models]
    if absent:
        raise ValueError(f"the log has no outcome of {', '.join(absent)}, which the router may choose")
    table = OutcomeTable.from_records(table.to_records(), models)
    truth, left_out = complete_rows(table)
    if len(truth) == 0:
        raise ValueError(
            f"none of the log's {len(table)} queries has an outcome for every one of the router's {len(models)} "
            "models: scoring a router needs them (it may pick any model)"
        )
    if train:
        fitted, _ = load_outcomes(train)
        fitted = OutcomeTable.from_records(fitted.to_records(), models)
        source = ", ".join(str(p) for p in train)
    else:
        fitted, source = truth, "this log itself (in-sample: the baselines are flattered)"
    accuracy, cost = loaded.predictor.predict(
        cached_encode(loaded.embedder, truth.queries), query_lengths(truth.queries)
    )
    lambdas = lambda_grid(truth)
    low, high = cost_range(truth)
    curves = {
        "router": sweep("router", accuracy, cost, truth, lambdas),
        "per-model means": sweep("per-model means", *constant_predictions(fitted, len(truth)), truth, lambdas),
    }
    if any(truth.tasks) and any(fitted.tasks):
        curves["per-task means"] = sweep("per-task means", *task_predictions(fitted, truth.tasks), truth, lambdas)
    curves["oracle"] = sweep("oracle", truth.scores, truth.costs, truth, lambdas)
    for point in point_baselines(fitted, truth, seed=0):
        curves[point.name] = point
    mean_cost = truth.costs.mean(0)
    budgets = [(models[j], float(mean_cost[j])) for j in pareto_models(truth)]
    card = Scorecard(str(folder), loaded.artifact.family, len(truth), left_out, source, budgets, curves=curves)
    for name, curve in curves.items():
        row = {"auc": normalized_auc(curve, low, high)}
        row |= {f"at:{model}": accuracy_at_cost(curve, budget) for model, budget in budgets}
        card.rows[name] = row
    return card
