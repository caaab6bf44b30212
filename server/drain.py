"""Graceful shutdown that ends on time with proper answers.

On SIGTERM uvicorn stops accepting and waits for requests in flight; past its own limit it cancels them,
and a cancelled request gets a plain-text "500 Internal Server Error" (a stream is just cut) with a
traceback in the log. The gateway keeps its own clock instead: :class:`Drain` starts when the signal
arrives, and once ``graceful_shutdown_s`` have passed it ends every request still in flight itself —
a request not yet answered gets an OpenAI-style 503 (``shutting_down``), a stream an SSE error event —
and logs one line with the count. ``thrifty serve`` gives uvicorn a little longer than that, so its
cancellation never has anything left to cut.

Ending a request: a stream that has begun is ended by closing its backend response (its relay then
reads an error and writes the event); any other request's task is cancelled, and the serving layer
turns that cancellation into the 503.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

# uvicorn's own limit is this much longer than the drain's, so the gateway answers before uvicorn cuts.
UVICORN_MARGIN_S = 5.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(slots=True, eq=False)
class InFlight:
    """One request the drain may have to end."""

    task: asyncio.Task[Any] | None
    stream: aiohttp.ClientResponse | None = None  # set once a stream's relay owns the backend response
    aborted: bool = False


class Drain:
    """The requests in flight, and the clock that ends them once a shutdown has lasted ``grace_s``.

    Made inside the app's event loop; :meth:`begin` may be called from any thread or a signal handler.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._loop = asyncio.get_running_loop()
        self._requests: set[InFlight] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.draining = False

    def enter(self) -> InFlight:
        handle = InFlight(asyncio.current_task())
        self._requests.add(handle)
        return handle

    def leave(self, handle: InFlight) -> None:
        self._requests.discard(handle)

    def begin(self) -> None:
        """A shutdown started (idempotent): end what is still running ``grace_s`` from now."""
        self._loop.call_soon_threadsafe(self._start_clock)

    def _start_clock(self) -> None:
        if not self.draining:
            self.draining = True
            self._timer = self._loop.call_later(self.grace_s, self.expire)

    def expire(self) -> None:
        """End every request still in flight (503, or an SSE error event for a stream)."""
        if not self._requests:
            return
        for handle in list(self._requests):
            handle.aborted = True
            if handle.stream is not None:
                handle.stream.close()
            elif handle.task is not None:
                handle.task.cancel("thrifty: graceful shutdown ran out")
        logger.warning(
            "graceful shutdown: %d request(s) still in flight after %g s were ended "
            "(503 shutting_down; streams with an SSE error event)",
            len(self._requests),
            self.grace_s,
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def start_on_termination(drain: Drain) -> Callable[[], None]:
    """Chain onto the process's SIGTERM/SIGINT handlers (uvicorn's) so the drain starts with them.

    Returns the undo. Does nothing off the main thread (tests that serve the app in a thread), where
    signals cannot be handled.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        drain.begin()
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    for sig in _SIGNALS:
        previous[sig] = signal.signal(sig, on_signal)

    def undo() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return undo
