"""Test helpers: free ports, stand-in backends on real sockets, the gateway in-process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import uvicorn
from fastapi import FastAPI

from thrifty.server.app import build_app
from thrifty.server.config import GatewayConfig, parse_config
from thrifty.server.standin import Standin, StandinState
from thrifty.server.state import GatewayState


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningServer:
    """An ASGI app served by uvicorn on a real port, in a thread."""

    def __init__(self, app: Any, lifespan: str = "off") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", access_log=False, lifespan=lifespan
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in backend did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class RunningStandin(RunningServer):
    """A stand-in backend on a real port."""

    def __init__(self, state: StandinState) -> None:
        super().__init__(Standin(state))
        self.state = state


@contextlib.contextmanager
def running_gateway(config: GatewayConfig) -> Iterator[tuple[str, FastAPI]]:
    """The gateway app served on a real port (for what ASGITransport cannot show, like disconnects)."""
    app = build_app(config)
    server = RunningServer(app, lifespan="on").start()
    try:
        yield server.url, app
    finally:
        server.stop()


@contextlib.contextmanager
def standins(*states: StandinState) -> Iterator[list[RunningStandin]]:
    running = [RunningStandin(s).start() for s in states]
    try:
        yield running
    finally:
        for r in running:
            r.stop()


THRIFTY_CLI = [sys.executable, "-m", "thrifty.server.cli"]


def serve_process(args: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*THRIFTY_CLI, "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            **kwargs,  # type: ignore[call-overload]
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"thrifty serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"thrifty serve did not become ready:\n{log.read_text()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def fresh_minute(margin_s: float = 8.0) -> None:
    """Wait out the end of a rate-limit window, so a test's requests all fall in one minute."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.05)


# On a slow or busy machine a stand-in backend can take seconds to answer a health probe; the gateway's
# 2 s default would then mark it unhealthy mid-test. Tests about health checks set their own.
TEST_HEALTH = {"timeout_s": 60.0}


def config_for(backends: list[dict[str, Any]], **extra: Any) -> GatewayConfig:
    extra.setdefault("health", TEST_HEALTH)
    return parse_config({"backends": backends, **extra}, environ={})


@contextlib.asynccontextmanager
async def gateway(config: GatewayConfig) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The gateway app with its lifespan running, and an httpx client speaking to it in-process."""
    app = build_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http, app


def state_of(app: FastAPI) -> GatewayState:
    state: GatewayState = app.state.gateway
    return state


def sample(app: FastAPI, name: str, **labels: str) -> float:
    value = state_of(app).metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


class RedisServer:
    """A real redis-server on a free port, with its data in ``folder`` (append-only file on)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run 'make test' (it installs it) or apt-get install redis-server"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{(self.folder / 'redis.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        """Hang: connections are still accepted (by the kernel) but nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
