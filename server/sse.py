"""Server-sent events from a backend, split into events whatever line endings it uses, bounded in size.

An SSE event ends with a blank line, and a line may end with CRLF, LF or CR. vLLM writes LF only
(``data: …\\n\\n``); sse-starlette, which several OpenAI-compatible servers use, writes CRLF. The splitter
hands events on without their separator and with every line ending turned into LF, so the rest of the
gateway, and the client, see one framing. LF-only input is the fast path: one ``split`` per read.
An event may arrive in many reads (vLLM streams completions with ``echo`` as one large event); its parts
are kept as a list and joined once, so a large event costs linear time, and one larger than the limit
raises :class:`EventTooLarge` instead of growing without bound.
"""

from __future__ import annotations

SEPARATOR = b"\n\n"


class EventTooLarge(Exception):
    """An event grew past the splitter's limit before it ended."""


class EventSplitter:
    """Feed it the bytes of a stream as they arrive; it returns the events each read completed."""

    __slots__ = ("_after_cr", "_parts", "_size", "max_event_bytes")

    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self._parts: list[bytes] = []  # the unfinished event, in pieces
        self._size = 0
        self._after_cr = False  # the last read ended in CR: an LF starting the next one belongs to it

    def feed(self, data: bytes) -> list[bytes]:
        """The events ``data`` completes (never empty ones), in order, LF-framed, without separators."""
        if self._after_cr or b"\r" in data:
            data = self._to_lf(data)
            if not data:
                return []
        if not self._parts:  # the usual case: nothing pending
            events = data.split(SEPARATOR)
        elif self._parts[-1].endswith(b"\n") and data.startswith(b"\n"):
            # The separator straddles two reads.
            self._parts[-1] = self._parts[-1][:-1]
            events = [b"".join(self._parts), *data[1:].split(SEPARATOR)]
            self._parts, self._size = [], 0
        else:
            end = data.find(SEPARATOR)
            if end < 0:
                if data:
                    self._keep(data)
                return []
            events = [b"".join(self._parts) + data[:end], *data[end + 2 :].split(SEPARATOR)]
            self._parts, self._size = [], 0
        tail = events.pop()
        if tail:
            self._keep(tail)
        return events if all(events) else [event for event in events if event]

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.max_event_bytes:
            raise EventTooLarge(f"an event is larger than {self.max_event_bytes:,} bytes")
        self._parts.append(data)

    def _to_lf(self, data: bytes) -> bytes:
        # A CR ends its line at once (nothing waits for the next read), and a CRLF split across two
        # reads does not become two line ends.
        if self._after_cr and data.startswith(b"\n"):
            data = data[1:]
        self._after_cr = data.endswith(b"\r")
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
