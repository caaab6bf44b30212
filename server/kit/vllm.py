"""One managed vLLM OpenAI server: start it, wait until it answers, stop it — never leave one orphaned.

The process runs in a session of its own (so stopping it stops its engine workers too) and is told by
the kernel to die with its parent (``PR_SET_PDEATHSIG``), so even a ``kill -9`` of whoever started it
does not orphan it. Its output goes to a log file. The gateway's launcher and the offline jobs (the
reasoning world's evaluation) both start vLLM through this.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PROGRESS_EVERY_S = 15.0
# Environment of the child only: vLLM CPU's KV-cache size, and prometheus_client's multiprocess folder
# (the parent's must not leak into the backend).
CHILD_KV_CACHE = "VLLM_CPU_KVCACHE_SPACE"
CHILD_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
ENV_VLLM_PYTHON = "THRIFTY_VLLM_PYTHON"  # the interpreter that has vLLM (read here, documented in the config)
DEFAULT_VLLM_VENV = Path(".venv-vllm")


class LaunchError(RuntimeError):
    """A managed vLLM server did not come up; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vllm_python(configured: str | None = None) -> str:
    """The interpreter that has vLLM: the one given, $THRIFTY_VLLM_PYTHON, .venv-vllm, or this one."""
    for candidate in (configured, os.environ.get(ENV_VLLM_PYTHON)):
        if candidate:
            if not Path(candidate).exists():
                raise LaunchError(f"the vLLM interpreter {candidate} does not exist")
            return candidate
    local = DEFAULT_VLLM_VENV / "bin" / "python"
    return str(local.absolute()) if local.exists() else sys.executable


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class VllmLaunch:
    """Everything one vLLM OpenAI server is started with."""

    name: str  # who it is, in logs
    model: Path  # a Hugging Face folder
    served_name: str
    port: int
    python: str  # the interpreter that has vLLM
    host: str = "127.0.0.1"
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    reasoning_parser: str | None = None
    chat_template: Path | None = None
    kv_cache_gb: int = 1
    enforce_eager: bool = False
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # added to the child's environment
    metrics_dir: Path | None = None  # a multiprocess metrics folder of the server's own, made fresh
    startup_timeout_s: float = 300.0
    if_missing: str = ""  # added to the error when the model folder is not there (how to make it)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class VllmServer:
    def __init__(self, launch: VllmLaunch, log_path: Path) -> None:
        self.launch = launch
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return self.launch.base_url

    def command(self) -> list[str]:
        launch = self.launch
        args = [
            launch.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(launch.model),
            "--served-model-name",
            launch.served_name,
            "--host",
            launch.host,
            "--port",
            str(launch.port),
            "--dtype",
            launch.dtype,
            "--disable-uvicorn-access-log",
        ]
        if launch.max_model_len is not None:
            args += ["--max-model-len", str(launch.max_model_len)]
        if launch.reasoning_parser:
            args += ["--reasoning-parser", launch.reasoning_parser]
        if launch.chat_template is not None:
            args += ["--chat-template", str(launch.chat_template)]
        if launch.enforce_eager and "--enforce-eager" not in launch.extra_args:
            args.append("--enforce-eager")
        return args + list(launch.extra_args)

    def start(self) -> None:
        if not (self.launch.model / "config.json").is_file():
            raise LaunchError(f"{self.launch.name}: no model folder at {self.launch.model}{self.launch.if_missing}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env[CHILD_KV_CACHE] = str(self.launch.kv_cache_gb)
        env.pop(CHILD_METRICS_DIR, None)
        env.update(self.launch.env)
        if self.launch.metrics_dir is not None:
            shutil.rmtree(self.launch.metrics_dir, ignore_errors=True)  # an earlier run's counters must not add up
            self.launch.metrics_dir.mkdir(parents=True)
            env[CHILD_METRICS_DIR] = str(self.launch.metrics_dir)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # Safe here: servers are started before their starter runs threads of its own.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        logger.info("started vLLM for %s (pid %d), log %s", self.launch.name, self.process.pid, self.log_path)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, TimeoutError):
            return False

    def wait_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.launch.startup_timeout_s
        next_note = started + _PROGRESS_EVERY_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LaunchError(
                    f"vLLM for {self.launch.name} exited with code {self.process.returncode}:\n" + self.log_tail()
                )
            if self.healthy():
                return
            if time.monotonic() >= next_note:
                next_note += _PROGRESS_EVERY_S
                logger.info(
                    "still waiting for vLLM for %s (%.0f s so far; its log: %s): %s",
                    self.launch.name,
                    time.monotonic() - started,
                    self.log_path,
                    self.log_tail(1) or "(nothing logged yet)",
                )
            time.sleep(1.0)
        raise LaunchError(
            f"vLLM for {self.launch.name} was not healthy after {self.launch.startup_timeout_s:g} s:\n"
            + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 20.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        logger.info("stopped vLLM for %s", self.launch.name)
