"""Resumable offline jobs: named stages, each run once, recorded in the job folder's ``state.json``.

    job = Job(out, kind="world build", settings={"mode": "quick", "seed": 0})
    job.stage("data", make_data)            # skipped when a rerun finds it done
    job.stage("train:dense-s", train)       # train(context) may checkpoint in context.checkpoint

A rerun skips finished stages and refuses other settings (they would mix two jobs in one folder); a
stage that was interrupted starts again, from its checkpoint folder if it left one. Each stage's
record (what it returns, plus the seconds it took) is written atomically the moment it finishes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thrifty.server.kit.artifacts import write_text_atomic

logger = logging.getLogger(__name__)

STATE = "state.json"
CHECKPOINTS = ".checkpoints"


class JobError(RuntimeError):
    """The job cannot go on; the message says what to do."""


@dataclass(frozen=True, slots=True)
class StageContext:
    """What a stage gets: its name, the job's folder, a checkpoint folder of its own, progress bars."""

    name: str
    folder: Path
    checkpoint: Path  # kept until the stage is recorded as done, then removed
    show_progress: bool

    def progress(self, total: int, desc: str | None = None, initial: int = 0) -> Any:
        """A tqdm bar (silent when the job runs without progress output)."""
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc or self.name, disable=not self.show_progress)


class Job:
    def __init__(self, folder: Path, *, kind: str, settings: Mapping[str, Any], progress: bool = True) -> None:
        self.folder = folder
        self.kind = kind
        self.settings = dict(settings)
        self.show_progress = progress

    @property
    def state_path(self) -> Path:
        return self.folder / STATE

    def state(self) -> dict[str, Any]:
        """The recorded state; a JobError if the folder holds a job with other settings."""
        if not self.state_path.exists():
            return {"settings": self.settings, "done": {}}
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        if state.get("settings") != self.settings:
            raise JobError(
                f"{self.folder} holds a {self.kind} with other settings ({state.get('settings')}); "
                "use another folder, or --fresh to start over"
            )
        return state

    def done(self) -> dict[str, dict[str, Any]]:
        """Finished stages and their records, in the order they finished."""
        done: dict[str, dict[str, Any]] = self.state()["done"]
        return done

    def context(self, name: str) -> StageContext:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        return StageContext(name, self.folder, self.folder / CHECKPOINTS / safe, self.show_progress)

    def stage(self, name: str, run: Callable[[StageContext], dict[str, Any]]) -> dict[str, Any]:
        """Run the stage unless it is done; its record either way."""
        state = self.state()
        if name in state["done"]:
            logger.info("%s: already done", name)
            return dict(state["done"][name])
        self.folder.mkdir(parents=True, exist_ok=True)
        context = self.context(name)
        started = time.monotonic()
        record = dict(run(context))
        record["seconds"] = round(time.monotonic() - started, 1)
        state = self.state()
        state["done"][name] = record
        write_text_atomic(self.state_path, json.dumps(state, indent=1))
        shutil.rmtree(context.checkpoint, ignore_errors=True)
        return record

    def fresh(self) -> None:
        """Forget everything the folder holds."""
        shutil.rmtree(self.folder, ignore_errors=True)
