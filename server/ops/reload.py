"""Reloading the gateway's stages: every stage backed by an artifact, by admin request or SIGHUP.

A stage implements the kit's :class:`~thrifty.server.kit.reload.Reloadable` (``status()``, ``reload()``);
one without an artifact raises ``NothingToReload``. A reload reads and checks the new artifact before
swapping it in, so requests in flight finish on the old one and a broken artifact leaves it serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from thrifty.server.kit.reload import NothingToReload, Reloadable
from thrifty.server.metrics import GatewayMetrics

logger = logging.getLogger(__name__)


class Stage(Reloadable, Protocol):
    @property
    def name(self) -> str:  # the policy's name (a class attribute of routers and budgeters)
        ...


class StageReloader:
    """The gateway's stages by their kind (``router``, ``budgeter``)."""

    def __init__(self, stages: Mapping[str, Stage], metrics: GatewayMetrics) -> None:
        self.stages = dict(stages)
        self._metrics = metrics

    def status(self, kind: str) -> dict[str, Any]:
        stage = self.stages[kind]
        return {"policy": stage.name} | stage.status()

    async def reload(self, kind: str) -> dict[str, Any]:
        """Read the stage's artifact again; on failure (OSError, ValueError) the previous one keeps serving."""
        stage = self.stages[kind]
        try:
            status = await stage.reload()
        except NothingToReload:
            raise
        except Exception:
            self._metrics.reloads[kind].labels("failed").inc()
            raise
        self._metrics.reloads[kind].labels("ok").inc()
        logger.info("%s reloaded: %s", kind, status)
        return {"policy": stage.name} | status

    async def reload_all(self) -> None:
        """What SIGHUP does: every stage that has an artifact, each failure one log line."""
        without = 0
        for kind in self.stages:
            try:
                await self.reload(kind)
            except NothingToReload:
                without += 1
            except (OSError, ValueError) as exc:  # a missing, torn, malformed or mismatched artifact
                logger.error("SIGHUP: %s reload failed, still serving the previous artifact: %s", kind, exc)
            except Exception:
                # A bug in a stage's reload: still one record, and no task ends with an error nobody reads.
                logger.exception("SIGHUP: %s reload failed unexpectedly, still serving the previous artifact", kind)
        if without == len(self.stages):
            logger.warning("SIGHUP: no stage has an artifact to reload (%s)", ", ".join(self.stages))

    def on_sighup(self) -> Callable[[], None]:
        """Reload on SIGHUP (where the loop can take signals); returns the undo."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        def on_signal() -> None:
            task = loop.create_task(self.reload_all())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            return lambda: None

        def undo() -> None:
            loop.remove_signal_handler(signal.SIGHUP)

        return undo
