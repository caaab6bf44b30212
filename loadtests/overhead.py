"""Gateway overhead: the same load straight to a fast stand-in backend, then through the gateway.

    python loadtests/overhead.py [--duration 10] [--setups memory:1 memory:2 redis:1] [--rounds 1]
                                 [--before PATH/TO/older/thrifty] [--output FILE]

The stand-in (``thrifty.server.standin``, a bare ASGI app on uvicorn) answers with a fixed completion,
so what is left is the gateway's own cost. Requests to the gateway ask for the virtual model ``auto``
on a backend marked ``reasoning: true``, so the router and budgeter stages both run on every request,
and all carry one ``X-Session-ID``: each is a turn of one long conversation, whose session is read
before and written after (in memory, or in a local redis-server for the ``redis`` set-up).
Load comes from ``wrk`` (Debian package) with one thread; every scenario runs back to back in one go so
that ratios are comparable on a shared, noisy machine. ``--before`` names the ``thrifty`` command of
another checkout (say, the last release): both gateways run side by side and each scenario measures
direct, before and now in turn, ``--rounds`` times, so the comparison is interleaved. Prints Markdown
tables: medians over rounds, with the range where there are several.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
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


def _gateway(thrifty: str, config: Path, workers: int, processes: list[subprocess.Popen[bytes]]) -> str:
    port = free_port()
    command = [thrifty, "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
    gateway = subprocess.Popen([*command, "--log-level", "warning"], stdout=subprocess.DEVNULL)
    processes.append(gateway)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ready")
    return url


def _spread(values: list[float], fmt: str) -> str:
    middle = format(statistics.median(values), fmt)
    if len(values) < 2:
        return middle
    return f"{middle} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument(
        "--setups",
        nargs="+",
        default=["memory:1", "memory:2", "redis:1"],
        help="gateway set-ups to measure, as STORE:WORKERS (STORE: memory or redis)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measure each scenario this many times, interleaved")
    parser.add_argument("--before", help="the `thrifty` command of another checkout, measured beside this one")
    parser.add_argument("--output", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (make bench does this)")

    bin_dir = Path(sys.executable).parent
    versions = {"now": str(bin_dir / "thrifty")}
    if args.before:
        versions = {"before": args.before} | versions
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
    # scenario -> "direct" or version -> runs
    results: dict[str, dict[str, list[Run]]] = {}
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
            started = len(processes)
            urls = {name: _gateway(thrifty, config, workers, processes) for name, thrifty in versions.items()}
            for stream in (False, True):
                mode = "stream" if stream else "non-stream"
                direct_script = lua(work, f"direct-{mode}", "standin", stream)
                gateway_script = lua(work, f"gateway-{mode}", "auto", stream, session=True)
                for connections in (1, 32):
                    label = f"{store} store, {workers} worker{'s' if workers > 1 else ''}, {mode}, {connections} conn"
                    runs = results.setdefault(label, {"direct": [], **{name: [] for name in versions}})
                    for _ in range(args.rounds):
                        # Warm every path (connection pools, caches) before measuring.
                        wrk(f"{standin}/v1/chat/completions", direct_script, connections, 1)
                        runs["direct"].append(
                            wrk(f"{standin}/v1/chat/completions", direct_script, connections, args.duration)
                        )
                        for name, url in urls.items():
                            wrk(f"{url}/v1/chat/completions", gateway_script, connections, 1)
                            runs[name].append(
                                wrk(f"{url}/v1/chat/completions", gateway_script, connections, args.duration)
                            )
                        print(
                            f"  {label}: direct {runs['direct'][-1].rps:,.0f}/s, "
                            + ", ".join(f"{name} {runs[name][-1].rps:,.0f}/s" for name in versions),
                            flush=True,
                        )
            for gateway in processes[started:]:
                gateway.terminate()
                gateway.wait(timeout=30)
            del processes[started:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    table = "\n".join([f"Machine: {machine()}", "", *_tables(results, list(versions))])
    print()
    print(table)
    if args.output:
        args.output.write_text(table + "\n")


def _tables(results: dict[str, dict[str, list[Run]]], versions: list[str]) -> list[str]:
    lines = [
        "| scenario | version | direct req/s | gateway req/s | gateway ÷ direct req/s | added p50 | gateway p99 "
        "| errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, runs in results.items():
        direct = runs["direct"]
        for name in versions:
            through = runs[name]
            ratio = [t.rps / d.rps for t, d in zip(through, direct, strict=True)]
            added = [t.p50_ms - d.p50_ms for t, d in zip(through, direct, strict=True)]
            errors = sum(r.errors for r in through) + sum(r.errors for r in direct)
            cells = [
                _spread([d.rps for d in direct], ",.0f"),
                _spread([t.rps for t in through], ",.0f"),
                _spread(ratio, ".3f"),
                _spread(added, ".3f") + " ms",
                _spread([t.p99_ms for t in through], ".2f") + " ms",
                str(errors),
            ]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    if "before" in versions:
        lines += [
            "",
            "Now against before, each round's ratio to its own direct run (medians over rounds, range in brackets):",
            "",
            "| scenario | req/s now ÷ before | added p50 now ÷ before |",
            "| --- | ---: | ---: |",
        ]
        for label, runs in results.items():
            direct, before, now = runs["direct"], runs["before"], runs["now"]
            rps = [(n.rps / d.rps) / (b.rps / d.rps) for n, b, d in zip(now, before, direct, strict=True)]
            added = [
                (n.p50_ms - d.p50_ms) / max(b.p50_ms - d.p50_ms, 1e-6)
                for n, b, d in zip(now, before, direct, strict=True)
            ]
            lines.append(f"| {label} | {_spread(rps, '.3f')} | {_spread(added, '.3f')} |")
    return lines


if __name__ == "__main__":
    main()
