"""A budget table: thinking budgets read from an artifact, per model and per turn of the conversation.

The simplest policy that is not a constant: what a team tuned by hand (or read off the reasoning world's
results: easy turns saturate at 64 thinking tokens, hard ones need 128) kept as a versioned artifact
and reloaded without a restart, as any learned policy will be. The artifact folder holds
``table.json``::

    {"default": 256, "models": {"dense-m": 128}, "turns": [512, 256]}

A turn's budget is its model's entry if there is one, else the entry for its turn index (0 the first
turn of the session, a longer session keeps the last entry), else the default; ``null`` means no
limit. Write one with :func:`write_table` or ``thrifty budgeter table``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thrifty.budgeter.base import Budgeter, BudgetRequest
from thrifty.server.kit.artifacts import ArtifactError, ArtifactWriter, Manifest, load_verified
from thrifty.server.kit.reload import ArtifactSlot

KIND = "thrifty.budget_table"
VERSION = 1
TABLE = "table.json"
Budget = Annotated[int, Field(ge=0)] | None


class Table(BaseModel):
    """The contents of ``table.json``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    default: Budget = None
    models: dict[str, Budget] = Field(default_factory=dict)
    turns: list[Budget] = Field(default_factory=list)

    def budget(self, model: str, turn: int) -> int | None:
        if model in self.models:
            return self.models[model]
        if self.turns:
            return self.turns[min(turn, len(self.turns) - 1)]
        return self.default


def read_table(folder: Path) -> Table:
    """The table of an artifact folder, verified; an ArtifactError if anything is wrong with it."""
    load_verified(folder, Manifest, kind=KIND, version=VERSION)
    try:
        return Table.model_validate(json.loads((folder / TABLE).read_text()))
    except (ValueError, ValidationError) as exc:
        raise ArtifactError(f"{folder}: {TABLE} is not a budget table ({exc})") from None


def write_table(
    out: Path,
    default: int | None,
    models: Mapping[str, int | None] | None = None,
    turns: Sequence[int | None] = (),
    *,
    replace: bool = False,
) -> Path:
    """Write a budget table artifact (``replace``: swap out the one at ``out``, atomically)."""
    table = Table(default=default, models=dict(models or {}), turns=list(turns))
    with ArtifactWriter(out, KIND, VERSION, replace=replace) as writer:
        (writer.staging / TABLE).write_text(table.model_dump_json(indent=1))
        return writer.commit()


class TableBudgeter(Budgeter):
    """Options: ``artifact``, a budget-table folder."""

    name = "table"

    def __init__(self, artifact: Annotated[str, Field(min_length=1)]) -> None:
        try:
            self._slot = ArtifactSlot(Path(artifact), read_table)
        except (OSError, ValueError) as exc:
            raise ValueError(f"budget table {artifact}: {exc}") from None

    def status(self) -> dict[str, Any]:
        return self._slot.describe() | {"table": self._slot.current.model_dump()}

    async def reload(self) -> dict[str, Any]:
        await self._slot.reload()
        return self.status()

    async def decide(self, request: BudgetRequest) -> int | None:
        turn = request.session.turn_count if request.session is not None else 0
        return self._slot.current.budget(request.model, turn)
