"""Hostile clients vs a legitimate one: p99 latency of a keyed client, unloaded and during each attack.

Starts `vitgender serve` on loopback with a key and the default connection limits, measures a
legitimate client (sequential requests with the key, a fresh connection each time so it must get
through accept and the per-address cap too), then repeats the measurement while one attack runs:

- slowloris-headers: C connections that send a request head one line a second, never finishing
  (closed by --header-timeout; they reconnect);
- slowloris-body: C connections with a valid key that announce a 100 kB body and send 1 byte a
  second (408 after --body-timeout);
- idle-connections: C connections opened and left silent (closed by --header-timeout);
- huge-headers: 8 workers sending 64 kB header lines in a loop (400/431, closed);
- 401-flood: 16 workers posting with a wrong key as fast as the server answers.

Attackers connect from 127.0.0.2 (Linux routes all of 127/8 to loopback), the legitimate client
from 127.0.0.1, as they would come from different machines. Everything is bounded: C connections
(default 200), at most --seconds per attack, and the script stops the server when done. Ratios are
within this one run; both processes share this machine's CPUs, so an attack's own CPU use counts.

    .venv/bin/python benchmarks/attacks.py --model <tiny or default> --requests 200 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.load import Server  # noqa: E402

IMAGE = sorted((REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))[0].read_bytes()
KEY = "bench-" + "k" * 26
ATTACKER = "127.0.0.2"


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{model}; {os.cpu_count()} CPUs; " + " ".join(f for f in wanted if f in flags.split())


def legit_latencies(url: str, requests: int) -> list[float]:
    """Sequential keyed requests, each on a new connection."""
    latencies = []
    with httpx.Client(
        timeout=60, limits=httpx.Limits(max_keepalive_connections=0), headers={"authorization": f"Bearer {KEY}"}
    ) as client:
        for _ in range(requests):
            began = time.perf_counter()
            status = client.post(url, content=IMAGE).status_code
            latencies.append(time.perf_counter() - began)
            if status != 200:
                raise RuntimeError(f"legitimate request got {status}")
    return latencies


async def _connect(port: int):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))


async def _hold(port: int, stop: asyncio.Event, stats: dict, first: bytes, drip: bytes | None) -> None:
    """Keep one hostile connection open: send `first`, then `drip` each second; reconnect when closed."""
    while not stop.is_set():
        try:
            reader, writer = await _connect(port)
            stats["connections"] += 1
            writer.write(first)
            while not stop.is_set():
                if drip is not None:
                    writer.write(drip)
                    await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(65536), 1.0) == b"":
                        stats["closed_by_server"] += 1
                        break
                except TimeoutError:
                    pass
            writer.close()
        except OSError:
            stats["reset_or_refused"] += 1
        await asyncio.sleep(1.0)  # a closed attacker comes back, but not in a tight loop


async def _hammer(port: int, stop: asyncio.Event, stats: dict, request: bytes) -> None:
    """Send a whole bad request, read the answer, repeat."""
    while not stop.is_set():
        try:
            reader, writer = await _connect(port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 10)
            status = answer[9:12].decode(errors="replace") or "closed"
            stats[status] = stats.get(status, 0) + 1
            writer.close()
        except (TimeoutError, OSError):
            stats["reset_or_refused"] += 1
            await asyncio.sleep(0.1)


def attack_tasks(name: str, port: int, stop: asyncio.Event, stats: dict, connections: int) -> list:
    head = b"POST / HTTP/1.1\r\nHost: x\r\n"
    if name == "slowloris-headers":
        return [_hold(port, stop, stats, head, b"X-a: b\r\n") for _ in range(connections)]
    if name == "slowloris-body":
        start = head + f"Authorization: Bearer {KEY}\r\nContent-Length: 100000\r\n\r\n".encode()
        return [_hold(port, stop, stats, start, b"x") for _ in range(connections)]
    if name == "idle-connections":
        return [_hold(port, stop, stats, b"", None) for _ in range(connections)]
    if name == "huge-headers":
        return [_hammer(port, stop, stats, head + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n") for _ in range(8)]
    if name == "401-flood":
        bad = head + b"Authorization: Bearer wrong-key-wrong-key-wrong\r\nContent-Length: 5\r\n\r\nhello"
        return [_hammer(port, stop, stats, bad) for _ in range(16)]
    raise ValueError(name)


def under_attack(
    name: str, url: str, port: int, requests: int, connections: int, seconds: float, build_up: float
) -> dict:
    stats = {"connections": 0, "closed_by_server": 0, "reset_or_refused": 0}
    ready, loop_box = threading.Event(), {}

    def run_attack() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            loop_box["stop"], loop_box["loop"] = stop, asyncio.get_running_loop()
            ready.set()
            tasks = [asyncio.ensure_future(t) for t in attack_tasks(name, port, stop, stats, connections)]
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except TimeoutError:
                stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())

    thread = threading.Thread(target=run_attack, daemon=True)
    thread.start()
    ready.wait()
    time.sleep(build_up)  # past --header-timeout: the measurement sees attackers being cut off and coming back
    began = time.monotonic()
    try:
        latencies = legit_latencies(url, requests)
    finally:
        if thread.is_alive():  # else it already stopped at --seconds
            try:
                loop_box["loop"].call_soon_threadsafe(loop_box["stop"].set)
            except RuntimeError:  # it closed between the check and the call
                pass
        thread.join(timeout=seconds + 30)
    measured = time.monotonic() - began
    if build_up + measured > seconds:
        print(
            f"warning: {name} stopped after {seconds:g} s, before the measurement ended ({build_up + measured:.0f} s): "
            "raise --seconds",
            file=sys.stderr,
        )
    return {"latencies": latencies, "attack": stats, "measured_s": round(measured, 1)}


def summary(latencies: list[float]) -> dict:
    ms = 1000 * np.asarray(latencies)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model to serve (default: the embedded default model)")
    parser.add_argument("--requests", type=int, default=200, help="legitimate requests per measurement")
    parser.add_argument("--connections", type=int, default=200, help="hostile connections for the holding attacks")
    parser.add_argument("--seconds", type=float, default=60, help="longest an attack runs")
    parser.add_argument("--build-up", type=float, default=12, help="seconds an attack runs before measuring")
    parser.add_argument("--attacks", default="slowloris-headers,slowloris-body,idle-connections,huge-headers,401-flood")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    keys = Path(tempfile.mkdtemp(prefix="vg-attacks-")) / "keys.txt"
    keys.write_text(KEY + "\n")
    report = {"model": args.model or "default", "cpu": cpu_flags(), "command": " ".join(sys.argv), "runs": {}}
    server = Server(args.model, "--api-key-file", str(keys), "--no-access-log")
    url, port = server.url + "/", server.port
    try:
        legit_latencies(url, 20)  # warm-up
        for name in args.attacks.split(","):
            unloaded = summary(legit_latencies(url, args.requests))  # paired: the machine's load drifts
            result = under_attack(name, url, port, args.requests, args.connections, args.seconds, args.build_up)
            report["runs"][name] = {
                "unloaded": unloaded,
                "attacked": summary(result["latencies"]),
                "p99_ratio": round(summary(result["latencies"])["p99_ms"] / unloaded["p99_ms"], 2),
                "attack": result["attack"],
                "measured_s": result["measured_s"],
            }
            print(name, json.dumps(report["runs"][name]), file=sys.stderr, flush=True)  # survives a later failure
            time.sleep(2)
    finally:
        server.stop()
        shutil.rmtree(keys.parent, ignore_errors=True)
    print(f"model {report['model']}; {report['cpu']}")
    print(
        "| attack | unloaded p50 / p99 ms | attacked p50 / p99 ms | p99 ratio | attacker's view |\n|---|---|---|---|---|"
    )
    for name, run in report["runs"].items():
        print(
            f"| {name} | {run['unloaded']['p50_ms']} / {run['unloaded']['p99_ms']} | {run['attacked']['p50_ms']} / "
            f"{run['attacked']['p99_ms']} | {run['p99_ratio']:.2f} | {run['attack']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
