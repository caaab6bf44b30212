"""Graceful shutdown that runs out: requests still in flight get a 503, streams an SSE error event."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    CHAT,
    config_for,
    free_port,
    running_gateway,
    sample,
    serve_process,
    standins,
    stop_process,
    wait_ready,
)
from thrifty.server.standin import StandinState


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class _Calls:
    """A slow non-streaming request and a stream that freezes after its first event, in threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answer: httpx.Response | None = None
        self.stream_lines: list[str] = []
        self.threads = [threading.Thread(target=self._answer), threading.Thread(target=self._stream)]

    def _answer(self) -> None:
        self.answer = httpx.post(f"{self.url}/v1/chat/completions", json={"model": "slow", **CHAT}, timeout=120)

    def _stream(self) -> None:
        body = {"model": "frozen", **CHAT, "stream": True}
        with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line:
                    self.stream_lines.append(line)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)

    def check(self) -> None:
        assert self.answer is not None and self.answer.status_code == 503, self.answer
        assert self.answer.headers["content-type"] == "application/json"
        assert self.answer.json()["error"]["code"] == "shutting_down"
        assert self.stream_lines[0].startswith("data: {"), self.stream_lines  # the event before the freeze
        last = json.loads(self.stream_lines[-1].removeprefix("data: "))
        assert last["error"]["code"] == "shutting_down", self.stream_lines


def _states() -> tuple[StandinState, StandinState]:
    slow = StandinState(model="slow", delay_s=600, record=True)
    frozen = StandinState(model="frozen", stream_chunks=4, hang_after_chunks=1, record=True)
    return slow, frozen


def _backends(slow_url: str, frozen_url: str) -> list[dict[str, str]]:
    return [{"name": "s", "model": "slow", "url": slow_url}, {"name": "f", "model": "frozen", "url": frozen_url}]


def test_requests_left_when_the_drain_runs_out_are_answered(caplog: pytest.LogCaptureFixture) -> None:
    slow, frozen = _states()
    with standins(slow, frozen) as (s, f):
        config = config_for(_backends(s.url, f.url), server={"graceful_shutdown_s": 0})
        with running_gateway(config) as (url, app), caplog.at_level(logging.WARNING, "thrifty.server.drain"):
            calls = _Calls(url)
            calls.start()
            _wait_for(lambda: len(slow.received) == 1 and len(frozen.received) == 1, "both requests at a backend")
            _wait_for(lambda: bool(calls.stream_lines), "the stream's first event")
            app.state.gateway.drain.begin()
            calls.join()
            calls.check()
            assert sample(app, "thrifty_requests_total", model="slow", backend="s", status="503") == 1
            assert sample(app, "thrifty_requests_total", model="frozen", backend="f", status="503") == 1
            assert sample(app, "thrifty_requests_in_flight") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "thrifty.server.drain"]
    assert len(lines) == 1 and "2 request(s) still in flight" in lines[0], lines


def test_sigterm_ends_what_the_grace_period_leaves(tmp_path: Path) -> None:
    slow, frozen = _states()
    with standins(slow, frozen) as (s, f):
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(
            "server: {graceful_shutdown_s: 1}\n"
            f"backends: [{{name: s, model: slow, url: '{s.url}'}}, {{name: f, model: frozen, url: '{f.url}'}}]\n"
        )
        log = tmp_path / "serve.log"
        process = serve_process(["--config", str(config), "--port", str(port)], log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log)
            calls = _Calls(url)
            calls.start()
            _wait_for(lambda: len(slow.received) == 1 and len(frozen.received) == 1, "both requests at a backend")
            _wait_for(lambda: bool(calls.stream_lines), "the stream's first event")
            process.send_signal(signal.SIGTERM)
            calls.join()
            assert process.wait(timeout=60) == 0
        finally:
            stop_process(process)
    calls.check()
    text = log.read_text()
    assert "2 request(s) still in flight after 1 s were ended" in text, text
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text
