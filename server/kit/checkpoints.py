"""Optimizer state as safetensors and JSON, never pickle: what a resumable training job checkpoints.

``torch.optim`` keeps per-parameter tensors (AdamW's moments, its step count) and per-group settings;
the tensors go to ``optimizer.safetensors`` under ``<parameter index>.<name>``, the groups to
``optimizer_groups.json``. Loading puts them back into an optimizer built over the same parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TENSORS = "optimizer.safetensors"
GROUPS = "optimizer_groups.json"


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value for index, entry in state["state"].items() for key, value in entry.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / TENSORS)
    (folder / GROUPS).write_text(json.dumps(state["param_groups"]))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(folder / TENSORS)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = json.loads((folder / GROUPS).read_text())
    optimizer.load_state_dict({"state": state, "param_groups": groups})
