"""Gateway overhead: the same load straight to a fast stand-in backend, then through the gateway.

    python loadtests/overhead.py [--duration 10] [--setups memory:1 memory:2 redis:1] [--output FILE]

The stand-in (``thrifty.server.standin``, a bare ASGI app on uvicorn) answers with a fixed completion,
so what is left is the gateway's own cost. Requests to the gateway ask for the virtual model ``auto``
on a backend marked ``reasoning: true``, so the router and budgeter stages both run on every request,
and all carry one ``X-Session-ID``: each is a turn of one long conversation, whose session is read
before and written after (in memory, or in a local redis-server for the ``redis`` set-up).
Load comes from ``wrk`` (Debian package) with one thread; every scenario runs back to back in one go so
that ratios are comparable on a shared, noisy machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def wrk(url: str, script: Path, connections: int, duration: int) -> Run:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not match:
            raise SystemExit(f"cannot read the {label}th percentile from wrk:\n{out}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    n_errors = int(errors.group(1)) if errors else 0
    if socket_errors:
        n_errors += sum(int(g) for g in socket_errors.groups())
    assert rps is not None, out
    return Run(float(rps.group(1)), latency("50"), latency("99"), n_errors)


def lua(folder: Path, name: str, model: str, stream: bool, session: bool = False) -> Path:
    body = '{"model":"%s","messages":[{"role":"user","content":"What is 2+2?"}],"max_tokens":16%s}' % (
        model,
        ',"stream":true' if stream else "",
    )
    path = folder / f"{name}.lua"
    script = f'wrk.method = "POST"\nwrk.body = \'{body}\'\nwrk.headers["Content-Type"] = "application/json"\n'
    if session:
        # Every request is a turn of one long conversation: its session is read and written each time.
        script += 'wrk.headers["X-Session-ID"] = "bench-conversation"\n'
    path.write_text(script)
    return path


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument(
        "--setups",
        nargs="+",
        default=["memory:1", "memory:2", "redis:1"],
        help="gateway set-ups to measure, as STORE:WORKERS (STORE: memory or redis)",
    )
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (make bench does this)")

    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="thrifty-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    standin_port = free_port()
    processes.append(
        subprocess.Popen(
            [
                str(bin_dir / "uvicorn"),
                "--factory",
                "thrifty.server.standin:create_app",
                "--port",
                str(standin_port),
                "--http",
                "httptools",
                "--loop",
                "uvloop",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
        )
    )
    standin = f"http://127.0.0.1:{standin_port}"
    redis_url = None
    if any(s.startswith("redis:") for s in args.setups):
        redis_port = free_port()
        processes.append(
            subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
        )
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    rows: list[tuple[str, Run, Run]] = []
    try:
        wait_http(f"{standin}/health")
        for setup in args.setups:
            store, _, count = setup.partition(":")
            workers = int(count or 1)
            config = work / f"gateway-{store}.yaml"
            config.write_text(
                (f"redis_url: {redis_url}\n" if store == "redis" else "")
                + f"backends: [{{name: standin, model: standin, url: '{standin}', reasoning: true,"
                " price: {input: 0.1, output: 0.2}}]\n"
                "router: {cheapest: {}}\nbudgeter: {static: {budget: 256}}\n"
                "sessions: {default_budget: 100000000}\n"
            )
            port = free_port()
            gateway = subprocess.Popen(
                [
                    str(bin_dir / "thrifty"),
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
            )
            processes.append(gateway)
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/ready")
            for stream in (False, True):
                mode = "stream" if stream else "non-stream"
                direct_script = lua(work, f"direct-{mode}", "standin", stream)
                gateway_script = lua(work, f"gateway-{mode}", "auto", stream, session=True)
                for connections in (1, 32):
                    # Warm both paths (connection pools, caches) before measuring.
                    wrk(f"{standin}/v1/chat/completions", direct_script, connections, 1)
                    wrk(f"{url}/v1/chat/completions", gateway_script, connections, 1)
                    direct = wrk(f"{standin}/v1/chat/completions", direct_script, connections, args.duration)
                    through = wrk(f"{url}/v1/chat/completions", gateway_script, connections, args.duration)
                    label = f"{store} store, {workers} worker{'s' if workers > 1 else ''}, {mode}, {connections} conn"
                    rows.append((label, direct, through))
                    print(f"  {label}: direct {direct.rps:,.0f}/s, gateway {through.rps:,.0f}/s", flush=True)
            gateway.terminate()
            gateway.wait(timeout=30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"Machine: {machine()}",
        "",
        "| scenario | direct req/s | gateway req/s | direct p50 | gateway p50 | added p50 | gateway p99 | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, direct, through in rows:
        lines.append(
            f"| {label} | {direct.rps:,.0f} | {through.rps:,.0f} | {direct.p50_ms:.3f} ms | {through.p50_ms:.3f} ms"
            f" | {through.p50_ms - direct.p50_ms:.3f} ms | {through.p99_ms:.3f} ms | {direct.errors + through.errors} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    if args.output:
        args.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
