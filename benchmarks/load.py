"""Load test for `vitgender serve` on loopback: batching on vs off, soak, overload.

Everything is measured in one run on this machine, against a server this script starts:
1. throughput and p50/p95/p99 latency at concurrency 1, 8, 32, 64, dynamic batching on
   (max batch 16, 5 ms wait) vs off (max batch 1);
2. server throughput at concurrency 32 vs the offline batch throughput of the same runtime
   (decode + preprocess + Runner, batch 16, one process);
3. a soak: N requests (default 20,000) at concurrency 32, a third of them malformed (truncated
   image, text, deep JSON, bad base64, bad parameters, oversize body): count of 5xx, requests
   not answered with the expected status, and server RSS sampled every 1,000 requests;
4. overload: a 256-request burst against --max-queue 8: how many 429s, then recovery.

    .venv/bin/python benchmarks/load.py --model artifacts/vitgender-default/model_int8_dynamic.onnx \
        --json artifacts/evaluations/load.json
    .venv/bin/python benchmarks/load.py --only soak --soak 20000     # the soak alone
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )  # a full pipe would stall it
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


def _bad_requests() -> list[tuple[str, bytes, dict, int]]:
    """(what, body, headers, expected status) for malformed requests a public endpoint will see."""
    image = IMAGES[0].read_bytes()
    good_b64 = base64.b64encode(image).decode()
    return [
        ("truncated jpeg", image[: len(image) // 3], {}, 400),
        ("text", b"hello, not an image", {}, 400),
        ("empty", b"", {}, 400),
        ("deep json", b"[" * 100_000 + b"]" * 100_000, {"content-type": "application/json"}, 400),
        ("bad base64", json.dumps({"inputs": "%%%not base64"}).encode(), {"content-type": "application/json"}, 400),
        (
            "bad parameters",
            json.dumps({"inputs": good_b64, "parameters": {"top_k": "x"}}).encode(),
            {"content-type": "application/json"},
            422,
        ),
        ("oversize", b"\xff" * (3 * 1024 * 1024), {}, 413),
    ]


async def drive(
    url: str, concurrency: int, total: int, bad_every: int = 0, sample_rss: Callable[[], float] | None = None
) -> dict:
    """`total` requests from `concurrency` clients; with `bad_every` = k, every k-th one is malformed."""
    payloads = [p.read_bytes() for p in IMAGES]
    bad = _bad_requests()
    latencies, statuses, unexpected, rss = [], [], {}, []
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            if bad_every and i % bad_every == bad_every - 1:
                what, body, headers, expected = bad[(i // bad_every) % len(bad)]
            else:
                what, body, headers, expected = "good", payloads[i % len(payloads)], {}, 200
            began = time.perf_counter()
            try:
                status = (await client.post(url, content=body, headers=headers)).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if what == "good":
                latencies.append(time.perf_counter() - began)
            statuses.append(status)
            if status != expected:
                unexpected[f"{what}: {status}"] = unexpected.get(f"{what}: {status}", 0) + 1
            if sample_rss and i % 1000 == 0:
                rss.append(round(sample_rss(), 1))

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ok = latencies  # latency of the good requests only
    report = {
        "concurrency": concurrency,
        "requests": total,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(sum(s == 200 for s in statuses) / elapsed, 1),
        "p50_ms": round(1000 * float(np.percentile(ok, 50)), 1) if ok else None,
        "p95_ms": round(1000 * float(np.percentile(ok, 95)), 1) if ok else None,
        "p99_ms": round(1000 * float(np.percentile(ok, 99)), 1) if ok else None,
        "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)},
    }
    if bad_every:
        report["unexpected"] = unexpected
    if rss:
        report["rss_mb_every_1000"] = rss
    return report


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
    parser.add_argument("--soak", type=int, default=20_000)
    parser.add_argument("--only", choices=("sweep", "soak", "overload"), help="run one part only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"model": args.model or "default (torch)", "sweep": {}}
    if args.only in (None, "sweep"):
        for mode, flags in (
            ("batching", ["--max-batch-size", "16", "--max-wait-ms", "5"]),
            ("no-batching", ["--max-batch-size", "1"]),
        ):
            server = Server(args.model, *flags)
            try:
                report["sweep"][mode] = [asyncio.run(drive(server.url, c, args.requests)) for c in (1, 8, 32, 64)]
            finally:
                server.stop()
        report["offline_batch16_images_per_s"] = round(offline_throughput(args.model), 1)
        at32 = next(r for r in report["sweep"]["batching"] if r["concurrency"] == 32)
        report["server_at_32_vs_offline"] = round(at32["throughput_rps"] / report["offline_batch16_images_per_s"], 3)

    if args.only in (None, "soak"):
        server = Server(args.model, "--max-batch-size", "16")
        try:
            rss_before = server.rss_mb()
            soak = asyncio.run(drive(server.url, 32, args.soak, bad_every=3, sample_rss=server.rss_mb))
            soak.update(
                rss_before_mb=round(rss_before, 1),
                rss_after_mb=round(server.rss_mb(), 1),
                errors_5xx=sum(n for s, n in soak["status_counts"].items() if s.startswith("5")),
            )
            report["soak"] = soak
        finally:
            server.stop()

    if args.only in (None, "overload"):
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
