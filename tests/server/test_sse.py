"""The SSE splitter: every framing the spec allows, any split into reads, bounded events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thrifty.server.sse import EventSplitter, EventTooLarge

# Event lines: no line-ending characters inside, as the spec requires.
_line = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), min_size=1, max_size=30)
_event = st.lists(_line, min_size=1, max_size=3)


def _frame(events: list[list[str]], eol: str) -> bytes:
    return "".join(eol.join(lines) + eol + eol for lines in events).encode()


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=1000, deadline=None)
@given(
    events=st.lists(_event, min_size=1, max_size=6),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_any_framing_in_any_reads_gives_the_same_events(events: list[list[str]], eol: str, cuts: list[int]) -> None:
    splitter = EventSplitter(1 << 20)
    out: list[bytes] = []
    for chunk in _chunks(_frame(events, eol), cuts):
        out += splitter.feed(chunk)
    assert out == ["\n".join(lines).encode() for lines in events]


def test_each_event_comes_out_as_soon_as_its_blank_line_arrives() -> None:
    for eol in (b"\n", b"\r\n", b"\r"):
        splitter = EventSplitter(1024)
        assert splitter.feed(b"data: 1" + eol + eol) == [b"data: 1"]
        assert splitter.feed(b"data: 2" + eol) == []
        assert splitter.feed(eol) == [b"data: 2"]


def test_a_large_event_in_many_reads_and_the_limit() -> None:
    splitter = EventSplitter(1 << 20)
    body = b"data: " + b"x" * 900_000
    reads = [body[i : i + 4096] for i in range(0, len(body), 4096)] + [b"\n\ndata: [DONE]\n\n"]
    out = [event for read in reads for event in splitter.feed(read)]
    assert out == [body, b"data: [DONE]"]
    small = EventSplitter(1024)
    small.feed(b"data: " + b"x" * 1000)
    with pytest.raises(EventTooLarge):
        small.feed(b"x" * 100)


def test_a_crlf_split_across_three_reads() -> None:
    splitter = EventSplitter(1024)
    assert splitter.feed(b"data: 0\r") == []
    assert splitter.feed(b"\n") == []
    assert splitter.feed(b"\r\n") == [b"data: 0"]
