"""Memory of the in-memory session store: bytes per session and per turn, and a full garbage collection.

    python loadtests/session_memory.py [--sessions 1000 10000] [--turns 64 256] [--before PYTHON] [--output FILE]

Fills a ``MemorySessionStore`` (one owner, the quota set to the session count) with sessions of
``turns`` recorded turns each — the gateway's own turn records, with and without a learned router's
predictions, and with a TAB budget decision (policy, budget, its distribution over six levels) as
well — and reports what tracemalloc sees the store hold, the process's RSS growth, and how long
``gc.collect()`` takes with the store alive (median of 5). Each configuration runs in a fresh process;
``--before`` names the interpreter of an older checkout (its store has the older interface, one LRU for
every key), measured the same way beside this one.
The default bound is 1,000 sessions per key × 64 turns; 10,000 × 256 were the bounds before sessions
were bounded per key, shown for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


KINDS = {"plain": "plain", "routing": "with routing predictions", "tab": "with routing and a TAB decision"}


def measure(sessions: int, turns: int, kind: str) -> dict[str, Any]:
    from thrifty.server.sessions.memory import MemorySessionStore
    from thrifty.server.sessions.model import Turn

    per_owner = "quota" in inspect.signature(MemorySessionStore.record).parameters
    if per_owner:
        store = MemorySessionStore(ttl_s=86400, history=16, max_turns=turns)
    else:  # the store before sessions were bounded per key
        store = MemorySessionStore(ttl_s=86400, history=16, max_turns=turns, max_sessions=sessions)

    async def fill() -> None:
        for s in range(sessions):
            for t in range(turns):
                # As the gateway makes them: each turn its own numbers and, with a learned router, its own dict.
                latency = 0.4 + t * 1e-3 + s * 1e-7
                predictions = (
                    {"lambda": 3000.0, "accuracy": 0.8 + latency / 100, "cost": latency / 1e4}
                    if kind != "plain"
                    else None
                )
                extra: dict[str, Any] = {}  # an older checkout's Turn has no budgeting field: passed only for tab
                if kind == "tab":  # as the tab budgeter records it: rounded shares of its ladder
                    shares = [round(latency / (k + 2), 4) for k in range(6)]
                    levels = ("16", "32", "64", "128", "256", "512")
                    distribution = dict(zip(levels, shares, strict=True))
                    extra["budgeting"] = {"policy": "tab:fast", "budget": 256, "distribution": distribution}
                turn = Turn(
                    "dense-m", 256, 400 + t, 180 + s % 50, 150, latency, "stop", time.time(), predictions, **extra
                )
                if per_owner:
                    await store.record("team-a", f"session-{s:06d}", turn, 4096, quota=sessions)
                else:
                    await store.record(f"team-a/session-{s:06d}", turn, 4096)

    gc.collect()
    rss_before = _rss_mb()
    tracemalloc.start()
    asyncio.run(fill())
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = _rss_mb()
    pauses = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - started)
    return {
        "sessions": sessions,
        "turns": turns,
        "kind": kind,
        "store_mb": held / 2**20,
        "bytes_per_session": held / sessions,
        "bytes_per_turn": held / (sessions * turns),
        "rss_growth_mb": rss_after - rss_before,
        "gc_ms": 1000 * statistics.median(pauses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--turns", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--before", help="the Python of an older checkout, measured beside this one")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: SESSIONS,TURNS,KIND in this process
    args = parser.parse_args()
    if args.one:
        sessions, turns, kind = args.one.split(",")
        print(json.dumps(measure(int(sessions), int(turns), kind)))
        return
    versions = [("before", args.before), ("now", sys.executable)] if args.before else [("now", sys.executable)]
    rows = []
    for sessions in args.sessions:
        for turns in args.turns:
            for kind in KINDS:
                # An older store's turns may not record budget decisions: that kind is measured now only.
                for version, python in versions if kind != "tab" else versions[-1:]:
                    done = subprocess.run(
                        [python, __file__, "--one", f"{sessions},{turns},{kind}"],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    rows.append(json.loads(done.stdout) | {"version": version})
                    print(
                        f"  {version} {sessions} × {turns} ({KINDS[kind]}): {rows[-1]['store_mb']:.1f} MB",
                        flush=True,
                    )
    lines = [
        "| store | sessions × turns | turn records | held (tracemalloc) | per session | per turn | RSS growth "
        "| full GC |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['version']} | {r['sessions']:,} × {r['turns']} | {KINDS[r['kind']]} | {r['store_mb']:.1f} MB "
            f"| {r['bytes_per_session'] / 1024:.1f} KB | {r['bytes_per_turn']:.0f} B | {r['rss_growth_mb']:.0f} MB "
            f"| {r['gc_ms']:.1f} ms |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    if args.output:
        args.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
