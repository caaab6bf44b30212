"""Stages backed by an artifact, reloadable while the gateway serves.

Every stage has ``status()`` (what the admin endpoint shows) and ``reload()``; a stage with nothing to
read again raises :class:`NothingToReload`. :class:`ArtifactSlot` is the load-and-swap a learned stage
keeps its artifact in: reads and checks the folder off the event loop, swaps the new object in only
once it is complete, keeps the old one on any failure, and lets one reload run at a time. A request
takes :attr:`ArtifactSlot.current` once and uses that object to the end, so a reload landing meanwhile
never changes its answer halfway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

Loaded = TypeVar("Loaded")


class NothingToReload(Exception):
    """The stage has no artifact to read again."""


@runtime_checkable
class Reloadable(Protocol):
    """What the gateway asks of every stage: its status, and reading its artifact again."""

    def status(self) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...


class ArtifactSlot(Generic[Loaded]):
    """The loaded form of an artifact folder, replaced whole by :meth:`reload`.

    ``load`` reads and checks the folder (it runs in a worker thread on reloads); it raises OSError or
    ValueError for a missing, torn or malformed artifact, which leaves the current one in place.
    """

    def __init__(self, folder: Path, load: Callable[[Path], Loaded]) -> None:
        self.folder = folder
        self._load = load
        self.current: Loaded = load(folder)
        self.loaded_at = time.time()
        self._lock = asyncio.Lock()

    async def reload(self) -> Loaded:
        async with self._lock:
            fresh = await asyncio.to_thread(self._load, self.folder)
            self.current, self.loaded_at = fresh, time.time()
        return fresh

    def describe(self) -> dict[str, Any]:
        return {"artifact": str(self.folder), "loaded_at": self.loaded_at}
