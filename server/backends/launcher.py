"""The gateway's managed vLLM backends: a config's ``launch`` block turned into a running server.

The process itself (start, health, stop, dying with the gateway) is the kit's :mod:`thrifty.server.kit.vllm`;
this module decides what a backend is launched with — the bundled model and its thinking template, the
interpreter that has vLLM, the expert cache's settings — and starts or stops all of them together.
Output goes to ``<data_dir>/logs/<backend>.log``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from thrifty.server.bundled_model import THINKING_TEMPLATE_FILE, model_dir
from thrifty.server.config import BackendConfig
from thrifty.server.kit.vllm import LaunchError, VllmLaunch, VllmServer, free_port, vllm_python

__all__ = ["LaunchError", "VllmProcess", "free_port", "launch_of", "log_path", "start_all", "stop_all"]

BUNDLED = "bundled"
PREDICTOR_FILE = "predictor.safetensors"  # in a MELINOE artifact (moe_runtime.melinoe.predictor.FILE)


def log_path(backend: BackendConfig, data_dir: Path) -> Path:
    """Where a launched backend's output goes."""
    return data_dir / "logs" / f"{backend.name}.log"


def launch_of(backend: BackendConfig, data_dir: Path) -> VllmLaunch:
    """What the backend's ``launch`` block starts."""
    launch = backend.launch
    if launch is None:
        raise ValueError(f"backend '{backend.name}' has no launch block")
    model = model_dir(data_dir) if launch.model_path == BUNDLED else Path(launch.model_path)
    template = None
    if launch.chat_template:
        template = model / THINKING_TEMPLATE_FILE if launch.chat_template == "thinking" else Path(launch.chat_template)
    cache = launch.expert_cache
    return VllmLaunch(
        name=f"backend '{backend.name}'",
        model=model,
        served_name=backend.model,
        host=launch.host,
        port=launch.port,
        python=vllm_python(launch.python),
        dtype=launch.dtype,
        max_model_len=launch.max_model_len,
        reasoning_parser=launch.reasoning_parser,
        chat_template=template,
        kv_cache_gb=launch.kv_cache_gb,
        # The expert cache decides on the host per pass: no CUDA graphs. Its counters are counted in
        # vLLM's engine process; a multiprocess folder of the backend's own makes its /metrics show them.
        enforce_eager=cache is not None,
        env=cache.cache_config().to_env() if cache is not None else {},
        metrics_dir=data_dir / "metrics" / backend.name if cache is not None else None,
        extra_args=tuple(launch.extra_args),
        startup_timeout_s=launch.startup_timeout_s,
        if_missing=" (run 'thrifty models prepare')" if launch.model_path == BUNDLED else "",
    )


class VllmProcess(VllmServer):
    """The vLLM server of one launched backend."""

    def __init__(self, backend: BackendConfig, data_dir: Path) -> None:
        super().__init__(launch_of(backend, data_dir), log_path(backend, data_dir))
        self.backend = backend

    def start(self) -> None:
        cache = self.backend.launch.expert_cache if self.backend.launch is not None else None
        if cache is not None and cache.predictor is not None:
            path = Path(cache.predictor)
            if not (path / PREDICTOR_FILE if path.is_dir() else path).is_file():
                raise LaunchError(
                    f"backend '{self.backend.name}': no expert predictor at {cache.predictor} "
                    "(a `thrifty train melinoe` artifact folder holds predictor.safetensors)"
                )
        super().start()


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
