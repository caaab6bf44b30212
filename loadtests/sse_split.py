"""What splitting a backend's SSE stream into events costs: the splitter against a bare ``split``.

    python loadtests/sse_split.py [--repeat 7]

The bare split (LF framing only) is what the relay did before it accepted CRLF and CR framing and
events larger than a read; the splitter is ``thrifty.server.sse.EventSplitter``. Streams are vLLM-like
chat chunks (about 250 bytes an event), read one event per read, eight per read, and as a 1 MiB event in
64 KiB reads. Each configuration is timed ``--repeat`` times, interleaved; the table gives the median
and range of nanoseconds per event.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

from thrifty.server.sse import EventSplitter


def _event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-0123456789abcdef",
        "object": "chat.completion.chunk",
        "created": 1796000000,
        "model": "dense-m",
        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "logprobs": None, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(chunk)


def _reads(eol: bytes, per_read: int, events: int = 4000) -> list[bytes]:
    stream = b"".join(_event(i) + eol + eol for i in range(events))
    size = len(stream) // (events // per_read)
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def _bare(reads: list[bytes]) -> int:
    pending, count = b"", 0
    for data in reads:
        *events, pending = (pending + data).split(b"\n\n")
        count += sum(1 for e in events if e)
    return count


def _splitter(reads: list[bytes]) -> int:
    splitter = EventSplitter(16 << 20)
    return sum(len(splitter.feed(data)) for data in reads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    big = b"data: " + b"x" * (1 << 20) + b"\n\n"
    cases: dict[str, tuple[list[bytes], list[tuple[str, Callable[[list[bytes]], int]]]]] = {
        "LF, 1 event per read": (_reads(b"\n", 1), [("bare split", _bare), ("splitter", _splitter)]),
        "LF, 8 events per read": (_reads(b"\n", 8), [("bare split", _bare), ("splitter", _splitter)]),
        "CRLF, 1 event per read": (_reads(b"\r\n", 1), [("splitter", _splitter)]),
        "LF, one 1 MiB event in 64 KiB reads": (
            [big[i : i + 65536] for i in range(0, len(big), 65536)],
            [("bare split", _bare), ("splitter", _splitter)],
        ),
    }
    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for case, (reads, ways) in cases.items():
            for name, way in ways:
                started = time.perf_counter_ns()
                events = way(reads)
                timings.setdefault((case, name), []).append((time.perf_counter_ns() - started) / max(events, 1))
    print("| stream | way | ns per event (median, range) |")
    print("| --- | --- | ---: |")
    for (case, name), values in timings.items():
        print(f"| {case} | {name} | {statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f}) |")


if __name__ == "__main__":
    main()
