"""Load test for `vitgender serve` on loopback: batching on vs off, soak, overload.

Everything is measured in one run on this machine, against a server this script starts:
1. throughput and p50/p95/p99 latency at concurrency 1, 8, 32, 64, dynamic batching on
   (max batch 16, 5 ms wait) vs off (max batch 1);
2. server throughput at concurrency 32 vs the offline batch throughput of the same runtime
   (decode + preprocess + Runner, batch 16, one process);
3. a soak: N requests (default 10,000) at concurrency 32: count of 5xx, server RSS before/after;
4. overload: a 256-request burst against --max-queue 8: how many 429s, then recovery.

    .venv/bin/python benchmarks/load.py --model artifacts/vitgender-default/model_int8_dynamic.onnx \
        --json artifacts/evaluations/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
IMAGES = sorted((REPO / "vitgender" / "reference" / "utkface-val-50").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str | None, *args: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "vitgender.cli", "serve", "--port", str(self.port), *args]
        if model:
            cmd += ["--model", model]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise TimeoutError("server not ready")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def drive(url: str, concurrency: int, total: int) -> dict:
    payloads = [p.read_bytes() for p in IMAGES]
    latencies, statuses = [], []
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            began = time.perf_counter()
            response = await client.post(url, content=payloads[i % len(payloads)])
            latencies.append(time.perf_counter() - began)
            statuses.append(response.status_code)

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ok = [lat for lat, s in zip(latencies, statuses) if s == 200]
    return {"concurrency": concurrency, "requests": total, "seconds": round(elapsed, 2),
            "throughput_rps": round(sum(s == 200 for s in statuses) / elapsed, 1),
            "p50_ms": round(1000 * float(np.percentile(ok, 50)), 1) if ok else None,
            "p95_ms": round(1000 * float(np.percentile(ok, 95)), 1) if ok else None,
            "p99_ms": round(1000 * float(np.percentile(ok, 99)), 1) if ok else None,
            "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses))}}


def offline_throughput(model: str | None, seconds: float = 10.0) -> float:
    import vitgender
    from vitgender.runtimes import runtime_for

    classifier = vitgender.load_classifier(model, runtime=runtime_for(model))
    paths = [str(p) for p in IMAGES]
    classifier.classify(paths[:16], batch_size=16)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        classifier.classify(paths[:16], batch_size=16)
        done += 16
    return done / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--soak", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"model": args.model or "default (torch)", "sweep": {}}
    for mode, flags in (("batching", ["--max-batch-size", "16", "--max-wait-ms", "5"]),
                        ("no-batching", ["--max-batch-size", "1"])):
        server = Server(args.model, *flags)
        try:
            report["sweep"][mode] = [asyncio.run(drive(server.url, c, args.requests)) for c in (1, 8, 32, 64)]
        finally:
            server.stop()
    report["offline_batch16_images_per_s"] = round(offline_throughput(args.model), 1)
    at32 = next(r for r in report["sweep"]["batching"] if r["concurrency"] == 32)
    report["server_at_32_vs_offline"] = round(at32["throughput_rps"] / report["offline_batch16_images_per_s"], 3)

    server = Server(args.model, "--max-batch-size", "16")
    try:
        rss_before = server.rss_mb()
        soak = asyncio.run(drive(server.url, 32, args.soak))
        soak.update(rss_before_mb=round(rss_before, 1), rss_after_mb=round(server.rss_mb(), 1),
                    errors_5xx=sum(n for s, n in soak["status_counts"].items() if s.startswith("5")))
        report["soak"] = soak
    finally:
        server.stop()

    server = Server(args.model, "--max-batch-size", "16", "--max-queue", "8")
    try:
        burst = asyncio.run(drive(server.url, 256, 256))
        recovery = httpx.post(server.url, content=IMAGES[0].read_bytes(), timeout=60).status_code
        report["overload"] = {**burst, "after_burst_status": recovery}
    finally:
        server.stop()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
