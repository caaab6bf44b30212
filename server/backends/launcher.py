"""Managed vLLM processes: start them, wait until they answer, stop them — never leave one orphaned.

Each process runs in a session of its own (so stopping it stops its engine workers too) and is told by
the kernel to die with its parent (``PR_SET_PDEATHSIG``), so even a ``kill -9`` of the gateway does not
orphan it. Output goes to ``<data_dir>/logs/<backend>.log``.
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
from collections.abc import Sequence
from pathlib import Path

from thrifty.server.bundled_model import THINKING_TEMPLATE_FILE, model_dir
from thrifty.server.config import ENV_PROMETHEUS_MULTIPROC_DIR, ENV_VLLM_PYTHON, BackendConfig, ConfigError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
BUNDLED = "bundled"
_PROGRESS_EVERY_S = 15.0
DEFAULT_VLLM_VENV = Path(".venv-vllm")


class LaunchError(RuntimeError):
    """A managed backend did not come up; the message carries the end of its log."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_path(backend: BackendConfig, data_dir: Path) -> Path:
    """Where a launched backend's output goes."""
    return data_dir / "logs" / f"{backend.name}.log"


def vllm_python(configured: str | None) -> str:
    """The interpreter that has vLLM: the config's, $THRIFTY_VLLM_PYTHON, .venv-vllm, or this one."""
    for candidate in (configured, os.environ.get(ENV_VLLM_PYTHON)):
        if candidate:
            if not Path(candidate).exists():
                raise ConfigError(f"the vLLM interpreter {candidate} does not exist")
            return candidate
    local = DEFAULT_VLLM_VENV / "bin" / "python"
    return str(local.absolute()) if local.exists() else sys.executable


class VllmProcess:
    """One managed vLLM OpenAI server."""

    def __init__(self, backend: BackendConfig, data_dir: Path) -> None:
        if backend.launch is None:
            raise ValueError(f"backend '{backend.name}' has no launch block")
        self.backend = backend
        self.launch = backend.launch
        self.data_dir = data_dir
        self.log_path = log_path(backend, data_dir)
        self.process: subprocess.Popen[bytes] | None = None

    def model_path(self) -> Path:
        if self.launch.model_path == BUNDLED:
            return model_dir(self.data_dir)
        return Path(self.launch.model_path)

    def command(self) -> list[str]:
        launch = self.launch
        model = self.model_path()
        args = [
            vllm_python(launch.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            self.backend.model,
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
        if launch.chat_template:
            template = model / THINKING_TEMPLATE_FILE if launch.chat_template == "thinking" else launch.chat_template
            args += ["--chat-template", str(template)]
        if launch.expert_cache is not None and "--enforce-eager" not in launch.extra_args:
            args.append("--enforce-eager")  # the cache decides on the host per pass: no CUDA graphs
        return args + list(launch.extra_args)

    def start(self) -> None:
        model = self.model_path()
        if not (model / "config.json").is_file():
            hint = " (run 'thrifty models prepare')" if self.launch.model_path == BUNDLED else ""
            raise LaunchError(f"backend '{self.backend.name}': no model folder at {model}{hint}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self.launch.kv_cache_gb)
        env.pop(ENV_PROMETHEUS_MULTIPROC_DIR, None)  # the gateway's, not vLLM's
        if self.launch.expert_cache is not None:
            env.update(self.launch.expert_cache.cache_config().to_env())
            # The cache's counters are counted in vLLM's engine process; a multiprocess directory of the
            # backend's own makes its /metrics (served by the API process) show them.
            env[ENV_PROMETHEUS_MULTIPROC_DIR] = str(self._fresh_metrics_dir())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # Safe here: serve starts backends before any other thread of its own exists.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        logger.info("started vLLM for %s (pid %d), log %s", self.backend.name, self.process.pid, self.log_path)

    def _fresh_metrics_dir(self) -> Path:
        path = self.data_dir / "metrics" / self.backend.name
        shutil.rmtree(path, ignore_errors=True)  # counters of an earlier run must not add to this one's
        path.mkdir(parents=True)
        return path

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.backend.base_url}/health", timeout=2) as response:
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
                    f"vLLM for backend '{self.backend.name}' exited with code {self.process.returncode}:\n"
                    + self.log_tail()
                )
            if self.healthy():
                return
            if time.monotonic() >= next_note:
                next_note += _PROGRESS_EVERY_S
                logger.info(
                    "still waiting for vLLM for %s (%.0f s so far; its log: %s): %s",
                    self.backend.name,
                    time.monotonic() - started,
                    self.log_path,
                    self.log_tail(1) or "(nothing logged yet)",
                )
            time.sleep(1.0)
        raise LaunchError(
            f"vLLM for backend '{self.backend.name}' was not healthy after {self.launch.startup_timeout_s:g} s:\n"
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
        logger.info("stopped vLLM for %s", self.backend.name)


def start_all(backends: Sequence[BackendConfig], data_dir: Path) -> list[VllmProcess]:
    """Start every launched backend at once and wait for all; on any failure stop them all."""
    processes = [VllmProcess(b, data_dir) for b in backends if b.launch is not None]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready()
    except BaseException:
        stop_all(processes)
        raise
    return processes


def stop_all(processes: Sequence[VllmProcess]) -> None:
    for process in processes:
        process.stop()
