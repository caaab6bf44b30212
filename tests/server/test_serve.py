"""`thrifty serve` as a real process: several workers share metrics; managed backends never outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from thrifty.server.standin import StandinState

from tests.helpers import CHAT, free_port, standins

THRIFTY = [sys.executable, "-m", "thrifty.server.cli"]


def _serve(args: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*THRIFTY, "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            **kwargs,  # type: ignore[call-overload]
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
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


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_are_exact_across_several_workers(tmp_path: Path) -> None:
    with standins(StandinState(model="m")) as (backend,):
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(f"backends: [{{name: b, model: m, url: '{backend.url}'}}]\n")
        log = tmp_path / "serve.log"
        args = ["--config", str(config), "--port", str(port), "--workers", "2", "--log-level", "warning"]
        process = _serve(args, log)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, log)
            n = 60
            with httpx.Client(base_url=url, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                for _ in range(n):  # new connections spread the requests over both workers
                    assert http.post("/v1/chat/completions", json={"model": "m", **CHAT}).status_code == 200
                text = http.get("/metrics").text
        finally:
            _stop(process)
    assert _metric(text, "thrifty_requests_total", model="m", backend="b", status="200") == n
    assert _metric(text, "thrifty_tokens_total", model="m", kind="prompt") == 12 * n
    assert _metric(text, "thrifty_request_duration_seconds_count", model="m", backend="b") == n
    assert _metric(text, "thrifty_requests_in_flight") == 0
    assert _metric(text, "thrifty_backend_up", backend="b") == 1


FAKE_VLLM = textwrap.dedent(
    """\
    #!/bin/sh
    # Stands in for a vLLM interpreter: finds --port in the arguments and serves the stand-in there.
    port=""
    while [ $# -gt 0 ]; do
      if [ "$1" = "--port" ]; then port="$2"; fi
      shift
    done
    exec {python} -m uvicorn --factory thrifty.server.standin:create_app --port "$port" --log-level warning
    """
)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_managed_backends_are_stopped_with_the_gateway(tmp_path: Path, how: str) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_VLLM.format(python=sys.executable))
    fake.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    backend_port, port = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            data_dir: {tmp_path / "data"}
            backends:
              - name: managed
                model: standin
                launch: {{model_path: {model}, port: {backend_port}, python: {fake}, startup_timeout_s: 30}}
            """
        )
    )
    log = tmp_path / "serve.log"
    process = _serve(["--config", str(config), "--port", str(port)], log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "standin", **CHAT})
        assert response.status_code == 200 and response.headers["x-thrifty-backend"] == "managed"
        assert httpx.get(f"http://127.0.0.1:{backend_port}/health").status_code == 200
        process.send_signal(getattr(signal, how))
        process.wait(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{backend_port}/health", timeout=0.5)
        except httpx.TransportError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the managed backend outlived the gateway ({how})")
    assert (tmp_path / "data" / "logs" / "managed.log").exists()


def test_a_backend_that_fails_to_start_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "broken-python"
    fake.write_text("#!/bin/sh\necho 'CUDA out of memory (pretend)'\nexit 3\n")
    fake.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\nbackends: [{{name: x, model: m, launch: "
        f"{{model_path: {model}, port: {free_port()}, python: {fake}}}}}]\n"
    )
    result = subprocess.run([*THRIFTY, "serve", "--config", str(config)], capture_output=True, timeout=60, check=False)
    assert result.returncode == 2
    assert b"exited with code 3" in result.stderr and b"CUDA out of memory (pretend)" in result.stderr


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    with standins(StandinState(model="m", delay_s=2.0)) as (backend,):
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(f"backends: [{{name: b, model: m, url: '{backend.url}'}}]\n")
        log = tmp_path / "serve.log"
        process = _serve(["--config", str(config), "--port", str(port)], log)
        url = f"http://127.0.0.1:{port}"
        results: list[int] = []
        try:
            _wait_ready(url, process, log)

            def call() -> None:
                response = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", **CHAT}, timeout=30)
                results.append(response.status_code)

            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(0.7)  # the request is now waiting on the slow backend
            process.send_signal(signal.SIGTERM)
            caller.join(timeout=30)
            assert process.wait(timeout=30) == 0
        finally:
            _stop(process)
    assert results == [200], log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
