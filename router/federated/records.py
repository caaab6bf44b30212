"""How the federation's sums travel in Flower records: written by the ClientApp, read by the ServerApp,
so both sides name the same arrays."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from thrifty.router.ensemble import ModelStats, TaskStats
from thrifty.router.kmeans import CellStats

_TASK_PARTS = ("queries", "x-sum", "scatter", "score-sum", "cost-sum", "count")
_SUM_PARTS = ("score", "cost", "count")
_MODEL_PARTS = (*_SUM_PARTS, "length", "length-sq", "length-cost")


def arrays_record(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in values.items()})


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def sum_arrays(name: str, stats: CellStats) -> dict[str, np.ndarray]:
    """Σ score, Σ cost and counts per cell under ``name/``."""
    return {f"{name}/score": stats.score_sum, f"{name}/cost": stats.cost_sum, f"{name}/count": stats.count}


def model_arrays(name: str, stats: ModelStats) -> dict[str, np.ndarray]:
    """The per-model sums (:class:`ModelStats`) under ``name/``."""
    return {f"{name}/{part}": value for part, value in zip(_MODEL_PARTS, stats.parts(), strict=True)}


def cell_stats(record: ArrayRecord, name: str) -> CellStats:
    return CellStats(*(record[f"{name}/{part}"].numpy() for part in _SUM_PARTS))


def model_stats(record: ArrayRecord, name: str) -> ModelStats:
    return ModelStats(*(record[f"{name}/{part}"].numpy() for part in _MODEL_PARTS))


def task_records(stats: TaskStats) -> tuple[ConfigRecord, ArrayRecord]:
    """The task names (a config record) and the task sums (an array record)."""
    arrays = dict(
        zip(
            _TASK_PARTS,
            (stats.queries, stats.x_sum, stats.scatter, stats.score_sum, stats.cost_sum, stats.count),
            strict=True,
        )
    )
    return ConfigRecord({"names": list(stats.names)}), arrays_record(arrays)


def task_stats(info: ConfigRecord, record: ArrayRecord) -> TaskStats:
    names = tuple(str(n) for n in info["names"])  # type: ignore[union-attr]
    return TaskStats(names, *(record[part].numpy() for part in _TASK_PARTS))
