"""`thrifty serve` as a real process: several workers share metrics; managed backends never outlive it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import CHAT, THRIFTY_CLI, free_port, serve_process, standins, stop_process, wait_ready
from thrifty.server.access import hash_key
from thrifty.server.standin import StandinState


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
        process = serve_process(args, log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log)
            n = 60
            with httpx.Client(base_url=url, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                for _ in range(n):  # new connections spread the requests over both workers
                    assert http.post("/v1/chat/completions", json={"model": "m", **CHAT}).status_code == 200
                text = http.get("/metrics").text
        finally:
            stop_process(process)
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
                launch: {{model_path: {model}, port: {backend_port}, python: {fake}, startup_timeout_s: 300}}
            """
        )
    )
    log = tmp_path / "serve.log"
    process = serve_process(["--config", str(config), "--port", str(port)], log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "standin", **CHAT})
        assert response.status_code == 200 and response.headers["x-thrifty-backend"] == "managed"
        assert httpx.get(f"http://127.0.0.1:{backend_port}/health").status_code == 200
        # While it waits for vLLM, serve says where vLLM's log is.
        assert f"their logs: {tmp_path / 'data' / 'logs' / 'managed.log'}" in log.read_text()
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
    command = [*THRIFTY_CLI, "serve", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert result.returncode == 2
    assert b"exited with code 3" in result.stderr and b"CUDA out of memory (pretend)" in result.stderr


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    state = StandinState(model="m", delay_s=2.0, record=True)
    with standins(state) as (backend,):
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(f"backends: [{{name: b, model: m, url: '{backend.url}'}}]\n")
        log = tmp_path / "serve.log"
        process = serve_process(["--config", str(config), "--port", str(port)], log)
        url = f"http://127.0.0.1:{port}"
        results: list[int] = []
        try:
            wait_ready(url, process, log)

            def call() -> None:
                response = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", **CHAT}, timeout=30)
                results.append(response.status_code)

            caller = threading.Thread(target=call)
            caller.start()
            deadline = time.monotonic() + 60
            while not state.received and time.monotonic() < deadline:
                time.sleep(0.02)
            assert state.received, "the request never reached the backend"
            process.send_signal(signal.SIGTERM)  # while the request waits on the slow backend
            caller.join(timeout=30)
            assert process.wait(timeout=30) == 0
        finally:
            stop_process(process)
    assert results == [200], log.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_the_printed_examples_work_with_keys_configured(tmp_path: Path) -> None:
    key = "thr-banner-test-key"
    with standins(StandinState(model="m")) as (backend,):
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(
            f"backends: [{{name: b, model: m, url: '{backend.url}'}}]\n"
            f"auth: {{keys: [{{name: team, sha256: {hash_key(key)}}}]}}\n"
        )
        log = tmp_path / "serve.log"
        process = serve_process(["--config", str(config), "--port", str(port)], log)
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, log)
            deadline = time.monotonic() + 60
            while "Metrics:" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            text = log.read_text()
            assert "export OPENAI_API_KEY" in text
            lines = text.splitlines()
            commands = []
            for start, word in ((i, line.strip().split()[0]) for i, line in enumerate(lines) if line.strip()):
                if word in ("curl", "python"):
                    block = [lines[start]]
                    while block[-1].endswith("\\"):
                        block.append(lines[start + len(block)])
                    commands.append("\n".join(block))
            assert [c.split()[0] for c in commands] == ["curl", "python"], text
            env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OPENAI_API_KEY": key}
            for command in commands:
                done = subprocess.run(
                    ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60, check=False
                )
                assert done.returncode == 0, (command, done.stdout, done.stderr)
                assert "Hello from the stand-in." in done.stdout, (command, done.stdout)
        finally:
            stop_process(process)


def test_an_idle_connection_outlives_the_clients_keep_alive(tmp_path: Path) -> None:
    """httpx (the openai SDK) keeps an idle connection 5 s; uvicorn's default would close it at 5 s too,
    and a request sent as it closes fails with "Server disconnected without sending a response". The
    gateway keeps it server.keep_alive_s (75 s): the same connection still answers after 6 s idle."""
    with standins(StandinState(model="m")) as (backend,):
        port = free_port()
        config = tmp_path / "c.yaml"
        config.write_text(f"backends: [{{name: b, model: m, url: '{backend.url}'}}]\n")
        log = tmp_path / "serve.log"
        process = serve_process(["--config", str(config), "--port", str(port), "--log-level", "warning"], log)
        try:
            wait_ready(f"http://127.0.0.1:{port}", process, log)
            # keepalive_expiry well past the wait, so the client does reuse the connection it has
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(keepalive_expiry=60)) as client:
                peers = []
                for wait in (0.0, 6.0):
                    time.sleep(wait)
                    with client.stream("GET", "/v1/models") as response:
                        assert response.status_code == 200
                        peers.append(response.extensions["network_stream"].get_extra_info("client_addr"))
                        response.read()
            assert peers[0] == peers[1], "the second request needed a new connection: the gateway closed the idle one"
        finally:
            stop_process(process)
